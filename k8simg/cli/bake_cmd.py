import os
from pathlib import Path

import click

from k8simg.cli.image_cmd import upload_manifest
from k8simg.cli.options import cloud_option, emit_json, output_option, progress
from k8simg.model.images import ImageError, parse_spec
from k8simg.model.versions import DEFAULT_KUBERNETES_VERSION, RELEASES
from k8simg.ops.bake import BakeRequest, gather
from k8simg.ops.bake import bake as run_bake


def image_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "k8simg" / "images"


def _mirrors(_ctx, _param, values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        source, sep, mirror = v.partition("=")
        if not sep or not source or not mirror:
            raise click.BadParameter(f"{v!r}: expected REGISTRY=MIRROR, e.g. "
                                     "registry.k8s.io=harbor.example.com/k8s")
        out[source] = mirror
    return out


def _images(_ctx, _param, values: tuple[str, ...]):
    try:
        return tuple(parse_spec("extra", v) for v in values)
    except ImageError as e:
        raise click.BadParameter(str(e)) from None


@click.command()
@click.option("--kubernetes-version", default=DEFAULT_KUBERNETES_VERSION, show_default=True,
              type=click.Choice(sorted(RELEASES)))
@click.option("--artifacts", "artifacts_dir", type=click.Path(file_okay=False, exists=True),
              help="Take the release's node and server tarballs and images/*.tar (the etcd "
                   "image's among them) from this folder instead of the network (air-gapped "
                   "sites; `k8simg artifacts DIR` fills it); all are verified as if fetched.")
@click.option("--without-kubernetes", is_flag=True,
              help="Bake an image with no Kubernetes binaries or images (demos, "
                   "infrastructure tests).")
@click.option("--without-kubernetes-if-unreachable", "fallback", is_flag=True,
              help="When the release location cannot be reached (and no --artifacts), bake "
                   "the labelled image without Kubernetes instead of failing, and say so.")
@click.option("--image", "extra_images", multiple=True, metavar="REF[@DIGEST]", callback=_images,
              help="Another container image to preload (registry/repository:tag, optionally "
                   "pinned with @sha256:...). Repeatable.")
@click.option("--registry-mirror", "mirrors", multiple=True, metavar="REGISTRY=MIRROR",
              callback=_mirrors,
              help="Pull REGISTRY's images from MIRROR (http:// for one without TLS). "
                   "Repeatable.")
@click.option("--element", "extra_elements", multiple=True,
              help="Another diskimage-builder element to include. Repeatable.")
@click.option("--elements-path", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="A folder of extra elements. Repeatable.")
@click.option("--output-dir", default="images", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--compression", type=click.Choice(["zstd", "zlib"]), default="zstd",
              show_default=True,
              help="The qcow2's compression: zstd is faster to bake and to boot from; zlib "
                   "for compute hosts with a QEMU older than 5.1.")
@click.option("--upload", is_flag=True,
              help="Then upload it to Glance (idempotent on the image's checksum).")
@cloud_option
@output_option
def bake(kubernetes_version, artifacts_dir, without_kubernetes, fallback, extra_images, mirrors,
         extra_elements, elements_path, output_dir, compression, upload, cloud, output):
    """Bake a node image (qcow2 plus manifest) with diskimage-builder."""
    fallback_reason = None
    if fallback and not without_kubernetes and not artifacts_dir:
        from k8simg.ops.artifacts import unreachable

        fallback_reason = unreachable(kubernetes_version)
        if fallback_reason:
            progress(f"warning: the Kubernetes release location cannot be reached "
                     f"({fallback_reason}); baking the image WITHOUT Kubernetes binaries and "
                     "images. Its manifest and /etc/k8simg-release say so; its nodes run "
                     "etcd and containerd, no kubelet.")
            without_kubernetes = True
    result = run_bake(BakeRequest(
        kubernetes_version=kubernetes_version, output_dir=Path(output_dir),
        artifacts_dir=Path(artifacts_dir) if artifacts_dir else None,
        without_kubernetes=without_kubernetes,
        extra_images=extra_images, registry_mirrors=mirrors, extra_elements=tuple(extra_elements),
        elements_paths=tuple(Path(p).resolve() for p in elements_path),
        image_cache=image_cache(), compression=compression), progress=progress)
    for phase in result.phases:
        progress(f"  {phase.seconds:6.1f} s  {phase.name}")
    progress(f"baked in {result.seconds:.0f} s")
    out = {"image": str(result.image), "manifest": str(result.manifest),
           "sha256": result.sha256, "seconds": round(result.seconds, 1),
           "phases": [{"phase": p.name, "seconds": p.seconds} for p in result.phases],
           "kubernetes": "absent" if without_kubernetes else kubernetes_version}
    if fallback_reason:
        out["kubernetes_absent_because"] = fallback_reason
    if upload:
        out.update(upload_manifest(result.manifest, cloud))
    if output == "json":
        emit_json(out)
    else:
        click.echo(result.image)
        if upload:
            click.echo(out["image_id"])


@click.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--kubernetes-version", default=DEFAULT_KUBERNETES_VERSION, show_default=True,
              type=click.Choice(sorted(RELEASES)))
@click.option("--without-kubernetes", is_flag=True,
              help="Only the --image images (for a bake --without-kubernetes).")
@click.option("--image", "extra_images", multiple=True, metavar="REF[@DIGEST]", callback=_images,
              help="Another container image the bake will preload. Repeatable.")
@click.option("--registry-mirror", "mirrors", multiple=True, metavar="REGISTRY=MIRROR",
              callback=_mirrors,
              help="Pull REGISTRY's images from MIRROR (http:// for one without TLS). "
                   "Repeatable.")
@output_option
def artifacts(directory, kubernetes_version, without_kubernetes, extra_images, mirrors, output):
    """Fetch and verify into DIRECTORY everything a bake takes from the network: the release's
    node and server tarballs, the etcd image and every other image (the control-plane images
    come out of the server tarball). Carry DIRECTORY to a site without network and run
    `k8simg bake --artifacts DIRECTORY` there with the same options; it verifies every file
    again. Safe to run again after an interruption."""
    got = gather(BakeRequest(
        kubernetes_version=kubernetes_version, output_dir=Path(directory),
        without_kubernetes=without_kubernetes, extra_images=extra_images,
        registry_mirrors=mirrors, image_cache=image_cache()), Path(directory),
        progress=progress)
    progress(f"{len(got['tarballs'])} tarballs and {len(got['images'])} images verified "
             f"in {directory}")
    if output == "json":
        emit_json(got)
    else:
        for t in got["tarballs"]:
            click.echo(f"{t['file']}  sha512:{t['sha512']}")
        for i in got["images"]:
            click.echo(f"{i['file']}  {i['ref']}@{i['digest']}")
