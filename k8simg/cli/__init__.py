"""The ``k8simg`` command line: parse, call the library, print.

Every :class:`~k8simg.errors.K8simgError` is turned into a clean message and its exit code
here, once.
"""

import click

from k8simg import __version__
from k8simg.cli import (
    bake_cmd,
    config_cmd,
    deploy_cmd,
    image_cmd,
    init_cmd,
    pki_cmd,
    render_cmd,
    upgrade_cmd,
)
from k8simg.errors import K8simgError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except K8simgError as e:
            err = click.ClickException(str(e))
            err.exit_code = e.exit_code
            raise err from None
        except OSError as e:
            # A file the library did not expect to fail on (unreadable, a file where a folder
            # belongs, a full disk): named, never a traceback.
            where = f"{e.filename}: " if e.filename else ""
            hint = (" (a file stands where a folder is expected)"
                    if isinstance(e, FileExistsError | NotADirectoryError) else "")
            raise click.ClickException(f"{where}{e.strerror or e}{hint}") from None


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="k8simg")
def cli():
    """Immutable Kubernetes node images and clusters for OpenStack."""


cli.add_command(init_cmd.init)
cli.add_command(config_cmd.config)
cli.add_command(pki_cmd.pki)
cli.add_command(render_cmd.render)
cli.add_command(bake_cmd.bake)
cli.add_command(bake_cmd.artifacts)
cli.add_command(image_cmd.image)
cli.add_command(deploy_cmd.deploy)
cli.add_command(deploy_cmd.destroy)
cli.add_command(deploy_cmd.nodes)
cli.add_command(deploy_cmd.console)
cli.add_command(deploy_cmd.etcd)
cli.add_command(upgrade_cmd.upgrade)
cli.add_command(upgrade_cmd.restore)


def _terminated(signum, _frame):
    """SIGTERM (a CI job cancelled, a timeout) unwinds like Ctrl-C: a bake stops
    diskimage-builder so it unmounts its chroot, state files are never left half-written."""
    raise SystemExit(128 + signum)


def main():
    import signal

    signal.signal(signal.SIGTERM, _terminated)
    cli(prog_name="k8simg")
