"""``k8simg bake``: one node image with everything preinstalled, built by diskimage-builder.

The bake stages what goes into the image (the first-boot machinery rendered for the release,
the verified Kubernetes binaries, ``/etc/k8simg-release``), runs ``disk-image-create`` with
k8simg's elements and the machine's own Debian mirrors, and writes a manifest beside the
qcow2. Where the kernel has no device-mapper (a container, most CI runners) the block-device
steps run through the stand-ins in ``k8simg/hooks``.
"""

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from k8simg import __version__
from k8simg.errors import K8simgError
from k8simg.fsutil import atomic_write
from k8simg.ignition.image import image_files
from k8simg.model.images import ImageSpec
from k8simg.model.manifest import (
    DEBIAN_ETCD_SOURCE,
    DEBIAN_ETCD_SUPPORT,
    NO_KUBERNETES,
    Manifest,
)
from k8simg.model.versions import (
    DEBIAN_ETCD,
    RELEASES,
    etcd_image,
    etcd_version_of,
    image_specs,
)
from k8simg.ops.artifacts import (
    RELEASE_BASE_URL,
    SERVER_IMAGES,
    fetch,
    node_binaries,
    release_tarballs,
    server_image_archives,
    sha256_file,
)
from k8simg.ops.images import BakedImage, collect, files_from_image, index_file, merge


def _elements_dir() -> Path:
    """The elements: installed as ``k8simg.elements`` (a wheel), else beside the package."""
    import importlib.util

    found = importlib.util.find_spec("k8simg.elements")
    if found and found.submodule_search_locations:
        return Path(next(iter(found.submodule_search_locations)))
    return Path(__file__).resolve().parents[2] / "elements"


ELEMENTS_DIR = _elements_dir()
HOOKS_DIR = Path(__file__).resolve().parents[1] / "hooks"  # k8simg/hooks, package data
# Without DIB's default ``base`` element (``disk-image-create -n``): it installs
# software-properties-common (python3-apt, packagekit, ICU: about 110 MB a node never runs) and
# open-iscsi, and dist-upgrades once more; what the image needs of it (dib-init-system,
# install-types, pkg-map) comes with ``vm`` and ``debian-minimal``.
BASE_ELEMENTS = ["debian-minimal", "vm", "block-device-mbr"]
K8SIMG_ELEMENTS = ["k8simg-node", "k8simg-ignition"]
# What the bake takes out of the release's etcd image (where upstream's image has them).
ETCD_BINARIES = {f"/usr/local/bin/{b}": b for b in ("etcd", "etcdctl", "etcdutl")}


class BakeError(K8simgError):
    """The bake could not be made: an unknown release, no Debian mirror or diskimage-builder
    on this machine, or diskimage-builder failed."""
    pass


@dataclass(frozen=True)
class BakeRequest:
    """What to bake.

    :param without_kubernetes: bake an image with no Kubernetes binaries and no Kubernetes
        container images, said so in its manifest and /etc/k8simg-release (for demos and
        infrastructure tests).
    :param extra_images: more images to preload (the operator's own, pinned or not).
    :param registry_mirrors: source registry -> mirror to pull from instead
        (``http://`` for a mirror without TLS).
    :param extra_elements: more diskimage-builder elements (site CA certificates, agents),
        found in ``elements_paths``.
    :param image_cache: pulled image archives kept by digest across bakes.
    :param tarball_sha512: the release tarballs' SHA-512 by file name, instead of the ones
        k8simg pins (a build of one's own; the CLI offers no way to give them).
    :param pinned_index_digests: image reference -> its index digest, instead of the ones
        k8simg pins (likewise).
    :param etcd_image: the image etcd, etcdctl and etcdutl come from, instead of the release's
        (likewise); the etcd in it must be the version its tag names.
    :param compression: the qcow2's cluster compression: ``zstd`` (several times faster to
        write and to read than zlib, about as small; QEMU 5.1 or later reads it, which every
        supported OpenStack release's compute hosts have) or ``zlib`` (what any QEMU reads).
    """

    kubernetes_version: str
    output_dir: Path
    artifacts_dir: Path | None = None
    without_kubernetes: bool = False
    release_base_url: str = RELEASE_BASE_URL
    name: str = "k8simg"
    image_size_gb: int = 4
    extra_images: tuple[ImageSpec, ...] = ()
    registry_mirrors: dict[str, str] = field(default_factory=dict)
    extra_elements: tuple[str, ...] = ()
    elements_paths: tuple[Path, ...] = ()
    image_cache: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    compression: Literal["zstd", "zlib"] = "zstd"
    tarball_sha512: dict[str, str] | None = None  # None: k8simg's pins (versions.py)
    pinned_index_digests: dict[str, str] | None = None  # None: k8simg's (versions.py)
    etcd_image: ImageSpec | None = None  # None: the release's (versions.etcd_image)


