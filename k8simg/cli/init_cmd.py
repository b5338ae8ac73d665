from pathlib import Path

import click

from k8simg.cli.options import emit_json, output_option, progress
from k8simg.errors import ConfigError
from k8simg.model.cluster import init_cluster
from k8simg.model.config import ssh_public_key_problem
from k8simg.model.validate import TextError, read_text


@click.command()
@click.argument("path", type=click.Path(file_okay=False), metavar="NAME")
@click.option("--cloud", default="local", show_default=True,
              help='"local", or the name of a cloud in clouds.yaml.')
@click.option("--ssh-public-key", "ssh_keys", multiple=True, type=click.Path(dir_okay=False),
              help="An OpenSSH public key file for the bastion (repeatable).")
@click.option("--kubernetes-version", help="One of the pinned versions (default: the newest).")
@click.option("--image", help="The node image: a Glance name or ID, or for the local cloud "
                              "the baked qcow2's path.")
@click.option("--workers", type=click.IntRange(0, 500), help="How many workers (default 2).")
@output_option
def init(path, cloud, ssh_keys, kubernetes_version, image, workers, output):
    """Create the cluster directory NAME with a commented cluster.yaml."""
    if not path.strip() or Path(path).resolve() == Path.cwd() or not Path(path).resolve().name:
        raise click.BadParameter("give the new cluster's directory (its name is the cluster's "
                                 "name), not the current one", param_hint="NAME")
    keys = []
    for f in ssh_keys:
        try:
            text = read_text(Path(f)).strip()
        except OSError as e:
            raise ConfigError(f, [("", f"cannot read: {e.strerror}")]) from None
        except TextError as e:
            raise ConfigError(f, [("", str(e))]) from None
        why = ssh_public_key_problem(text)
        if why:
            raise ConfigError(f, [("", f"--ssh-public-key: the file {why}")])
        keys.append(text)
    cd = init_cluster(path, cloud=cloud, ssh_keys=keys, kubernetes_version=kubernetes_version,
                      image=image, workers=workers)
    progress(f"wrote {cd.config_path}; edit it, then run `k8simg pki init {path}`")
    if output == "json":
        emit_json({"cluster": str(cd.path), "config": str(cd.config_path)})
    else:
        click.echo(cd.config_path)
