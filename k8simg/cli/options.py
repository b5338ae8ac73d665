"""Options and output helpers shared by every command group."""

import json
import os
import sys
from pathlib import Path

import click

from k8simg.model.cluster import ClusterDir

output_option = click.option(
    "--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="Result format on stdout; json is for CI.")

cloud_option = click.option(
    "--cloud", envvar="OS_CLOUD", metavar="NAME",
    help="The cloud in clouds.yaml (default: $OS_CLOUD, else the OS_* variables).")

cluster_cloud_option = click.option(
    "--cloud", metavar="NAME",
    help="Override the cluster's cloud (clouds.yaml name, or local).")

cluster_argument = click.argument("cluster", type=click.Path(file_okay=True, dir_okay=True),
                                  metavar="CLUSTER")


def cluster_dir(path: str) -> ClusterDir:
    return ClusterDir.at(path)


def progress(msg: str) -> None:
    """Progress goes to stderr, so stdout carries only results."""
    click.echo(msg, err=True)


def progress_shares_the_terminal() -> bool:
    """Whether stdout and stderr are one terminal: then each change, already shown as progress
    when it was made, is not printed a second time as the result."""
    try:
        out, err = sys.stdout.fileno(), sys.stderr.fileno()
        return os.isatty(out) and os.isatty(err) and os.path.samestat(os.fstat(out),
                                                                     os.fstat(err))
    except (OSError, ValueError, AttributeError):  # a captured stream (no descriptor)
        return False


def emit_json(data) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")

ssh_key_option = click.option(
    "--ssh-key", "ssh_keys", multiple=True, metavar="FILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Private key for the bastion (user k8simg; repeatable). Default: the SSH agent and "
         "~/.ssh/id_*, as ssh would. OpenStack only: the local cloud is reached directly.")