@dataclass(frozen=True)
class BakeResult:
    """What a bake made.

    :param image: the qcow2.
    :param manifest: the manifest written beside it.
    :param sha256: the qcow2's.
    :param seconds: how long the bake took.
    """

    image: Path
    manifest: Path
    sha256: str
    seconds: float
    phases: tuple["Phase", ...] = ()


@dataclass(frozen=True)
class Phase:
    """One timed step of a bake: what it is and how long it took."""

    name: str
    seconds: float


# Where each of diskimage-builder's steps starts, by the first line of its log that says so
# (every line carries its time). In the order they run; a step's time runs to the next found.
DIB_MARKS = (
    ("diskimage-builder setup", r"Building elements: "),
    ("base system (debootstrap cache, dist-upgrade)", r"(?:hooks|in_target\.d)/root\.d/"),
    ("extra-data.d", r"(?:hooks|in_target\.d)/extra-data\.d/"),
    ("pre-install.d", r"(?:hooks|in_target\.d)/pre-install\.d/"),
    ("packages (install.d)", r"(?:hooks|in_target\.d)/install\.d/"),
    ("post-install.d", r"(?:hooks|in_target\.d)/post-install\.d/"),
    ("disk image (partition, mkfs, copy)", r"block_device\.blockdevice \[-\] create\(\) called"),
    ("finalise.d (initramfs, bootloader, presets)", r"(?:hooks|in_target\.d)/finalise\.d/"),
    ("cleanup.d and unmount", r"(?:hooks|in_target\.d)/cleanup\.d/"),
    ("qcow2 conversion", r"Converting image using qemu-img convert"),
    (None, r"Image file .* created"),
)
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) \| ")


def dib_phases(log: str) -> list[Phase]:
    """diskimage-builder's steps and their times, read from its log. A step whose line is
    missing (a newer diskimage-builder's wording) is folded into the one before it; a log
    without timestamps gives nothing."""
    found: list[tuple[str | None, dt.datetime]] = []
    marks = [(name, re.compile(rx)) for name, rx in DIB_MARKS]
    at = 0
    for line in log.splitlines():
        stamp = _LOG_TIME.match(line)
        if not stamp:
            continue
        for i in range(at, len(marks)):
            if marks[i][1].search(line):
                found.append((marks[i][0], dt.datetime.fromisoformat(stamp.group(1))))
                at = i + 1
                break
    return [Phase(name, round((end - start).total_seconds(), 1))
            for (name, start), (_, end) in zip(found, found[1:], strict=False) if name]


def apt_mirrors(root: Path = Path("/etc/apt")) -> tuple[str, str]:
    """The Debian and Debian security mirrors the machine's apt uses (deb822 or one-line)."""
    uris: list[str] = []
    for f in sorted([root / "sources.list", *sorted((root / "sources.list.d").glob("*"))]):
        if not f.is_file():
            continue
        text = f.read_text()
        uris += re.findall(r"^URIs:\s*(\S+)", text, re.M)
        uris += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M)
    security = next((u for u in uris if "security" in u), None)
    main = next((u for u in uris if "security" not in u and re.search(r"/debian/?$", u)), None)
    if not main:
        raise BakeError(f"no Debian mirror found in {root}/sources.list*; the bake uses the "
                        "machine's own apt mirrors")
    return main.rstrip("/"), (security or "http://security.debian.org/debian-security").rstrip("/")


