"""The Kubernetes release for the bake: its two tarballs, fetched from the release location or
taken from a local artifacts directory (air-gapped sites), and never used before their SHA-512
matches the one k8simg pins.

The trust anchor is outside the download origin: :data:`k8simg.model.versions.TARBALL_SHA512`
holds, for every release k8simg supports, the SHA-512 that upstream's CHANGELOG publishes for
``kubernetes-node-linux-amd64.tar.gz`` and ``kubernetes-server-linux-amd64.tar.gz``. A
tarball that does not match, or a release with no pin, stops the bake naming the tarball.

From the node tarball the bake takes ``kubernetes/node/bin/{kubelet,kubeadm,kubectl}``; from
the server tarball the control-plane images, which it carries as image archives
(``kubernetes/server/bin/{kube-apiserver,kube-controller-manager,kube-scheduler,
kube-proxy}.tar``). Only those members are read, as regular files, each to a name the bake
chooses: nothing else of a tarball is ever unpacked.
"""

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from k8simg.errors import K8simgError
from k8simg.model.versions import TARBALL_SHA512

RELEASE_BASE_URL = "https://dl.k8s.io"
NODE = "kubernetes-node-linux-{arch}.tar.gz"
SERVER = "kubernetes-server-linux-{arch}.tar.gz"
BINARIES = ("kubelet", "kubectl", "kubeadm")  # kubernetes/node/bin/<name>
# The images the server tarball carries (kubernetes/server/bin/<file>.tar), by image key.
SERVER_IMAGES = {"apiserver": "kube-apiserver", "controller_manager": "kube-controller-manager",
                 "scheduler": "kube-scheduler", "kube_proxy": "kube-proxy"}
CHUNK = 1 << 20


class ArtifactError(K8simgError):
    """An artifact could not be had, or did not verify."""


@dataclass(frozen=True)
class Tarball:
    """One release tarball to fetch.

    :param sha512: the digest k8simg pins for it (None: the release has none; refused).
    """

    name: str
    url: str
    sha512: str | None


@dataclass(frozen=True)
class Fetched:
    """A file in the destination directory, verified.

    :param digest: its SHA-512 (a tarball) or SHA-256 (a binary taken from one).
    :param source: the URL or the artifacts-directory file it came from (``#member`` for
        what was taken out of a tarball).
    """

    name: str
    path: Path
    digest: str
    source: str


def release_tarballs(version: str, arch: str = "amd64", base_url: str = RELEASE_BASE_URL,
                     pins: dict[str, str] | None = None) -> list[Tarball]:
    """The node and server tarballs of ``version``, with their pinned SHA-512.

    :param pins: instead of k8simg's own table (for a build of one's own; k8simg's CLI has
        no way to give them).
    """
    pins = TARBALL_SHA512.get(version, {}) if pins is None else pins
    names = [NODE.format(arch=arch), SERVER.format(arch=arch)]
    return [Tarball(n, f"{base_url}/v{version}/{n}", pins.get(n)) for n in names]


