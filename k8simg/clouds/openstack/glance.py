"""Baked images in Glance: uploaded once per image checksum, with properties that say what
the image is, so that deploy and upgrade can find an image by what it carries."""

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from k8simg.clouds.base import CloudError, ImageFacts, Problem
from k8simg.clouds.openstack.connect import Scope
from k8simg.model.manifest import Manifest, ManifestError

TAG = "k8simg"
PROPERTY_BINARIES = "k8simg_kubernetes_binaries"  # "included" or "absent"
IN_FLIGHT = ("queued", "saving", "importing", "uploading")


@dataclass(frozen=True)
class Uploaded:
    """An image in Glance, as :func:`upload` left it.

    :param created: False when an image with the same checksum was already there.
    """

    id: str
    name: str
    created: bool  # False when an image with the same checksum was already there


def image_name(manifest: Manifest) -> str:
    """``k8simg-<k8simg version>-kubernetes-<version>-<build time>-<image sha256[:12]>``."""
    built = dt.datetime.fromisoformat(manifest.built_at).strftime("%Y%m%dT%H%M%SZ")
    return (f"k8simg-{manifest.k8simg_version}-kubernetes-{manifest.kubernetes_version}"
            f"-{built}-{manifest.image_sha256[:12]}")


def image_properties(manifest: Manifest, manifest_bytes: bytes) -> dict[str, str]:
    """The Glance properties a baked image is uploaded with: the hypervisor's hints and what
    the image carries (versions, whether Kubernetes is in it, its and its manifest's sha256)."""
    return {
        "os_distro": "debian", "os_version": "12", "os_type": "linux",
        "hw_disk_bus": "virtio", "hw_qemu_guest_agent": "no", "hw_vif_model": "virtio",
        "k8simg_version": manifest.k8simg_version,
        "k8simg_kubernetes_version": manifest.kubernetes_version,
        PROPERTY_BINARIES: "included" if manifest.has_kubernetes else "absent",
        "k8simg_image_sha256": manifest.image_sha256,
        "k8simg_manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "k8simg_built_at": manifest.built_at,
        **({"k8simg_etcd_version": str(manifest.etcd["version"]),
            "k8simg_etcd_source": str(manifest.etcd["source"])} if manifest.etcd else {}),
        **({"k8simg_etcd_join": "yes"} if manifest.etcd.get("join") else {}),
    }


def read_manifest(manifest_path: Path) -> tuple[Manifest, bytes]:
    """:raises CloudError: when the file is not a bake manifest."""
    try:
        data = Path(manifest_path).read_bytes()
        return Manifest.from_bytes(data, str(manifest_path)), data
    except OSError as e:
        raise CloudError(f"{manifest_path}: {e.strerror}") from None
    except ManifestError as e:
        raise CloudError(str(e)) from None


def image_facts(s: Scope, name_or_id: str) -> tuple[ImageFacts | None, list[Problem]]:
    """The image ``image:`` names, as new nodes would boot from it, or why it cannot be."""
    from openstack import exceptions as osx

    try:
        image = s.conn.image.find_image(name_or_id, ignore_missing=True)
    except osx.DuplicateResource:
        return None, [("image", f"{name_or_id!r} names several images; give its ID")]
    if image is None:
        return None, [("image", f"no image {name_or_id!r} in {s.where} (k8simg bake --upload "
                                "makes one)")]
    if image.status != "active":
        return None, [("image", f"{name_or_id!r} is {image.status}, not active")]
    props = image.properties or {}
    # openstacksdk gives the image's known properties (hw_*) as attributes, not in .properties
    bus = getattr(image, "hw_disk_bus", None) or props.get("hw_disk_bus")
    if bus not in (None, "virtio"):
        return None, [("image", f"{image.name}: hw_disk_bus is {bus!r}: a node finds its "
                                f"storage volume as its second virtio disk (/dev/vdb); set "
                                f"hw_disk_bus=virtio (k8simg bake --upload sets it)")]
    return ImageFacts(image.id, image.name, has_kubernetes=props.get(PROPERTY_BINARIES) != "absent",
                      kubernetes_version=props.get("k8simg_kubernetes_version"),
                      etcd_version=props.get("k8simg_etcd_version"),
                      etcd_source=props.get("k8simg_etcd_source"),
                      etcd_join=props.get("k8simg_etcd_join") == "yes"), []


def find_uploaded(conn, image_sha256: str) -> list:
    """This project's k8simg images holding exactly this qcow2."""
    return [i for i in conn.image.images(tag=TAG, owner=conn.current_project_id)
            if (i.properties or {}).get("k8simg_image_sha256") == image_sha256]


def upload(conn, manifest_path: Path, *, timeout: float = 3600,
           progress: Callable[[str], None] = lambda _m: None) -> Uploaded:
    """Upload the image a bake manifest describes, unless this project already has it.

    An upload left unfinished (queued or saving, from an interrupted run) is removed and done
    again; the qcow2 is checked against the manifest before anything is sent.

    :raises CloudError: when the qcow2 does not match its manifest or Glance refuses it.
    """
    from openstack import exceptions as osx

    manifest, raw = read_manifest(manifest_path)
    image = Path(manifest_path).parent / manifest.image_file
    digest = manifest.image_sha256
    for existing in find_uploaded(conn, digest):
        if existing.status == "active":
            progress(f"already in Glance as {existing.name} ({existing.id})")
            return Uploaded(existing.id, existing.name, False)
        if existing.status in IN_FLIGHT or existing.status == "killed":
            progress(f"removing the unfinished upload {existing.id} ({existing.status})")
            conn.image.delete_image(existing, ignore_missing=True)
    h = hashlib.sha256()
    try:
        with open(image, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        raise CloudError(f"{image}: {e.strerror}") from None
    if h.hexdigest() != digest:
        raise CloudError(f"{image}: sha256 {h.hexdigest()} does not match its manifest "
                         f"({digest}); re-bake or use the manifest that came with it")
    name = image_name(manifest)
    progress(f"uploading {image.name} ({image.stat().st_size >> 20} MiB) as {name}")
    try:
        created = conn.image.create_image(
            name, filename=str(image), disk_format="qcow2", container_format="bare",
            tags=[TAG], meta=image_properties(manifest, raw), sha256=digest,
            allow_duplicates=True, wait=True, timeout=timeout)
    except osx.SDKException as e:
        raise CloudError(f"Glance refused {image.name}: {e}") from None
    created = conn.image.get_image(created.id)
    if created.status != "active":
        raise CloudError(f"Glance left {name} ({created.id}) in status {created.status}")
    return Uploaded(created.id, name, True)
