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
