"""Container images for the bake: pulled by digest into OCI archives, or taken from an
artifacts directory, and never baked before they verify.

A node never pulls at run time: every image its manifests name is baked into the node image as
an OCI archive (``/usr/share/k8simg/images``), which the node imports into containerd's
``k8s.io`` namespace before kubelet starts.

The digest k8simg pins and records is that of the ``linux/amd64`` image manifest (what
``crane digest --platform linux/amd64`` prints), not of a multi-platform index: it is the digest
the archive carries, so an archive from an artifacts directory can be checked against it
offline. An image with no pinned digest is resolved from its tag at bake time, then pulled by
that digest; the manifest beside the baked image says which digests were pinned and which
resolved.

Pulls go through skopeo (``--preserve-digests``), which follows the machine's registries.conf
and credentials, and verifies every blob it copies. Mirrors (a pull-through cache, a registry of
an air-gapped site) are given per source registry.
"""

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from k8simg.model.images import LIST_FILE, NODE_ARCHIVE, ImageError, ImageSpec

PLATFORM = {"os": "linux", "architecture": "amd64"}
INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"}
MANIFEST_TYPES = {"application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json"}
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
INDEX_SUFFIX = ".index.json"
CONTAINERD_NAME = "io.containerd.image.name"  # the annotation ctr import names an image by


@dataclass(frozen=True)
class BakedImage:
    """One container image in the bake, as a verified OCI archive.

    :param key: what the cluster uses it for (as :class:`~k8simg.model.images.ImageSpec` says).
    :param digest: its linux/amd64 manifest's digest.
    :param path: the archive.
    :param digest_source: ``pinned``, ``pinned index <digest>``, ``resolved at bake time``,
        ``artifacts directory`` or ``release tarball (SHA-512 pinned)``.
    :param source: where its bytes came from (a ``docker://`` reference or an archive's path).
    """

    key: str
    ref: str
    digest: str
    path: Path
    digest_source: str
    source: str  # where the bytes came from


def registries_conf(mirrors: dict[str, str]) -> str:
    """A containers-registries.conf(5) (v2) sending pulls from each source registry to its
    mirror; an ``http://`` mirror is used without TLS."""
    out = []
    for source, mirror in sorted(mirrors.items()):
        insecure = mirror.startswith("http://")
        location = re.sub(r"^https?://", "", mirror).rstrip("/")
        out += ["[[registry]]", f'prefix = "{source}"', f'location = "{source}"',
                "[[registry.mirror]]", f'location = "{location}"',
                f"insecure = {'true' if insecure else 'false'}", ""]
    return "\n".join(out)


def sha256_bytes(data: bytes) -> str:
    """``data``'s digest as OCI writes digests: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def platform_digest(raw: bytes, ref: str) -> str:
    """The linux/amd64 manifest's digest, given the raw manifest a registry returned for
    ``ref`` (an image manifest, or a multi-platform index that names it)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ImageError(f"{ref}: the registry returned a manifest that is not JSON") from None
    media = doc.get("mediaType") or ("application/vnd.oci.image.index.v1+json"
                                     if "manifests" in doc else
                                     "application/vnd.oci.image.manifest.v1+json")
    if media in MANIFEST_TYPES:
        return sha256_bytes(raw)
    if media in INDEX_TYPES:
        for m in doc.get("manifests", []):
            p = m.get("platform", {})
            if p.get("os") == PLATFORM["os"] and p.get("architecture") == PLATFORM["architecture"]:
                return m["digest"]
        raise ImageError(f"{ref}: no linux/amd64 image in its multi-platform index")
    raise ImageError(f"{ref}: unsupported manifest type {media!r}")