# What diskimage-builder (and every script of every element it runs as root) never needs: the
# operator's cloud credentials (OS_*), anything named like a secret, the SSH agent.
_SECRET = re.compile(r"^(OS_|SSH_AUTH_SOCK$)|PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|PRIVATE_KEY",
                     re.I)


def scrubbed_environ(environ) -> dict[str, str]:
    """``environ`` without credentials and secrets, for diskimage-builder and its elements.
    ``DIB_*`` settings are diskimage-builder's own and stay (``DIB_DEV_USER_PASSWORD`` is what
    the devuser element is given on purpose).

    :returns: a new mapping; ``environ`` is not changed.
    """
    return {k: v for k, v in environ.items() if k.startswith("DIB_") or not _SECRET.search(k)}


def dib_command() -> Path:
    """disk-image-create from PATH, or installed beside this Python (a virtualenv)."""
    import sys

    found = shutil.which("disk-image-create") or shutil.which(
        "disk-image-create", path=str(Path(sys.executable).parent))
    if not found:
        raise BakeError("disk-image-create not found: install diskimage-builder "
                        "(scripts/setup does)")
    return Path(found)


def has_device_mapper() -> bool:
    """Whether the kernel has device-mapper (not in a container, nor on most CI runners);
    without it the bake's block-device steps go through the stand-ins in ``k8simg/hooks``."""
    try:
        return "device-mapper" in Path("/proc/misc").read_text() and \
            Path("/dev/mapper/control").exists()
    except OSError:
        return False


def release_text(req: BakeRequest, binaries: dict[str, dict],
                 baked_images: list[BakedImage], etcd: dict) -> str:
    """The image's ``/etc/k8simg-release`` (``KEY=value`` lines): k8simg's and Kubernetes'
    versions, the binaries' sha256 (or that the image has none), which etcd it carries and
    where from, how many container images it carries."""
    lines = [f"K8SIMG_VERSION={__version__}", f"KUBERNETES_VERSION={req.kubernetes_version}"]
    if req.without_kubernetes:
        lines.append(f"KUBERNETES_BINARIES={NO_KUBERNETES!r}")
    else:
        lines += [f"{n.upper()}_SHA256={b['sha256']}" for n, b in binaries.items()]
    lines += [f"ETCD_VERSION={etcd['version']}", f"ETCD_SOURCE={etcd['source']}"]
    if "support" in etcd:
        lines.append(f"ETCD_SUPPORT={etcd['support']!r}")
    lines.append(f"CONTAINER_IMAGES={len(baked_images)}")
    return "\n".join(lines) + "\n"


def image_list(req: BakeRequest) -> list[ImageSpec]:
    """The images a bake of ``req`` carries."""
    base = [] if req.without_kubernetes else image_specs(RELEASES[req.kubernetes_version],
                                                         req.pinned_index_digests)
    return base + list(req.extra_images)


def etcd_version(binary: Path) -> str:
    """What ``etcd --version`` says the binary is (``etcd Version: 3.6.6``).

    :raises BakeError: when it does not run or says no version.
    """
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BakeError(f"{binary}: does not run here ({e})") from None
    m = re.search(r"etcd Version: (\S+)", out)
    if not m:
        raise BakeError(f"{binary}: `etcd --version` names no version: {out.strip()[:200]!r}")
    return m[1]


