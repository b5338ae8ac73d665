"""Kubernetes release binaries for the bake: fetched from the release location or taken from a
local artifacts directory (air-gapped sites), and never used before their checksum verifies.

Upstream publishes ``<binary>.sha256`` beside every binary under
``https://dl.k8s.io/release/v<version>/bin/linux/<arch>/``; an artifacts directory holds the
same pairs. A digest pinned in the version table, when there is one, must match as well.
"""

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from k8simg.errors import K8simgError

RELEASE_BASE_URL = "https://dl.k8s.io/release"
BINARIES = ("kubelet", "kubectl", "kubeadm")
CHUNK = 1 << 20


class ArtifactError(K8simgError):
    """An artifact could not be had, or did not verify."""


@dataclass(frozen=True)
class Artifact:
    """One release binary to fetch.

    :param pinned_sha256: the digest k8simg's version table pins for it, checked as well as the
        published one.
    """

    name: str
    url: str
    pinned_sha256: str | None = None

    @property
    def checksum_url(self) -> str:
        """Where upstream publishes the binary's ``.sha256``."""
        return self.url + ".sha256"


@dataclass(frozen=True)
class Fetched:
    """A binary in the destination directory, verified.

    :param sha256: its digest, as verified.
    :param source: the URL or the artifacts-directory file it came from.
    """

    name: str
    path: Path
    sha256: str
    source: str  # the URL or the artifacts-directory file it came from


def kubernetes_artifacts(version: str, arch: str = "amd64", base_url: str = RELEASE_BASE_URL,
                         pinned: dict[str, str] | None = None) -> list[Artifact]:
    """kubelet, kubectl and kubeadm of ``version`` for ``arch``."""
    pinned = pinned or {}
    return [Artifact(b, f"{base_url}/v{version}/bin/linux/{arch}/{b}", pinned.get(b))
            for b in BINARIES]


def sha256_file(path: Path) -> str:
    """The file's SHA-256, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _parse_checksum(text: str, source: str) -> str:
    """The hex digest of a ``.sha256`` file (bare digest, or sha256sum's ``digest  name``)."""
    words = text.split()
    digest = words[0].lower() if words else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ArtifactError(f"{source}: not a SHA-256 checksum file")
    return digest


def _verify(name: str, path: Path, published: str, pinned: str | None, source: str) -> str:
    actual = sha256_file(path)
    if actual != published:
        raise ArtifactError(f"{name}: checksum mismatch for {source}: expected sha256 "
                            f"{published} (published), got {actual}")
    if pinned and actual != pinned:
        raise ArtifactError(f"{name}: checksum mismatch for {source}: expected sha256 "
                            f"{pinned} (pinned by k8simg), got {actual}")
    return actual


def unreachable(version: str, base_url: str = RELEASE_BASE_URL, timeout: float = 15,
                arch: str = "amd64") -> str | None:
    """Why the release location cannot serve ``version`` from here, or None when it can (its
    kubelet checksum file answers). Only reachability: what is fetched is verified anyway."""
    url = kubernetes_artifacts(version, arch, base_url)[0].checksum_url
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


def fetch(artifacts: list[Artifact], dest_dir: Path, *, artifacts_dir: Path | None = None,
          timeout: float = 60.0, progress: Callable[[str], None] = lambda _m: None
          ) -> list[Fetched]:
    """Bring every artifact into ``dest_dir``, verified; nothing unverified is ever left there.

    :param artifacts_dir: take ``<name>`` and ``<name>.sha256`` from here instead of the
        network (air-gapped sites).
    :raises ArtifactError: naming what could not be fetched or did not verify.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for a in artifacts:
        final = dest_dir / a.name
        with tempfile.TemporaryDirectory(dir=dest_dir, prefix=f".{a.name}.") as tmp:
            part = Path(tmp) / a.name
            if artifacts_dir is not None:
                src = Path(artifacts_dir) / a.name
                sums = Path(artifacts_dir) / f"{a.name}.sha256"
                for p in (src, sums):
                    if not p.is_file():
                        raise ArtifactError(f"{a.name}: {p} is missing from the artifacts "
                                            f"directory (it needs {a.name} and {a.name}.sha256)")
                progress(f"taking {a.name} from {artifacts_dir}")
                shutil.copyfile(src, part)
                published, source = _parse_checksum(sums.read_text(), str(sums)), str(src)
            else:
                progress(f"fetching {a.url}")
                sums = Path(tmp) / "sha256"
                _download(a.checksum_url, sums, timeout, lambda _m: None)
                published = _parse_checksum(sums.read_text(), a.checksum_url)
                _download(a.url, part, timeout, progress)
                source = a.url
            digest = _verify(a.name, part, published, a.pinned_sha256, source)
            part.chmod(0o755)
            os.replace(part, final)
        out.append(Fetched(a.name, final, digest, source))
    return out
