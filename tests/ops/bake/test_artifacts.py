"""The release tarballs' fetch-and-verify path against a real HTTP server on loopback, and the
air-gapped path: a tarball is used only when its SHA-512 matches the pinned one, and only the
members the bake names are ever read out of it."""

import hashlib
import io
import tarfile

import pytest

from k8simg.model.versions import TARBALL_SHA512
from k8simg.ops.artifacts import (
    ArtifactError,
    fetch,
    node_binaries,
    release_tarballs,
    server_image_archives,
)
from tests.release import release_dir
from tests.support import file_server

VERSION = "1.35.2"
NODE, SERVER = "kubernetes-node-linux-amd64.tar.gz", "kubernetes-server-linux-amd64.tar.gz"


@pytest.fixture
def release_server(tmp_path):
    """A static file server on 127.0.0.1 laid out like the upstream release location."""
    root = tmp_path / "release"
    root.mkdir()

    with file_server(root) as (url, _port):
        yield root, url


def test_k8simg_pins_both_tarballs_of_every_release():
    from k8simg.model.versions import RELEASES

    assert set(TARBALL_SHA512) == set(RELEASES)
    for version in RELEASES:
        tarballs = release_tarballs(version)
        assert [t.url for t in tarballs] == [f"https://dl.k8s.io/v{version}/{NODE}",
                                             f"https://dl.k8s.io/v{version}/{SERVER}"]
        assert all(len(t.sha512) == 128 for t in tarballs), version


def test_fetches_verifies_and_takes_only_what_it_names(release_server, tmp_path):
    root, url = release_server
    pins = release_dir(root, VERSION)
    messages = []
    node, server = fetch(release_tarballs(VERSION, base_url=url, pins=pins), tmp_path / "out",
                         progress=messages.append)
    assert (node.name, server.name) == (NODE, SERVER)
    assert node.digest == pins[NODE] and node.source == f"{url}/v{VERSION}/{NODE}"
    bins = node_binaries(node, tmp_path / "bin")
    assert [b.name for b in bins] == ["kubelet", "kubectl", "kubeadm"]
    for b in bins:
        assert b.path.stat().st_mode & 0o777 == 0o755
        assert b"TEST STAND-IN for " + b.name.encode() in b.path.read_bytes()
        assert b.digest == hashlib.sha256(b.path.read_bytes()).hexdigest()
        assert b.source == f"{url}/v{VERSION}/{NODE}#kubernetes/node/bin/{b.name}"
    archives = server_image_archives(server, tmp_path / "images")
    assert sorted(archives) == ["apiserver", "controller_manager", "kube_proxy", "scheduler"]
    assert archives["apiserver"].path.read_bytes() == b"stand-in archive of kube-apiserver\n"
    # nothing else of the tarballs was unpacked
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "kube-apiserver.tar", "kube-controller-manager.tar", "kube-proxy.tar",
        "kube-scheduler.tar"]
    assert any("fetching" in m for m in messages)


def test_a_tampered_tarball_is_refused_naming_it(release_server, tmp_path):
    root, url = release_server
    pins = release_dir(root, VERSION)
    served = root / f"v{VERSION}" / SERVER
    data = bytearray(served.read_bytes())
    data[len(data) // 2] ^= 1
    served.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{SERVER}: SHA-512 mismatch for {url}/v{VERSION}/"
                                            rf"{SERVER}: expected {pins[SERVER]} \(pinned by "
                                            r"k8simg from the Kubernetes CHANGELOG\), got "):
        fetch(release_tarballs(VERSION, base_url=url, pins=pins), tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [NODE]  # verified, kept


def test_a_wrong_pin_or_none_is_refused(release_server, tmp_path):
    root, url = release_server
    pins = release_dir(root, VERSION)
    with pytest.raises(ArtifactError, match=rf"{NODE}: SHA-512 mismatch .* expected 0{{128}}"):
        fetch(release_tarballs(VERSION, base_url=url, pins={**pins, NODE: "0" * 128}),
              tmp_path / "out")
    with pytest.raises(ArtifactError, match=rf"{NODE}: k8simg pins no SHA-512 for it"):
        fetch(release_tarballs("1.99.0", base_url=url), tmp_path / "out")
    # k8simg's own pins are upstream's: the stand-ins do not match them
    with pytest.raises(ArtifactError, match=rf"{NODE}: SHA-512 mismatch .* expected "
                                            rf"{TARBALL_SHA512[VERSION][NODE]}"):
        fetch(release_tarballs(VERSION, base_url=url), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_air_gapped_from_an_artifacts_directory(tmp_path):
    pins = release_dir(tmp_path / "r", VERSION)
    src = tmp_path / "r" / f"v{VERSION}"
    node, server = fetch(release_tarballs(VERSION, pins=pins), tmp_path / "out",
                         artifacts_dir=src)
    assert node.source == str(src / NODE) and server.digest == pins[SERVER]
    (src / SERVER).unlink()
    with pytest.raises(ArtifactError, match=rf"{SERVER}: {src / SERVER} is missing from the "
                                            "artifacts directory"):
        fetch(release_tarballs(VERSION, pins=pins), tmp_path / "out2", artifacts_dir=src)


def test_a_member_that_is_a_link_or_missing_is_refused(tmp_path):
    """The tarball verified, but not what the bake expects in it: named, nothing taken."""
    from k8simg.ops.artifacts import Fetched

    path = tmp_path / NODE
    with tarfile.open(path, "w:gz") as t:
        link = tarfile.TarInfo("kubernetes/node/bin/kubelet")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        t.addfile(link)
        data = b"kubectl"
        info = tarfile.TarInfo("kubernetes/node/bin/kubectl")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    fetched = Fetched(NODE, path, "x", str(path))
    with pytest.raises(ArtifactError, match=rf"{NODE}: kubernetes/node/bin/kubelet is not a "
                                            "regular file in it"):
        node_binaries(fetched, tmp_path / "bin")
    with pytest.raises(ArtifactError, match=rf"{SERVER}: kubernetes/server/bin/kube-apiserver"
                                            r".tar is missing in it"):
        server_image_archives(Fetched(SERVER, path, "x", str(path)), tmp_path / "img")
    assert not (tmp_path / "bin" / "kubelet").exists()


def test_bake_offline_stops_naming_what_it_could_not_fetch(tmp_path):
    """Without artifacts and without the network, the bake stops before building anything."""
    from click.testing import CliRunner

    from k8simg.cli import cli
    from k8simg.ops.bake import BakeRequest, bake
    with pytest.raises(ArtifactError, match=rf"cannot fetch http://127.0.0.1:9/v1.35.2/{NODE}"):
        bake(BakeRequest(kubernetes_version=VERSION, output_dir=tmp_path / "out",
                         release_base_url="http://127.0.0.1:9"))
    assert not list((tmp_path / "out").iterdir())
    r = CliRunner().invoke(cli, ["bake", "--artifacts", str(tmp_path), "--output-dir",
                                 str(tmp_path / "out2")])
    assert r.exit_code == 1 and NODE in r.output and "is missing from the artifacts" in r.output


def test_unreachable_tells_why_or_nothing(release_server):
    """What `bake --without-kubernetes-if-unreachable` asks before it falls back."""
    from k8simg.ops.artifacts import unreachable

    root, url = release_server
    assert "HTTP 404" in unreachable(VERSION, url)
    release_dir(root, VERSION)
    assert unreachable(VERSION, url) is None
    why = unreachable(VERSION, "http://127.0.0.1:9", timeout=5)
    assert why.startswith(f"http://127.0.0.1:9/v1.35.2/{NODE}: ")
    assert "refused" in why.lower()