def stage_etcd(req: BakeRequest, staging: Path, progress: Callable[[str], None]) -> dict:
    """etcd, etcdctl and etcdutl out of the release's etcd image (verified like every image)
    into the staged binaries, its version checked against the image's tag; returns the
    manifest's record of it. The image itself is not carried: nodes run etcd as a unit."""
    spec = etcd_spec(req)
    (baked,) = collect([spec], staging.parent / "etcd-image", artifacts_dir=req.artifacts_dir,
                       mirrors=req.registry_mirrors, cache_dir=req.image_cache,
                       progress=progress)
    shas = files_from_image(baked.path, spec, {p: staging / "bin" / b
                                               for p, b in ETCD_BINARIES.items()})
    version, wanted = etcd_version(staging / "bin" / "etcd"), etcd_version_of(spec.ref)
    if version != wanted:
        raise BakeError(f"{spec.ref}: its etcd says it is {version}, its tag names {wanted}; "
                        "not baking an etcd other than the one named")
    progress(f"etcd {version} from {spec.ref} ({baked.digest})")
    return {"version": version, "source": f"{spec.ref}@{baked.digest}",
            "digest_source": baked.digest_source, "from": baked.source,
            "binaries": {n: {"sha256": shas[n], "path": f"/usr/bin/{n}"}
                         for n in ETCD_BINARIES.values()}}


def stage(req: BakeRequest, staging: Path, progress: Callable[[str], None],
          phases: list[Phase] | None = None) -> tuple[dict, list[BakedImage], dict]:
    """Lay out what the elements install; returns the binaries', the images' and etcd's
    records. Each step's time is appended to ``phases``."""
    timed = _Timer(phases if phases is not None else [])
    binaries: dict[str, dict] = {}
    from_release = {}
    if not req.without_kubernetes:
        release = staging.parent / "release"
        node, server = fetch(release_tarballs(req.kubernetes_version, base_url=req.release_base_url,
                                              pins=req.tarball_sha512),
                             release, artifacts_dir=req.artifacts_dir, progress=progress)
        for f in node_binaries(node, staging / "bin"):
            binaries[f.name] = {"version": req.kubernetes_version, "sha256": f.digest,
                                "source": f.source, "tarball_sha512": node.digest}
        from_release = {key: (f.path, f.source)
                        for key, f in server_image_archives(server, release / "images").items()}
        timed.lap("Kubernetes release (fetch, verify, unpack)")
        etcd = stage_etcd(req, staging, progress)
        timed.lap("etcd (its image's binaries)")
    else:
        etcd = {"version": DEBIAN_ETCD, "source": DEBIAN_ETCD_SOURCE,
                "support": DEBIAN_ETCD_SUPPORT}
    baked_images = collect(image_list(req), staging / "images", artifacts_dir=req.artifacts_dir,
                           mirrors=req.registry_mirrors, cache_dir=req.image_cache,
                           from_release=from_release, progress=progress)
    if baked_images:
        baked_images = merge(baked_images, staging / "images")
    timed.lap("container images (pull or read, verify)")
    for path, (mode, text) in image_files(req.kubernetes_version, etcd["version"]).items():
        dest = staging / "rootfs" / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        dest.chmod(mode)
    (staging / "k8simg-release").write_text(release_text(req, binaries, baked_images, etcd))
    return binaries, baked_images, etcd


class _Timer:
    """Appends a :class:`Phase` per :meth:`lap`: the time since the last lap (or since made)."""

    def __init__(self, phases: list[Phase]):
        self.phases = phases
        self.last = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.phases.append(Phase(name, round(now - self.last, 1)))
        self.last = now


def etcd_spec(req: BakeRequest) -> ImageSpec:
    """The image a bake of ``req`` takes etcd from."""
    return req.etcd_image or etcd_image(RELEASES[req.kubernetes_version],
                                        req.pinned_index_digests)


