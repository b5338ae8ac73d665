from pathlib import Path

import click

from k8simg.cli.options import cloud_option, emit_json, output_option, progress


def upload_manifest(manifest: Path, cloud: str | None) -> dict:
    from k8simg.clouds import upload_image

    done = upload_image(manifest, cloud, progress=progress)
    progress(f"{'uploaded' if done.created else 'already uploaded'}: {done.name} ({done.id})")
    return {"image_id": done.id, "image_name": done.name, "created": done.created}


@click.group()
def image():
    """Baked images in the cloud."""


@image.command()
@click.argument("manifest", type=click.Path(dir_okay=False, exists=True))
@cloud_option
@output_option
def upload(manifest, cloud, output):
    """Upload a baked image to Glance (MANIFEST is the bake's .manifest.json); does nothing
    when the project already holds an image with the same checksum."""
    result = upload_manifest(Path(manifest), cloud)
    if output == "json":
        emit_json(result)
    else:
        click.echo(result["image_id"])


@image.command()
@click.argument("path", type=click.Path(dir_okay=False, exists=True))
@output_option
def show(path, output):
    """What a baked image carries, from its manifest (PATH: the qcow2 or its .manifest.json)."""
    from k8simg.errors import K8simgError
    from k8simg.model.manifest import Manifest, ManifestError

    p = Path(path)
    try:
        m = Manifest.load(p if p.name.endswith(".manifest.json") else Manifest.path_for(p))
    except ManifestError as e:
        raise K8simgError(str(e)) from None
    facts = {"image": str(p.parent / m.image_file), "sha256": m.image_sha256,
             "built_at": m.built_at, "k8simg_version": m.k8simg_version,
             "kubernetes_version": m.kubernetes_version, "has_kubernetes": m.has_kubernetes,
             "binaries": sorted(m.kubernetes_binaries),
             "container_images": [i.get("ref") for i in m.container_images],
             "etcd": {k: m.etcd[k] for k in ("version", "source", "support") if k in m.etcd}}
    if output == "json":
        emit_json(facts)
        return
    click.echo(f"image: {facts['image']}")
    click.echo("kubernetes: " + (f"{m.kubernetes_version} ({', '.join(facts['binaries'])} "
                                 "verified)" if m.has_kubernetes else
                                 "ABSENT: this image was baked without Kubernetes binaries"))
    if m.etcd:
        click.echo(f"etcd: {m.etcd.get('version')} from {m.etcd.get('source')}"
                   + (f" ({m.etcd['support']})" if m.etcd.get("support") else ""))
