"""What a container image baked into a node is, as the bake, the node's importer and the
node's manifests agree on it (pulling and verifying is :mod:`k8simg.ops.images`)."""

import re
from dataclasses import dataclass

from k8simg.errors import K8simgError

IMAGES_DIR = "/usr/share/k8simg/images"  # on the node; not under the storage volume's mounts
LIST_FILE = "images.list"  # "<archive> <ref> <digest>" per line, read by the node's importer
# Every image a node carries, in one OCI archive: the node imports them with one ctr run
NODE_ARCHIVE = "images.tar"
# registry/path:tag, optionally @sha256:..., as in a pod spec (the registry is always explicit)
_REF = re.compile(r"^(?P<name>[a-z0-9.-]+(?::[0-9]+)?(?:/[a-z0-9._-]+)+):(?P<tag>[\w][\w.-]{0,127})"
                  r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


class ImageError(K8simgError):
    """A container image could not be had, or did not verify."""


@dataclass(frozen=True)
class ImageSpec:
    """One image to bake.

    :param key: what the cluster uses it for (``apiserver``, ``pause``; ``extra`` for images
        the operator adds).
    :param ref: ``registry/repository:tag``, exactly as the node's manifests name it.
    :param pinned: the ``sha256:`` digest of its linux/amd64 manifest, when k8simg or the
        operator pins one.
    :param pinned_index: the ``sha256:`` digest of its multi-platform index, when that is what
        its project publishes (the bake reads the linux/amd64 digest out of that index).
    """

    key: str
    ref: str
    pinned: str | None = None
    pinned_index: str | None = None

    @property
    def name(self) -> str:
        return self.ref.rsplit(":", 1)[0]

    @property
    def archive(self) -> str:
        """The archive's file name, in the artifacts directory and in the image."""
        return re.sub(r"[/:]", "_", self.ref) + ".tar"


def parse_spec(key: str, text: str) -> ImageSpec:
    """``registry/repo:tag[@sha256:...]`` -> :class:`ImageSpec`.

    :raises ImageError: naming the text when it is not such a reference.
    """
    m = _REF.match(text.strip())
    if not m:
        raise ImageError(f"image {text!r}: expected registry/repository:tag[@sha256:<64 hex>] "
                         "(with the registry spelled out, as nodes never guess one)")
    return ImageSpec(key, f"{m['name']}:{m['tag']}", m["digest"])