def gather(req: BakeRequest, dest: Path, progress: Callable[[str], None] = lambda _m: None
           ) -> dict:
    """Fetch and verify everything a bake of ``req`` would take from the network into
    ``dest``, laid out as the artifacts directory ``bake --artifacts`` reads (for a site
    without network): the release's node and server tarballs (their SHA-512 pinned), then every
    image the bake pulls (the etcd image among them) as ``images/<archive>``, with the index
    beside each image pinned by its index. The control-plane images are not pulled: the bake
    takes them out of the server tarball. Each file is written whole or not at all, so an
    interrupted run can simply be run again.

    :returns: what is there: each tarball's SHA-512 and each image's digest and source.
    :raises ArtifactError, ImageError: naming what could not be had or did not verify.
    """
    if req.kubernetes_version not in RELEASES:
        raise BakeError(f"kubernetes version {req.kubernetes_version!r} is not one of "
                        + ", ".join(sorted(RELEASES)))
    if req.artifacts_dir is not None:
        raise BakeError("gathering artifacts takes them from the network, not from another "
                        "artifacts directory")
    dest = Path(dest)
    tarballs = [] if req.without_kubernetes else fetch(
        release_tarballs(req.kubernetes_version, base_url=req.release_base_url,
                         pins=req.tarball_sha512), dest, progress=progress)
    specs = [s for s in image_list(req) if s.key not in SERVER_IMAGES]
    if not req.without_kubernetes:
        specs.append(etcd_spec(req))
    got = collect(specs, dest / "images", mirrors=req.registry_mirrors,
                  cache_dir=req.image_cache, keep_indexes=True, progress=progress)
    return {"kubernetes_version": req.kubernetes_version, "artifacts": str(dest),
            "tarballs": [{"file": t.name, "sha512": t.digest, "source": t.source}
                         for t in tarballs],
            "images": [{"ref": b.ref, "digest": b.digest, "digest_source": b.digest_source,
                        "file": str(b.path.relative_to(dest)), "source": b.source,
                        **({"index": str(index_file(b.path).relative_to(dest))}
                           if index_file(b.path).is_file() else {})}
                       for b in got]}


def elements(req: BakeRequest) -> list[str]:
    """The diskimage-builder elements a bake of ``req`` runs: the base ones, k8simg's, then the
    request's own."""
    return [*BASE_ELEMENTS, *K8SIMG_ELEMENTS, *req.extra_elements]


def _dpkg_versions(manifest_dir: Path) -> dict[str, str]:
    """Package versions from diskimage-builder's dpkg manifest of the image."""
    found = {}
    for f in manifest_dir.rglob("dib-manifest-dpkg-*"):
        for p in json.loads(f.read_text()).get("packages", []):
            if p.get("status", "").startswith("ii"):
                found[p["package"]] = p["version"]
    return found


