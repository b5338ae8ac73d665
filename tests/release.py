"""Stand-in Kubernetes release tarballs for the tests (the real ones cannot be downloaded on
this machine): laid out as upstream's, ``kubernetes/node/bin/{kubelet,kubeadm,kubectl}`` in the
node tarball and the control-plane images as docker archives in the server tarball
(``kubernetes/server/bin/<component>.tar``), each stand-in labelled as such. The bake trusts
them only through the SHA-512 the test hands it (k8simg's own pins are upstream's)."""

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

from k8simg.ops.artifacts import BINARIES, NODE, SERVER, SERVER_IMAGES

STAND_IN = """#!/bin/sh
# k8simg TEST STAND-IN for {name} {version}: NOT the real binary. The real one cannot be
# downloaded on the machine that baked this image.
echo "k8simg test stand-in {name}: not a real {name}" >&2
exit 1
"""


def _tarball(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            t.addfile(info, io.BytesIO(data))


def docker_archive(layout: Path, ref: str, dest: Path) -> bytes:
    """The OCI layout's image as a docker archive named ``ref`` (what the server tarball
    carries), via skopeo."""
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}",
                    f"docker-archive:{dest}:{ref}"], check=True, capture_output=True)
    return dest.read_bytes()


def release_dir(root: Path, version: str, *, kubectl: Path | None = None,
                images: dict[str, bytes] | None = None, arch: str = "amd64"
                ) -> dict[str, str]:
    """Write ``root/v<version>/`` as the release location lays it out; returns the tarballs'
    SHA-512 by name (the pins to bake them with).

    :param kubectl: a real kubectl to carry (else a stand-in).
    :param images: component (``kube-apiserver``...) -> its docker archive (else junk bytes
        that only the fetch tests, which never convert them, may use).
    """
    d = root / f"v{version}"
    d.mkdir(parents=True, exist_ok=True)
    binaries = {b: STAND_IN.format(name=b, version=version).encode() for b in BINARIES}
    if kubectl is not None:
        binaries["kubectl"] = kubectl.read_bytes()
    _tarball(d / NODE.format(arch=arch),
             {f"kubernetes/node/bin/{b}": data for b, data in binaries.items()})
    archives = images or {c: f"stand-in archive of {c}\n".encode() for c in SERVER_IMAGES.values()}
    _tarball(d / SERVER.format(arch=arch),
             {f"kubernetes/server/bin/{c}.tar": data for c, data in archives.items()}
             | {f"kubernetes/server/bin/{c}": STAND_IN.format(name=c, version=version).encode()
                for c in SERVER_IMAGES.values()})
    return {p.name: hashlib.sha512(p.read_bytes()).hexdigest() for p in d.glob("*.tar.gz")}
