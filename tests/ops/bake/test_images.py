"""Container images for the bake, against a real registry on loopback (Debian's
docker-registry) holding images the tests build, pulled with the real skopeo, and imported by
the node's own importer into a real containerd."""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import tarfile

import pytest

from k8simg.ignition.image import IMAGE_IMPORTER, image_files
from k8simg.model.images import LIST_FILE, NODE_ARCHIVE, ImageError, ImageSpec, parse_spec
from k8simg.model.versions import DEFAULT_KUBERNETES_VERSION
from k8simg.ops.images import (
    collect,
    index_file,
    merge,
    registries_conf,
    verify_archive,
    verify_node_archive,
)
from tests.registry import build_image, push, registry, stand_in, tampering_proxy
from tests.support import processes, wait_until

pytestmark = pytest.mark.skipif(not (shutil.which("skopeo") and shutil.which("docker-registry")),
                                reason="skopeo and docker-registry (scripts/setup installs them)")

PAUSE = "registry.k8s.io/pause:3.10.1"


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    with registry(tmp_path_factory.mktemp("registry")) as r:
        yield r


@pytest.fixture(scope="module")
def pause(reg, tmp_path_factory):
    """A stand-in pushed where a mirror of registry.k8s.io serves ``pause:3.10.1``."""
    layout = tmp_path_factory.mktemp("pause")
    built = stand_in(layout, PAUSE)
    push(layout, f"{reg.host}/{PAUSE}")
    return built["digest"]


def mirrors(reg):
    return {"registry.k8s.io": reg.mirror_of("registry.k8s.io")}


def index_annotations(archive):
    with tarfile.open(archive) as t:
        return json.load(t.extractfile("index.json"))["manifests"][0]["annotations"]


def test_pulls_by_digest_through_a_mirror(reg, pause, tmp_path):
    messages = []
    got = collect([ImageSpec("pause", PAUSE)], tmp_path / "out", mirrors=mirrors(reg),
                  progress=messages.append)
    assert len(got) == 1
    b = got[0]
    assert (b.key, b.ref, b.digest, b.digest_source) == ("pause", PAUSE, pause,
                                                        "resolved at bake time")
    assert b.source == f"docker://registry.k8s.io/pause@{pause}"
    assert verify_archive(b.path, ImageSpec("pause", PAUSE), pause) == pause
    # containerd names the imported image exactly as the manifests reference it
    assert index_annotations(b.path)["io.containerd.image.name"] == PAUSE
    assert (tmp_path / "out" / LIST_FILE).read_text() == f"{b.path.name} {PAUSE} {pause}\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [b.path.name, LIST_FILE])
    assert any("pulling registry.k8s.io/pause:3.10.1 (sha256:" in m for m in messages)


def test_multi_platform_index_bakes_the_amd64_image(reg, tmp_path):
    ref = "registry.k8s.io/coredns/coredns:v1.12.4"
    built = build_image(tmp_path / "layout", {"coredns": b"stand-in\n"},
                        arches=("arm64", "amd64", "s390x"))
    push(tmp_path / "layout", f"{reg.host}/{ref}")
    (b,) = collect([ImageSpec("coredns", ref)], tmp_path / "out", mirrors=mirrors(reg))
    assert b.digest == built["platforms"]["amd64"] != built["digest"]
    with tarfile.open(b.path) as t:
        def blob(digest):
            return t.extractfile(f"blobs/sha256/{digest.split(':')[1]}")

        manifest = json.load(blob(json.load(t.extractfile("index.json"))["manifests"][0]["digest"]))
        assert json.load(blob(manifest["config"]["digest"]))["architecture"] == "amd64"
        assert len([m for m in t.getmembers() if m.name.startswith("blobs/")]) == 3


def test_pinned_digest_is_pulled_and_a_wrong_pin_stops(reg, pause, tmp_path):
    (b,) = collect([ImageSpec("pause", PAUSE, pause)], tmp_path / "ok", mirrors=mirrors(reg))
    assert (b.digest, b.digest_source) == (pause, "pinned")
    wrong = "sha256:" + "0" * 64
    with pytest.raises(ImageError) as e:
        collect([ImageSpec("pause", PAUSE, wrong)], tmp_path / "bad", mirrors=mirrors(reg))
    assert f"cannot pull registry.k8s.io/pause@{wrong}" in str(e.value)
    assert "manifest unknown" in str(e.value)
    assert list((tmp_path / "bad").iterdir()) == []