def bake(req: BakeRequest, progress: Callable[[str], None] = lambda _m: None) -> BakeResult:
    """Bake the image; see the module docstring.

    :raises BakeError: when diskimage-builder fails (with the tail of its log) or the
        release is unknown.
    :raises ArtifactError: when a release tarball cannot be had or does not match its pinned
        SHA-512.
    """
    if req.kubernetes_version not in RELEASES:
        raise BakeError(f"kubernetes version {req.kubernetes_version!r} is not one of "
                        + ", ".join(sorted(RELEASES)))
    start = dt.datetime.now(dt.UTC)
    out_dir = Path(req.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / f"{req.name}-{req.kubernetes_version}"
    with tempfile.TemporaryDirectory(prefix="k8simg-bake.") as tmp:
        staging = Path(tmp) / "staging"
        phases: list[Phase] = []
        binaries, baked_images, etcd = stage(req, staging, progress, phases)
        main, security = apt_mirrors()
        env = {**scrubbed_environ(os.environ),
               "DIB_RELEASE": "bookworm", "DIB_DEBIAN_MIRROR": main,
               "DIB_DEBIAN_SECURITY_MIRROR": security,
               "DIB_DEBIAN_COMPONENTS": "main",
               "DIB_K8SIMG_STAGING": str(staging),
               # k8simg-node installs Debian's etcd only where the bake staged none
               "DIB_K8SIMG_ETCD": "debian" if etcd["source"] == DEBIAN_ETCD_SOURCE else "image",
               "ELEMENTS_PATH": os.pathsep.join(map(str, [ELEMENTS_DIR, *req.elements_paths])),
               "DIB_IMAGE_SIZE": str(req.image_size_gb),
               "DIB_SKIP_GRUB_PACKAGE_INSTALL": "True",  # k8simg-ignition installs grub-pc
               "DIB_GRUB_TIMEOUT": "0",  # no menu to wait 5 s on: nobody is at a node's console
               # debootstrap's result kept in DIB's image cache and reused (about 30 s a bake);
               # debian-minimal dist-upgrades it from the mirror on every bake all the same.
               "DIB_DEBOOTSTRAP_CACHE": "1", "DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE": "1",
               "PYTHONUNBUFFERED": "1",  # diskimage-builder's log filter: progress as it happens
               # The grub snippet's variable, kept literal into grub.cfg (see k8simg-ignition).
               "DIB_BOOTLOADER_DEFAULT_CMDLINE": "nofb nomodeset gfxpayload=text "
                                                 "\\$ignition_firstboot",
               **req.extra_env}
        dib = dib_command()
        env["PATH"] = str(dib.parent) + os.pathsep + env.get("PATH", "")
        if not has_device_mapper():
            progress("no device-mapper here: partitions go through per-partition loop devices")
            env["PATH"] = str(HOOKS_DIR) + os.pathsep + env["PATH"]
        log_path = out_dir / f"{base.name}.bake.log"
        cmd = [str(dib), *(["-x"] if os.environ.get("K8SIMG_BAKE_TRACE") else []),
               "-n", "-o", str(base), "-t", "qcow2", "--no-tmpfs",
               "--qemu-img-options", f"compression_type={req.compression}",
               *elements(req)]
        progress(f"running {' '.join(cmd)} (log: {log_path})")
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            try:
                for line in proc.stdout:
                    log.write(line)
                    if re.search(r"Running hooks from|Converting image|^.*ERROR", line):
                        progress("  " + line.split("| ", 1)[-1].strip())
                rc = proc.wait()
            except BaseException:
                # Interrupted (Ctrl-C, a CI timeout): let diskimage-builder run its own
                # cleanup, which unmounts the chroot and detaches its loop devices.
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise
        if rc != 0:
            tail = "".join(log_path.read_text().splitlines(True)[-25:])
            raise BakeError(f"disk-image-create failed (exit {rc}); last lines of "
                            f"{log_path}:\n{tail}")
        phases += dib_phases(log_path.read_text(errors="replace"))
    timed = _Timer(phases)
    image = Path(f"{base}.qcow2")
    digest = sha256_file(image)
    packages = _dpkg_versions(Path(f"{base}.d"))
    if etcd["source"] == DEBIAN_ETCD_SOURCE:  # the package's own version, as installed
        etcd = {**etcd, "version": packages.get("etcd-server") or etcd["version"]}
    manifest = Manifest(
        k8simg_version=__version__, kubernetes_version=req.kubernetes_version,
        built_at=start.isoformat(timespec="seconds"), image_file=image.name,
        image_sha256=digest, image_bytes=image.stat().st_size,
        kubernetes_binaries=binaries,
        container_images=[
            {"key": b.key, "ref": b.ref, "digest": b.digest, "digest_source": b.digest_source,
             "source": b.source, "archive": b.path.name} for b in baked_images],
        packages={p: packages.get(p) for p in (
            "containerd", "runc", "docker.io", "containernetworking-plugins", "etcd-server",
            "etcd-client", "ignition", "dracut", "linux-image-amd64", "systemd", "chrony",
            "conntrack", "socat", "ethtool", "ipset")},
        elements=elements(req), etcd={**etcd, "join": True})
    manifest_path = Manifest.path_for(image)
    atomic_write(manifest_path, manifest.to_json())
    timed.lap("checksum and manifest")
    seconds = (dt.datetime.now(dt.UTC) - start).total_seconds()
    return BakeResult(image, manifest_path, digest, seconds, tuple(phases))