class Skopeo:
    """skopeo with k8simg's registries.conf (mirrors), or the machine's own."""

    def __init__(self, mirrors: dict[str, str] | None = None, workdir: Path | None = None,
                 timeout: float = 600.0):
        exe = shutil.which("skopeo")
        if not exe:
            raise ImageError("skopeo not found: it pulls the container images "
                             "(scripts/setup installs it)")
        self.base = [exe, "--override-os", PLATFORM["os"],
                     "--override-arch", PLATFORM["architecture"]]
        self.timeout = timeout
        if mirrors:
            conf = Path(workdir or tempfile.mkdtemp(prefix="k8simg-skopeo.")) / "registries.conf"
            conf.write_text(registries_conf(mirrors))
            self.base += ["--registries-conf", str(conf)]

    def run(self, args: list[str], what: str) -> bytes:
        """Run skopeo with ``args``; its output.

        :param what: what the error says failed.
        :raises ImageError: when skopeo fails (with its last error line) or does not answer in time.
        """
        try:
            p = subprocess.run([*self.base, *args], capture_output=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise ImageError(f"{what}: skopeo gave no answer in {self.timeout:.0f} s") from None
        if p.returncode != 0:
            lines = [ln for ln in p.stderr.decode(errors="replace").splitlines() if ln.strip()]
            reason = re.sub(r'^time="[^"]*" level=\w+ msg="?|"$', "", lines[-1] if lines else "")
            raise ImageError(f"{what}: {reason or f'skopeo exited {p.returncode}'}")
        return p.stdout

    def resolve(self, spec: ImageSpec) -> str:
        """The digest of ``spec``'s linux/amd64 image, as the registry has its tag now.

        :raises ImageError: when the registry does not answer or has no linux/amd64 image for it.
        """
        raw = self.run(["inspect", "--raw", f"docker://{spec.ref}"], f"cannot resolve {spec.ref}")
        return platform_digest(raw, spec.ref)

    def index(self, spec: ImageSpec) -> bytes:
        """``spec``'s pinned multi-platform index as the registry has it, checked against its
        pinned digest.

        :raises ImageError: when the index is not there or does not match its digest.
        """
        pinned = spec.pinned_index
        raw = self.run(["inspect", "--raw", f"docker://{spec.name}@{pinned}"],
                       f"cannot fetch the pinned index {spec.name}@{pinned}")
        if sha256_bytes(raw) != pinned:
            raise ImageError(f"{spec.ref}: the index the registry returned for {pinned} is "
                             f"{sha256_bytes(raw)}")
        return raw

    def copy(self, spec: ImageSpec, digest: str, layout: Path) -> None:
        """Pull ``spec``'s image by ``digest`` into the OCI layout ``layout``, digests preserved.

        :raises ImageError: when the pull fails.
        """
        self.run(["copy", "--quiet", "--preserve-digests",
                  f"docker://{spec.name}@{digest}", f"oci:{layout}"],
                 f"cannot pull {spec.name}@{digest}")


def _pack(layout: Path, spec: ImageSpec, dest: Path) -> None:
    """Write the OCI layout as one archive that ``ctr images import`` names ``spec.ref``."""
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        m["annotations"] = {CONTAINERD_NAME: spec.ref,
                            "org.opencontainers.image.ref.name": spec.ref.rsplit(":", 1)[1]}
    (layout / "index.json").write_text(json.dumps(index, sort_keys=True))
    names = ["oci-layout", "index.json"] + sorted(
        f"blobs/sha256/{b.name}" for b in (layout / "blobs" / "sha256").iterdir())
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as t:
        for n in names:
            info = t.gettarinfo(layout / n, arcname=n)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with open(layout / n, "rb") as f:
                t.addfile(info, f)


def _read_archive(path: Path, fail: Callable[[str], ImageError]) -> list[tuple[dict, dict]]:
    """Every image of an OCI archive as (its descriptor in ``index.json``, the manifest it
    names), once every member is a plain file inside the archive's folder, every blob matches
    its digest and every blob a manifest names is there.

    :raises ImageError: through ``fail``, saying what does not hold.
    """
    try:
        with tarfile.open(path) as t:
            for m in t.getmembers():
                # Nothing of it may land outside the folder it is unpacked into.
                parts = PurePosixPath(m.name).parts
                if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
                    raise fail(f"member {m.name!r} is "
                               + ("a link or a device" if not (m.isfile() or m.isdir())
                                  else "outside the archive's folder")
                               + ": an image archive holds plain files only")
            members = {m.name.removeprefix("./"): m for m in t.getmembers() if m.isfile()}
            if "index.json" not in members:
                raise fail("not an OCI image archive (no index.json)")
            index = json.load(t.extractfile(members["index.json"]))
            blobs = {}
            for name, m in members.items():
                if name.startswith("blobs/sha256/"):
                    h = hashlib.sha256()
                    f = t.extractfile(m)
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                    digest = "sha256:" + name.rsplit("/", 1)[1]
                    if "sha256:" + h.hexdigest() != digest:
                        raise fail(f"blob {digest} does not match its digest (got "
                                   f"sha256:{h.hexdigest()})")
                    blobs[digest] = m
            out = []
            for d in index.get("manifests", []):
                if d.get("digest") not in blobs:
                    raise fail(f"its manifest {d.get('digest')} is missing")
                out.append((d, json.load(t.extractfile(blobs[d["digest"]]))))
    except (tarfile.TarError, OSError, ValueError, KeyError, AttributeError) as e:
        raise fail(f"unreadable ({e})") from None
    for _d, manifest in out:
        for b in [manifest.get("config", {})] + manifest.get("layers", []):
            if b.get("digest") not in blobs:
                raise fail(f"blob {b.get('digest')} named by the manifest is missing")
    return out


def verify_archive(path: Path, spec: ImageSpec, expected: str | None) -> str:
    """Check an OCI archive: one image, every blob matching its digest, the manifest's config
    and layers all present; returns the manifest's digest.

    :raises ImageError: naming the archive and what does not hold.
    """
    def fail(msg: str) -> ImageError:
        return ImageError(f"{spec.ref}: {path}: {msg}")

    images = _read_archive(path, fail)
    if len(images) != 1:
        raise fail(f"holds {len(images)} images, expected exactly one")
    digest = images[0][0]["digest"]
    if expected and digest != expected:
        raise fail(f"digest mismatch: expected {expected}, the archive holds {digest}")
    return digest


def verify_node_archive(path: Path, expected: dict[str, str]) -> None:
    """Check the node's archive (:func:`merge`): exactly the images ``expected`` (ref ->
    manifest digest), each under the name containerd gives it on import, every blob there and
    matching its digest.

    :raises ImageError: naming the archive and what does not hold.
    """
    def fail(msg: str) -> ImageError:
        return ImageError(f"{path}: {msg}")

    held = {}
    for d, _manifest in _read_archive(path, fail):
        name = d.get("annotations", {}).get(CONTAINERD_NAME)
        if not name or name in held:
            raise fail(f"image {d['digest']} is {'unnamed' if not name else 'named twice'} "
                       f"({CONTAINERD_NAME}: {name!r})")
        held[name] = d["digest"]
    if held != expected:
        wrong = sorted(r for r in expected.keys() | held.keys()
                       if held.get(r) != expected.get(r))
        raise fail("does not hold what was baked: " + ", ".join(
            f"{r} {held.get(r, 'missing')} (expected {expected.get(r, 'none')})" for r in wrong))


def _write_layout(dest: Path, descriptors: list[dict], blobs: dict[str, tuple[Path, str]]
                  ) -> None:
    """Write one OCI archive: ``descriptors`` as its index, each blob (its name in the archive
    -> the archive and member it is streamed from) once, in name order."""
    sources: dict[Path, tarfile.TarFile] = {}
    try:
        with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
            def add(name: str, data, size: int) -> None:
                info = tarfile.TarInfo(name)
                info.size, info.mode = size, 0o644
                out.addfile(info, data)

            layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
            index = json.dumps({"schemaVersion": 2, "manifests": descriptors},
                               sort_keys=True).encode()
            add("oci-layout", io.BytesIO(layout), len(layout))
            add("index.json", io.BytesIO(index), len(index))
            for name in sorted(blobs):
                path, member = blobs[name]
                if path not in sources:
                    sources[path] = tarfile.open(path)
                m = sources[path].getmember(member)
                add(name, sources[path].extractfile(m), m.size)
    finally:
        for t in sources.values():
            t.close()


def merge(baked: list[BakedImage], dest_dir: Path) -> list[BakedImage]:
    """Every baked image in one OCI archive, ``dest_dir/NODE_ARCHIVE``, with the importer's
    list naming it for each image; the images' own archives leave ``dest_dir``. Returns the
    images with that archive as their path.

    The node imports it with one ``ctr images import``: each ctr run is a Go binary's start and
    one import transaction in containerd, costly under emulation, and a node carries fifteen
    images or more. Each image keeps its descriptor (annotations included, so containerd names
    it as before) and its blobs; a blob two images share is written once. The archive is
    verified against what was baked before anything is removed.

    :raises ImageError: when the result does not verify.
    """
    dest_dir = Path(dest_dir)
    final = dest_dir / NODE_ARCHIVE
    blobs: dict[str, tuple[Path, str]] = {}  # blob -> (the archive it is read from, its member)
    descriptors = []
    for b in baked:
        with tarfile.open(b.path) as t:
            index = json.load(t.extractfile("index.json"))
            for m in t.getmembers():
                name = m.name.removeprefix("./")
                if m.isfile() and name.startswith("blobs/sha256/"):
                    blobs.setdefault(name, (b.path, m.name))
        descriptors += index["manifests"]
    part = dest_dir / f".{NODE_ARCHIVE}.part"
    try:
        _write_layout(part, descriptors, blobs)
        verify_node_archive(part, {b.ref: b.digest for b in baked})
        os.replace(part, final)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    for b in baked:
        if b.path != final:
            b.path.unlink()
    (dest_dir / LIST_FILE).write_text("".join(f"{NODE_ARCHIVE} {b.ref} {b.digest}\n"
                                              for b in baked))
    return [replace(b, path=final) for b in baked]


def files_from_image(archive: Path, spec: ImageSpec, wanted: dict[str, Path], mode: int = 0o755
                ) -> dict[str, str]:
    """Copy the regular files ``wanted`` (path in the image -> destination) out of a verified
    OCI archive's layers, as the image's root filesystem holds them (a later layer's file, or
    whiteout, wins); returns each destination's name -> its sha256.

    Only those paths are read, each to a name the caller chose: nothing else of the image is
    unpacked.

    :raises ImageError: naming the image and the path that is missing, or not a regular file.
    """
    dests = {p.lstrip("/"): Path(d) for p, d in wanted.items()}
    found: dict[str, tuple[int, Path] | None] = {}  # path -> (layer, its copy); None: hidden
    for d in dests.values():
        d.parent.mkdir(parents=True, exist_ok=True)

    def fail(msg: str) -> ImageError:
        return ImageError(f"{spec.ref}: {archive}: {msg}")

    def hide(prefix: str, layer: int, itself: bool) -> None:
        """A whiteout (``itself``: the path and all under it) or an opaque folder (what is
        under it) hides what lower layers have there, never this layer's own."""
        for p, got in found.items():
            if got is not None and got[0] < layer and (
                    p.startswith(prefix + "/") or (itself and p == prefix)):
                found[p] = None

    with tempfile.TemporaryDirectory(dir=next(iter(dests.values())).parent,
                                     prefix=".image-files.") as tmp:
        try:
            with tarfile.open(archive) as t:
                members = {m.name.removeprefix("./"): m for m in t.getmembers() if m.isfile()}
                index = json.load(t.extractfile(members["index.json"]))
                blob = members[f"blobs/sha256/{index['manifests'][0]['digest'][7:]}"]
                manifest = json.load(t.extractfile(blob))
                for n, layer in enumerate(manifest.get("layers", [])):
                    if "zstd" in layer.get("mediaType", ""):
                        raise fail(f"layer {layer['digest']} is zstd-compressed, which k8simg "
                                   "cannot read")
                    data = t.extractfile(members[f"blobs/sha256/{layer['digest'][7:]}"])
                    with tarfile.open(fileobj=data, mode="r|*") as lt:
                        for m in lt:
                            name = m.name.removeprefix("./").strip("/")
                            folder, _, base = name.rpartition("/")
                            if base == ".wh..wh..opq":
                                hide(folder, n, itself=False)
                                continue
                            if base.startswith(".wh."):
                                hide(f"{folder}/{base[4:]}".lstrip("/"), n, itself=True)
                                continue
                            if name not in dests:
                                continue
                            if not m.isfile():
                                raise fail(f"/{name} is not a regular file in the image")
                            part = Path(tmp) / f"{n}-{dests[name].name}"
                            with open(part, "wb") as out:
                                shutil.copyfileobj(lt.extractfile(m), out)
                            found[name] = (n, part)
        except (tarfile.TarError, OSError, ValueError, KeyError, IndexError) as e:
            raise fail(f"unreadable ({type(e).__name__}: {e})") from None
        missing = [f"/{p}" for p in dests if found.get(p) is None]
        if missing:
            raise fail(f"{', '.join(missing)} not in the image")
        out = {}
        for name, dest in dests.items():
            part = found[name][1]
            part.chmod(mode)
            out[dest.name] = hashlib.sha256(part.read_bytes()).hexdigest()
            os.replace(part, dest)
    return out


def index_file(archive: Path) -> Path:
    """Where an artifacts directory keeps the multi-platform index an image is pinned by,
    beside its archive: what lets an air-gapped bake check the archive against the pin."""
    return archive.with_name(archive.name + INDEX_SUFFIX)


def _from_pinned_index(src: Path, spec: ImageSpec) -> str:
    """The linux/amd64 digest that the index file beside ``src`` names, the file checked
    against ``spec``'s pinned index digest first."""
    f = index_file(src)
    try:
        raw = f.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{spec.ref}: it is pinned by its multi-platform index "
                         f"{spec.pinned_index}, and {f} is missing from the artifacts "
                         "directory: without the index the archive cannot be checked against "
                         "the pin (`k8simg artifacts` writes it)") from None
    if sha256_bytes(raw) != spec.pinned_index:
        raise ImageError(f"{spec.ref}: {f} is {sha256_bytes(raw)}, not the pinned index "
                         f"{spec.pinned_index}")
    return platform_digest(raw, spec.ref)