def test_tampered_blob_stops_the_pull(reg, pause, tmp_path):
    with tampering_proxy(reg.host) as proxy:
        with pytest.raises(ImageError) as e:
            collect([ImageSpec("pause", PAUSE, pause)], tmp_path / "out",
                    mirrors={"registry.k8s.io": f"http://{proxy}/registry.k8s.io"})
    msg = str(e.value)
    assert msg.startswith(f"cannot pull registry.k8s.io/pause@{pause}: ")
    assert "Digest did not match, expected sha256:" in msg
    assert list((tmp_path / "out").iterdir()) == []


def test_unreachable_registry_names_the_image(tmp_path):
    with pytest.raises(ImageError) as e:
        collect([ImageSpec("pause", PAUSE)], tmp_path / "out",
                mirrors={"registry.k8s.io": "http://127.0.0.1:9/registry.k8s.io"})
    assert str(e.value).startswith(f"cannot resolve {PAUSE}: ")
    assert "connection refused" in str(e.value)


def test_artifacts_directory_is_verified(reg, pause, tmp_path):
    arts = tmp_path / "artifacts"
    collect([ImageSpec("pause", PAUSE)], arts / "images", mirrors=mirrors(reg))
    spec = ImageSpec("pause", PAUSE)
    (b,) = collect([spec], tmp_path / "out", artifacts_dir=arts)
    assert (b.digest, b.digest_source) == (pause, "artifacts directory")
    (b,) = collect([ImageSpec("pause", PAUSE, pause)], tmp_path / "out2", artifacts_dir=arts)
    assert b.digest_source == "pinned"

    with pytest.raises(ImageError, match=r"digest mismatch: expected sha256:1{64}, the archive "
                                         rf"holds {pause}"):
        collect([ImageSpec("pause", PAUSE, "sha256:" + "1" * 64)], tmp_path / "o3",
                artifacts_dir=arts)
    with pytest.raises(ImageError, match=r"registry.k8s.io/coredns/coredns:v1: .*images/"
                                         r"registry.k8s.io_coredns_coredns_v1.tar is missing "
                                         r"from the artifacts directory"):
        collect([parse_spec("dns", "registry.k8s.io/coredns/coredns:v1")], tmp_path / "o4",
                artifacts_dir=arts)

    # One flipped byte in a layer inside the archive
    archive = arts / "images" / spec.archive
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as t:
        t.extractall(unpacked, filter="data")
    layer = max((unpacked / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(layer.read_bytes())
    data[-1] ^= 0xFF
    layer.write_bytes(bytes(data))
    with tarfile.open(archive, "w") as t:
        for p in sorted(unpacked.rglob("*")):
            if p.is_file():
                t.add(p, arcname=str(p.relative_to(unpacked)))
    with pytest.raises(ImageError, match=rf"blob sha256:{layer.name} does not match its digest"):
        collect([spec], tmp_path / "o5", artifacts_dir=arts)
    assert list((tmp_path / "o5").iterdir()) == []


def test_cache_serves_pinned_images_without_the_registry(reg, pause, tmp_path):
    cache = tmp_path / "cache"
    collect([ImageSpec("pause", PAUSE, pause)], tmp_path / "a", mirrors=mirrors(reg),
            cache_dir=cache)
    assert len(list(cache.iterdir())) == 1
    messages = []
    (b,) = collect([ImageSpec("pause", PAUSE, pause)], tmp_path / "b",
                   mirrors={"registry.k8s.io": "http://127.0.0.1:9/nothing"}, cache_dir=cache,
                   progress=messages.append)
    assert b.digest == pause
    assert any("from the cache" in m for m in messages)


def test_bad_references_are_refused():
    assert parse_spec("x", f"{PAUSE}@sha256:{'a' * 64}").pinned == "sha256:" + "a" * 64
    for bad in ("pause:3.10", "registry.k8s.io/pause", "registry.k8s.io/pause:3.1@sha256:abc",
                "Registry.k8s.io/Pause:1"):
        with pytest.raises(ImageError, match="expected registry/repository:tag"):
            parse_spec("x", bad)
    with pytest.raises(ImageError, match="pinned to two different digests"):
        collect([ImageSpec("a", PAUSE, "sha256:" + "a" * 64),
                 ImageSpec("b", PAUSE, "sha256:" + "b" * 64)], "/nonexistent/never-written")


def test_registries_conf_marks_http_mirrors_insecure():
    conf = registries_conf({"registry.k8s.io": "http://127.0.0.1:5000/k8s",
                            "ghcr.io": "https://harbor.example.com/ghcr"})
    assert 'location = "127.0.0.1:5000/k8s"\ninsecure = true' in conf
    assert 'location = "harbor.example.com/ghcr"\ninsecure = false' in conf


@pytest.fixture
def containerd(tmp_path):
    """A real containerd on a private socket (native snapshotter: this machine's /tmp is
    already an overlay)."""
    if os.geteuid() != 0:
        pytest.skip("containerd needs root")
    root = tmp_path / "ctd"
    conf = tmp_path / "containerd.toml"
    conf.write_text(f'version = 2\nroot = "{root}/root"\nstate = "{root}/state"\n'
                    f'[grpc]\n  address = "{root}/sock"\n')
    with processes() as start, open(tmp_path / "containerd.log", "w") as log:
        start(["containerd", "--config", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: (root / "sock").exists(), 20, "containerd's socket")
        env = {**os.environ, "CONTAINERD_ADDRESS": f"{root}/sock",
               "CONTAINERD_SNAPSHOTTER": "native"}
        yield env, root


def test_one_archive_for_the_node_holds_every_image_and_a_shared_blob_once(reg, tmp_path):
    """The bake puts every image into one archive for the node (one import there): each image
    keeps its digest and name, a layer two images share is written once, and the archive is
    checked against what was baked."""
    refs = ["registry.k8s.io/kube-scheduler:v1.35.2", "registry.k8s.io/kube-proxy:v1.35.2"]
    digests = {}
    for i, ref in enumerate(refs):  # the same files, so the same layer; their labels differ
        built = build_image(tmp_path / f"l{i}", {"shared": b"the same layer\n"},
                            labels={"k8simg.test/which": ref})
        push(tmp_path / f"l{i}", f"{reg.host}/{ref}")
        digests[ref] = built["digest"]
    out = tmp_path / "images"
    baked = collect([ImageSpec(f"k{i}", r) for i, r in enumerate(refs)], out, mirrors=mirrors(reg))
    layers = {}
    for b in baked:
        with tarfile.open(b.path) as t:
            blob = t.extractfile(f"blobs/sha256/{b.digest[7:]}")
            layers[b.ref] = json.load(blob)["layers"][0]["digest"]
    assert layers[refs[0]] == layers[refs[1]]  # what there is to share

    # what was baked and what the archive would hold differ: nothing changes in the folder
    before = sorted(p.name for p in out.iterdir())
    wrong = [baked[0], dataclasses.replace(baked[1], digest="sha256:" + "2" * 64)]
    with pytest.raises(ImageError, match=rf"{refs[1]} {digests[refs[1]]} \(expected sha256:2+\)"):
        merge(wrong, out)
    assert sorted(p.name for p in out.iterdir()) == before

    merged = merge(baked, out)
    archive = out / NODE_ARCHIVE
    assert [(b.ref, b.digest, b.path) for b in merged] == [(r, digests[r], archive) for r in refs]
    assert sorted(p.name for p in out.iterdir()) == sorted([NODE_ARCHIVE, LIST_FILE])
    assert (out / LIST_FILE).read_text() == "".join(
        f"{NODE_ARCHIVE} {r} {digests[r]}\n" for r in refs)
    with tarfile.open(archive) as t:
        names = t.getnames()
        index = json.load(t.extractfile("index.json"))
    assert names.count(f"blobs/sha256/{layers[refs[0]][7:]}") == 1
    assert len(names) == 2 + 1 + 2 * 2  # layout, index; the layer; a manifest and config each
    assert [(d["digest"], d["annotations"]["io.containerd.image.name"])
            for d in index["manifests"]] == [(digests[r], r) for r in refs]
    verify_node_archive(archive, digests)
    with pytest.raises(ImageError, match=rf"{refs[1]} {digests[refs[1]]} \(expected sha256:0+\)"):
        verify_node_archive(archive, {**digests, refs[1]: "sha256:" + "0" * 64})
    with pytest.raises(ImageError, match=rf"{PAUSE} missing \(expected sha256:1+\)"):
        verify_node_archive(archive, {**digests, PAUSE: "sha256:" + "1" * 64})
    # one byte of the shared layer flipped: the archive no longer verifies
    with tarfile.open(archive) as t:
        at = t.getmember(f"blobs/sha256/{layers[refs[0]][7:]}").offset_data
    data = bytearray(archive.read_bytes())
    data[at + 20] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=rf"{archive}: blob {layers[refs[0]]} does not match"):
        verify_node_archive(archive, digests)


def test_node_importer_loads_every_image_once(reg, pause, containerd, tmp_path):
    """The importer baked into every node, run against a real containerd on the node's one
    archive: each image lands in the k8s.io namespace under its manifest name with its baked
    digest, once, with one ctr import."""
    env, root = containerd
    ref2 = "registry.k8s.io/kube-proxy:v1.35.2"
    d2 = stand_in(tmp_path / "kp", ref2)["digest"]
    push(tmp_path / "kp", f"{reg.host}/{ref2}")
    images_dir = tmp_path / "images"
    merge(collect([ImageSpec("pause", PAUSE), ImageSpec("kube_proxy", ref2)], images_dir,
                  mirrors=mirrors(reg)), images_dir)
    mode, text = image_files(DEFAULT_KUBERNETES_VERSION)[IMAGE_IMPORTER]
    script = tmp_path / "import-images"
    script.write_text(text)
    script.chmod(mode)
    # ctr as the importer runs it, each run logged
    shim = tmp_path / "bin" / "ctr"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/ctr.log\nexec {shutil.which("ctr")} "$@"\n')
    shim.chmod(0o755)
    env = {**env, "K8SIMG_IMAGES_DIR": str(images_dir),
           "K8SIMG_IMAGES_STAMP": str(root / "imported"),
           "PATH": f"{shim.parent}:{env['PATH']}"}

    first = subprocess.run([str(script)], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert f"imported {PAUSE} {pause}" in first.stdout
    assert f"imported {ref2} {d2}" in first.stdout
    assert [ln for ln in (tmp_path / "ctr.log").read_text().splitlines() if " import " in ln] \
        == [f"--namespace k8s.io images import --no-unpack {images_dir / NODE_ARCHIVE}"]
    ctr = ["ctr", "-n", "k8s.io"]
    listing = subprocess.run([*ctr, "images", "list"], env=env, capture_output=True, text=True,
                             check=True).stdout
    rows = {ln.split()[0]: ln.split()[2] for ln in listing.splitlines()[1:]}
    assert rows[PAUSE] == pause and rows[ref2] == d2
    # Imported, not unpacked: no snapshot until a container is made from an image. containerd's
    # CRI then unpacks what is in the store (as `ctr images mount` does here, through the same
    # client unpack), so a node unpacks only the images it runs.
    snapshots = subprocess.run([*ctr, "snapshots", "ls"], env=env, capture_output=True,
                               text=True, check=True).stdout
    assert snapshots.splitlines()[1:] == [], snapshots
    target = tmp_path / "rootfs"
    target.mkdir()
    subprocess.run([*ctr, "images", "mount", ref2, str(target)], env=env, capture_output=True,
                   text=True, check=True)
    try:
        assert (target / "k8simg-test-stand-in").read_text() == \
            f"k8simg TEST STAND-IN for {ref2}: not the real image\n"
    finally:
        subprocess.run([*ctr, "images", "unmount", "--rm", str(target)], env=env,
                       capture_output=True, check=True)

    again = subprocess.run([str(script)], env=env, capture_output=True, text=True)
    assert (again.returncode, again.stdout.strip()) == (0, "baked images already imported")

    # A list whose digest does not match what the archive holds is an error, not a silent pass
    (images_dir / LIST_FILE).write_text(
        (images_dir / LIST_FILE).read_text().replace(pause, "sha256:" + "2" * 64))
    bad = subprocess.run([str(script)], env=env, capture_output=True, text=True)
    assert bad.returncode == 1
    assert f"{PAUSE} has digest '{pause}', expected sha256:{'2' * 64}" in bad.stderr


def test_control_plane_images_from_the_server_tarballs_archives(tmp_path):
    """The server tarball carries docker archives: each becomes a verified OCI archive that
    the node's importer names as the release's reference, with no registry involved; a
    member that is not an image archive, or a wrong pin, is named."""
    from tests.release import docker_archive

    ref = "registry.k8s.io/kube-apiserver:v1.35.2"
    stand_in(tmp_path / "layout", ref)
    archive = tmp_path / "kube-apiserver.tar"
    docker_archive(tmp_path / "layout", "registry.k8s.io/kube-apiserver-amd64:v1.35.2", archive)
    source = "https://dl.k8s.io/v1.35.2/kubernetes-server-linux-amd64.tar.gz#kubernetes/server/bin/kube-apiserver.tar"
    got = collect([ImageSpec("apiserver", ref)], tmp_path / "out",
                  from_release={"apiserver": (archive, source)})
    assert [(b.key, b.ref, b.digest_source, b.source) for b in got] == [
        ("apiserver", ref, "release tarball (SHA-512 pinned)", source)]
    assert verify_archive(got[0].path, ImageSpec("apiserver", ref), got[0].digest)
    with tarfile.open(got[0].path) as t:
        index = json.load(t.extractfile("index.json"))
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == ref
    assert (tmp_path / "out" / LIST_FILE).read_text() == \
        f"{got[0].path.name} {ref} {got[0].digest}\n"

    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not an image archive")
    with pytest.raises(ImageError, match=f"{ref}: {source} is not an image archive"):
        collect([ImageSpec("apiserver", ref)], tmp_path / "out2",
                from_release={"apiserver": (junk, source)})
    with pytest.raises(ImageError, match="digest mismatch"):
        collect([ImageSpec("apiserver", ref, "sha256:" + "0" * 64)], tmp_path / "out3",
                from_release={"apiserver": (archive, source)})


def test_a_pinned_index_gives_the_amd64_digest_and_a_wrong_one_stops(reg, tmp_path):
    """What a project publishes is the digest of its multi-platform index: the bake fetches
    the index by it and pulls the linux/amd64 image that index names."""
    ref = "registry.k8s.io/ingress-nginx/controller:v1.13.3"
    built = build_image(tmp_path / "layout", {"controller": b"stand-in\n"},
                        arches=("arm64", "amd64"))
    push(tmp_path / "layout", f"{reg.host}/{ref}")
    (b,) = collect([ImageSpec("ingress_nginx", ref, pinned_index=built["digest"])],
                   tmp_path / "out", mirrors=mirrors(reg))
    assert b.digest == built["platforms"]["amd64"]
    assert b.digest_source == f"pinned index {built['digest']}"
    wrong = "sha256:" + "1" * 64
    with pytest.raises(ImageError, match=f"cannot fetch the pinned index "
                                         f"registry.k8s.io/ingress-nginx/controller@{wrong}"):
        collect([ImageSpec("ingress_nginx", ref, pinned_index=wrong)], tmp_path / "out2",
                mirrors=mirrors(reg))


def test_an_index_pinned_image_is_checked_against_its_pin_offline(reg, tmp_path):
    """``k8simg artifacts`` keeps the pinned index beside the archive, so that a bake without
    network checks the archive against the pin, not just against itself."""
    ref = "registry.k8s.io/ingress-nginx/controller:v1.13.3"
    built = build_image(tmp_path / "layout", {"controller": b"stand-in\n"},
                        arches=("arm64", "amd64"))
    push(tmp_path / "layout", f"{reg.host}/{ref}")
    spec = ImageSpec("ingress_nginx", ref, pinned_index=built["digest"])
    arts = tmp_path / "artifacts"
    collect([spec], arts / "images", mirrors=mirrors(reg), keep_indexes=True)
    archive, index = arts / "images" / spec.archive, index_file(arts / "images" / spec.archive)
    assert index.name == f"{spec.archive}.index.json"
    assert "sha256:" + hashlib.sha256(index.read_bytes()).hexdigest() == built["digest"]

    (b,) = collect([spec], tmp_path / "out", artifacts_dir=arts)
    assert (b.digest, b.digest_source) == (built["platforms"]["amd64"],
                                           f"pinned index {built['digest']}")
    # The operator naming the same image again (--image, no pin) does not drop the pin
    (b,) = collect([spec, ImageSpec("extra", ref)], tmp_path / "out-again", artifacts_dir=arts)
    assert (b.key, b.digest_source) == ("ingress_nginx", f"pinned index {built['digest']}")
    # Another image's archive under this name: self-consistent, but not what the pin names
    stand_in(tmp_path / "other", ref)
    saved = archive.read_bytes()
    with tarfile.open(archive, "w") as t:
        for p in sorted((tmp_path / "other").rglob("*")):
            if p.is_file():
                t.add(p, arcname=str(p.relative_to(tmp_path / "other")))
    with pytest.raises(ImageError, match=rf"digest mismatch: expected "
                                         rf"{built['platforms']['amd64']}, the archive holds"):
        collect([spec], tmp_path / "o2", artifacts_dir=arts)
    archive.write_bytes(saved)
    # An index that is not the pinned one (the archive would match it)
    index.write_bytes(index.read_bytes() + b"\n")
    with pytest.raises(ImageError, match=rf"{index} is sha256:[0-9a-f]{{64}}, not the pinned "
                                         rf"index {built['digest']}"):
        collect([spec], tmp_path / "o3", artifacts_dir=arts)
    index.unlink()
    with pytest.raises(ImageError, match=rf"pinned by its multi-platform index "
                                         rf"{built['digest']}, and {index} is missing"):
        collect([spec], tmp_path / "o4", artifacts_dir=arts)
    for o in ("o2", "o3", "o4"):
        assert list((tmp_path / o).iterdir()) == []


def test_artifacts_command_gathers_what_a_bake_pulls(reg, pause, tmp_path, monkeypatch):
    """``k8simg artifacts`` as an operator runs it before carrying the folder to an
    air-gapped site: every image verified into DIR/images, listed on stdout; run again, the
    same; a registry that cannot be reached is named, with nothing left half-written."""
    from click.testing import CliRunner

    from k8simg.cli import cli

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    busybox = "registry.k8simg.test/busybox:1"
    build_image(tmp_path / "bb", {"bin/busybox": b"stand-in\n"})
    push(tmp_path / "bb", f"{reg.host}/{busybox}")
    args = ["artifacts", str(tmp_path / "arts"), "--without-kubernetes", "--image", busybox,
            "--image", f"{PAUSE}@{pause}", "--registry-mirror",
            f"registry.k8simg.test={reg.mirror_of('registry.k8simg.test')}",
            "--registry-mirror", f"registry.k8s.io={reg.mirror_of('registry.k8s.io')}"]
    for _ in range(2):
        r = CliRunner().invoke(cli, [*args, "-o", "json"])
        assert r.exit_code == 0, r.output
        got = json.loads(r.stdout)
        assert got["tarballs"] == []
        assert [(i["ref"], i["digest_source"], i["file"]) for i in got["images"]] == [
            (busybox, "resolved at bake time", "images/registry.k8simg.test_busybox_1.tar"),
            (PAUSE, "pinned", f"images/{ImageSpec('pause', PAUSE).archive}")]
        for i in got["images"]:
            assert verify_archive(tmp_path / "arts" / i["file"], ImageSpec("x", i["ref"]),
                                  i["digest"]) == i["digest"]
    # then offline: the folder is all a bake needs
    (b, p) = collect([parse_spec("extra", busybox), ImageSpec("pause", PAUSE, pause)],
                     tmp_path / "baked", artifacts_dir=tmp_path / "arts")
    assert (b.digest_source, p.digest_source) == ("artifacts directory", "pinned")

    r = CliRunner().invoke(cli, ["artifacts", str(tmp_path / "none"), "--without-kubernetes",
                                 "--image", busybox, "--registry-mirror",
                                 "registry.k8simg.test=http://127.0.0.1:9/x"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.splitlines()[-1].startswith(f"Error: cannot resolve {busybox}: ")
    assert [p.name for p in (tmp_path / "none" / "images").iterdir()] == []
