from pathlib import Path

import click

from k8simg.bake import BakeRequest
from k8simg.bake import bake as run_bake
from k8simg.cli.options import emit_json, output_option, progress
from k8simg.versions import DEFAULT_KUBERNETES_VERSION, RELEASES


@click.command()
@click.option("--kubernetes-version", default=DEFAULT_KUBERNETES_VERSION, show_default=True,
              type=click.Choice(sorted(RELEASES)))
@click.option("--artifacts", "artifacts_dir", type=click.Path(file_okay=False, exists=True),
              help="Take kubelet, kubectl, kubeadm (and their .sha256) from this folder.")
@click.option("--without-kubernetes", is_flag=True,
              help="Bake an image with no Kubernetes binaries (demos, infrastructure tests).")
@click.option("--output-dir", default="images", show_default=True,
              type=click.Path(file_okay=False))
@output_option
def bake(kubernetes_version, artifacts_dir, without_kubernetes, output_dir, output):
    """Bake a node image (qcow2 plus manifest) with diskimage-builder."""
    result = run_bake(BakeRequest(
        kubernetes_version=kubernetes_version, output_dir=Path(output_dir),
        artifacts_dir=Path(artifacts_dir) if artifacts_dir else None,
        without_kubernetes=without_kubernetes), progress=progress)
    progress(f"baked in {result.seconds:.0f} s")
    if output == "json":
        emit_json({"image": str(result.image), "manifest": str(result.manifest),
                   "sha256": result.sha256, "seconds": round(result.seconds, 1)})
    else:
        click.echo(result.image)