def collect(specs: Iterable[ImageSpec], dest_dir: Path, *, artifacts_dir: Path | None = None,
            mirrors: dict[str, str] | None = None, cache_dir: Path | None = None,
            from_release: dict[str, tuple[Path, str]] | None = None,
            keep_indexes: bool = False,
            progress: Callable[[str], None] = lambda _m: None) -> list[BakedImage]:
    """Bring every image into ``dest_dir`` as a verified OCI archive, plus the list the node's
    importer reads; nothing unverified is ever left there.

    :param artifacts_dir: take ``images/<archive>`` from here instead of a registry (and, for
        an image pinned by its index, the index beside it: :func:`index_file`).
    :param keep_indexes: write each pinned index beside its archive, as an artifacts directory
        holds it.
    :param from_release: image key -> (docker-archive, where it came from): the control-plane
        images out of the verified server tarball, taken instead of any registry.
    :param cache_dir: archives already pulled, by digest (checked again before use).
    :raises ImageError: naming the image and what failed.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    specs = list(specs)
    seen: dict[str, ImageSpec] = {}
    for s in specs:
        old = seen.get(s.ref)
        if old is not None:
            pins, more = (old.pinned, old.pinned_index), (s.pinned, s.pinned_index)
            if any(pins) and any(more) and pins != more:
                raise ImageError(f"{s.ref}: pinned to two different digests")
            if not any(more):  # the same image named again without a pin: the pin stays
                continue
        seen[s.ref] = s
    skopeo = None
    out: list[BakedImage] = []
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".pull.") as tmp:
        for s in seen.values():
            final = dest_dir / s.archive
            part = Path(tmp) / s.archive
            index = None
            if from_release and s.key in from_release:
                src, source = from_release[s.key]
                progress(f"taking {s.ref} from the release's server tarball")
                layout = Path(tmp) / "layout"
                shutil.rmtree(layout, ignore_errors=True)
                skopeo = skopeo or Skopeo(mirrors, Path(tmp))
                skopeo.run(["copy", "--quiet", f"docker-archive:{src}", f"oci:{layout}"],
                           f"{s.ref}: {source} is not an image archive")
                _pack(layout, s, part)
                digest = verify_archive(part, s, s.pinned)
                how = "release tarball (SHA-512 pinned)"
            elif artifacts_dir is not None:
                src = Path(artifacts_dir) / "images" / s.archive
                if not src.is_file():
                    raise ImageError(f"{s.ref}: {src} is missing from the artifacts directory")
                progress(f"taking {s.ref} from {src}")
                expected = _from_pinned_index(src, s) if s.pinned_index else s.pinned
                digest = verify_archive(src, s, expected)
                # Re-packed so that the node's importer names it ``s.ref`` whatever tool
                # wrote the archive.
                layout = Path(tmp) / "layout"
                shutil.rmtree(layout, ignore_errors=True)
                try:
                    with tarfile.open(src) as t:
                        t.extractall(layout, filter="data")
                except (tarfile.TarError, OSError) as e:
                    raise ImageError(f"{s.ref}: {src}: cannot be unpacked ({e})") from None
                _pack(layout, s, part)
                verify_archive(part, s, digest)
                how = ("pinned" if s.pinned else f"pinned index {s.pinned_index}"
                       if s.pinned_index else "artifacts directory")
                source = str(src)
            else:
                skopeo = skopeo or Skopeo(mirrors, Path(tmp))
                if s.pinned:
                    digest, how = s.pinned, "pinned"
                elif s.pinned_index:
                    index = skopeo.index(s)
                    digest, how = platform_digest(index, s.ref), f"pinned index {s.pinned_index}"
                else:
                    digest, how = skopeo.resolve(s), "resolved at bake time"
                source = f"docker://{s.name}@{digest}"
                cached = cache_dir and Path(cache_dir) / f"{digest[7:]}-{s.archive}"
                if cached and cached.is_file():
                    progress(f"taking {s.ref} ({digest}) from the cache")
                    shutil.copyfile(cached, part)
                else:
                    progress(f"pulling {s.ref} ({digest})")
                    layout = Path(tmp) / "layout"
                    shutil.rmtree(layout, ignore_errors=True)
                    skopeo.copy(s, digest, layout)
                    _pack(layout, s, part)
                verify_archive(part, s, digest)
                if cached and not cached.is_file():
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(part, cached.with_suffix(".part"))
                    os.replace(cached.with_suffix(".part"), cached)
            os.replace(part, final)
            if keep_indexes and index is not None:
                (Path(tmp) / "index").write_bytes(index)
                os.replace(Path(tmp) / "index", index_file(final))
            out.append(BakedImage(s.key, s.ref, digest, final, how, source))
    lines = [f"{b.path.name} {b.ref} {b.digest}" for b in out]
    (dest_dir / LIST_FILE).write_text("".join(f"{ln}\n" for ln in lines))
    return out
