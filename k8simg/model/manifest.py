"""The bake manifest (``<image>.manifest.json`` beside the qcow2) as a type.

``k8simg bake`` is its one writer (:meth:`Manifest.to_json`); Glance's image properties, the
local cloud's image facts and the main job read it through :meth:`Manifest.load`.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from k8simg.errors import K8simgError

# What the manifest (and the image's /etc/k8simg-release) says in place of the binaries and
# images of an image baked without Kubernetes.
NO_KUBERNETES = "absent: baked without Kubernetes binaries (demo and infrastructure tests only)"
# The etcd ``source`` of that image, which carries Debian's etcd (an image with Kubernetes
# carries the one kubeadm pins, and names the etcd image it came from), and what it means.
DEBIAN_ETCD_SOURCE = "debian"
DEBIAN_ETCD_SUPPORT = ("etcd-server 3.4 of Debian bookworm: a line upstream no longer maintains "
                       "and Kubernetes no longer tests against (offline image only)")


class ManifestError(K8simgError):
    """A file that is not a k8simg bake manifest."""


@dataclass(frozen=True)
class Manifest:
    """One baked image.

    :param kubernetes_binaries: ``{name: {version, sha256, source}}``; empty when the image was
        baked without Kubernetes.
    :param container_images: one record per baked container image (``key``, ``ref``,
        ``digest`` ...); empty without Kubernetes and extra images.
    :param etcd: the etcd the image carries: ``version``, ``source`` (the etcd image by
        digest, or ``debian`` for the offline image's Debian etcd, then with ``support``
        saying what that means), the binaries' sha256, ``join`` (true: the image's etcd
        unit runs etcd-join, so a node may boot before its member is added); empty in a
        manifest from before k8simg said.
    """

    k8simg_version: str
    kubernetes_version: str
    built_at: str
    image_file: str
    image_sha256: str
    image_bytes: int = 0
    kubernetes_binaries: dict = field(default_factory=dict)
    container_images: list = field(default_factory=list)
    packages: dict = field(default_factory=dict)
    elements: list = field(default_factory=list)
    etcd: dict = field(default_factory=dict)

    @property
    def has_kubernetes(self) -> bool:
        """Whether the image carries kubelet, kubectl and kubeadm."""
        return bool(self.kubernetes_binaries)

    @staticmethod
    def path_for(image: Path) -> Path:
        """The manifest beside ``image`` (``x.qcow2`` -> ``x.manifest.json``)."""
        return Path(image).with_suffix(".manifest.json")

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> "Manifest":
        """:raises ManifestError: naming ``source`` and the missing or malformed field."""
        try:
            m = json.loads(data)
            binaries = m["kubernetes_binaries"]
            images = m.get("container_images", [])
            return cls(
                k8simg_version=str(m["k8simg_version"]),
                kubernetes_version=str(m["kubernetes_version"]),
                built_at=str(m["built_at"]), image_file=str(m["image"]["file"]),
                image_sha256=str(m["image"]["sha256"]), image_bytes=int(m["image"].get("bytes", 0)),
                kubernetes_binaries=binaries if isinstance(binaries, dict) else {},
                container_images=images if isinstance(images, list) else [],
                packages=m.get("packages") or {}, elements=m.get("elements") or [],
                etcd=m["etcd"] if isinstance(m.get("etcd"), dict) else {})
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ManifestError(f"{source}: not a k8simg bake manifest "
                                f"({type(e).__name__}: {e})") from None

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        """:raises ManifestError: when ``path`` cannot be read or is not a manifest."""
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ManifestError(f"{path}: {e.strerror}") from None
        return cls.from_bytes(data, str(path))

    def to_json(self) -> str:
        """The manifest as ``k8simg bake`` writes it."""
        return json.dumps({
            "k8simg_version": self.k8simg_version,
            "kubernetes_version": self.kubernetes_version,
            "kubernetes_binaries": self.kubernetes_binaries or NO_KUBERNETES,
            "packages": self.packages,
            "container_images": (self.container_images if self.container_images
                                 or self.has_kubernetes else NO_KUBERNETES),
            "etcd": self.etcd,
            "elements": self.elements,
            "built_at": self.built_at,
            "image": {"file": self.image_file, "sha256": self.image_sha256,
                      "bytes": self.image_bytes},
        }, indent=2) + "\n"