def _digest_file(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    """The file's SHA-256, as hex."""
    return _digest_file(path, "sha256")


def unreachable(version: str, base_url: str = RELEASE_BASE_URL, timeout: float = 15,
                arch: str = "amd64") -> str | None:
    """Why the release location cannot serve ``version`` from here, or None when it can (its
    node tarball answers). Only reachability: what is fetched is verified anyway."""
    url = release_tarballs(version, arch, base_url)[0].url
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (https or local)
            r.read(256)
        return None
    except urllib.error.HTTPError as e:
        return f"{url}: HTTP {e.code} {e.reason}"
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        return f"{url}: {getattr(e, 'reason', None) or e}"


def _download(url: str, dest: Path, timeout: float, progress: Callable[[str], None]) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (https or local)
            total = int(r.headers.get("Content-Length") or 0)
            done, last = 0, -1
            with open(dest, "wb") as out:
                while chunk := r.read(CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    pct = 100 * done // total if total else -1
                    if total and pct // 25 != last // 25:
                        progress(f"  {dest.name}: {pct}% of {total // (1 << 20)} MiB")
                        last = pct
    except urllib.error.HTTPError as e:
        raise ArtifactError(f"cannot fetch {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        raise ArtifactError(f"cannot fetch {url}: {reason}") from None


def fetch(tarballs: list[Tarball], dest_dir: Path, *, artifacts_dir: Path | None = None,
          timeout: float = 60.0, progress: Callable[[str], None] = lambda _m: None
          ) -> list[Fetched]:
    """Bring every tarball into ``dest_dir``, its SHA-512 matching the pinned one; nothing
    unverified is ever left there.

    :param artifacts_dir: take ``<tarball name>`` from here instead of the network.
    :raises ArtifactError: naming the tarball that could not be had or did not verify.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for t in tarballs:
        if not t.sha512:
            raise ArtifactError(f"{t.name}: k8simg pins no SHA-512 for it "
                                "(k8simg/model/versions.py TARBALL_SHA512): not trusting it")
        with tempfile.TemporaryDirectory(dir=dest_dir, prefix=f".{t.name}.") as tmp:
            part = Path(tmp) / t.name
            if artifacts_dir is not None:
                src = Path(artifacts_dir) / t.name
                if not src.is_file():
                    raise ArtifactError(f"{t.name}: {src} is missing from the artifacts "
                                        "directory (it needs the release's node and server "
                                        "tarballs)")
                progress(f"taking {t.name} from {artifacts_dir}")
                shutil.copyfile(src, part)
                source = str(src)
            else:
                progress(f"fetching {t.url}")
                _download(t.url, part, timeout, progress)
                source = t.url
            actual = _digest_file(part, "sha512")
            if actual != t.sha512:
                raise ArtifactError(
                    f"{t.name}: SHA-512 mismatch for {source}: expected {t.sha512} (pinned by "
                    f"k8simg from the Kubernetes CHANGELOG), got {actual}; not used")
            final = dest_dir / t.name
            os.replace(part, final)
        out.append(Fetched(t.name, final, actual, source))
    return out


def extract(tarball: Fetched, members: dict[str, Path], mode: int = 0o644) -> list[Fetched]:
    """Copy exactly ``members`` (member name -> destination) out of a verified tarball, each a
    regular file; nothing else is read.

    :raises ArtifactError: naming the tarball and the member that is missing or not a file.
    """
    out = []
    try:
        with tarfile.open(tarball.path) as t:
            found = {m.name.removeprefix("./"): m for m in t.getmembers()
                     if m.name.removeprefix("./") in members}
            for name, dest in members.items():
                m = found.get(name)
                if m is None or not m.isfile():
                    raise ArtifactError(f"{tarball.name}: {name} is "
                                        + ("missing" if m is None else "not a regular file")
                                        + " in it")
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_name(f".{dest.name}.part")
                src = t.extractfile(m)
                h = hashlib.sha256()
                with open(part, "wb") as f:
                    while chunk := src.read(CHUNK):
                        f.write(chunk)
                        h.update(chunk)
                part.chmod(mode)
                os.replace(part, dest)
                out.append(Fetched(dest.name, dest, h.hexdigest(), f"{tarball.source}#{name}"))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ArtifactError(f"{tarball.name}: cannot be read ({e})") from None
    return out


def node_binaries(node: Fetched, dest_dir: Path) -> list[Fetched]:
    """kubelet, kubectl and kubeadm from the node tarball, executable, into ``dest_dir``."""
    return extract(node, {f"kubernetes/node/bin/{b}": Path(dest_dir) / b for b in BINARIES},
                   mode=0o755)


def server_image_archives(server: Fetched, dest_dir: Path) -> dict[str, Fetched]:
    """The control-plane image archives from the server tarball (docker-archive format), by
    image key."""
    got = extract(server, {f"kubernetes/server/bin/{f}.tar": Path(dest_dir) / f"{f}.tar"
                           for f in SERVER_IMAGES.values()})
    return dict(zip(SERVER_IMAGES, got, strict=True))
