"""The fetch-and-verify path against a real HTTP server on loopback, and the air-gapped path."""

import hashlib
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from k8simg.ops.artifacts import ArtifactError, fetch, kubernetes_artifacts

VERSION = "1.35.2"


def publish(root, name, data, digest=None):
    d = root / f"v{VERSION}/bin/linux/amd64"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)
    (d / f"{name}.sha256").write_text(digest or hashlib.sha256(data).hexdigest())


@pytest.fixture
def release_server(tmp_path):
    """A static file server on 127.0.0.1 laid out like the upstream release location."""
    root = tmp_path / "release"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = partial(Quiet, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


BINS = {"kubelet": b"\x7fELF test stand-in kubelet\n" * 1000,
        "kubectl": b"\x7fELF test stand-in kubectl\n" * 1000,
        "kubeadm": b"\x7fELF test stand-in kubeadm\n" * 1000}


def test_fetches_and_verifies(release_server, tmp_path):
    root, url = release_server
    for name, data in BINS.items():
        publish(root, name, data)
    messages = []
    got = fetch(kubernetes_artifacts(VERSION, base_url=url), tmp_path / "out",
                progress=messages.append)
    assert [f.name for f in got] == ["kubelet", "kubectl", "kubeadm"]
    for f in got:
        assert f.path.read_bytes() == BINS[f.name]
        assert f.sha256 == hashlib.sha256(BINS[f.name]).hexdigest()
        assert f.path.stat().st_mode & 0o777 == 0o755
        assert f.source == f"{url}/v{VERSION}/bin/linux/amd64/{f.name}"
    assert f"fetching {url}/v{VERSION}/bin/linux/amd64/kubelet" in messages


def test_tampered_binary_fails_and_leaves_nothing(release_server, tmp_path):
    root, url = release_server
    for name, data in BINS.items():
        publish(root, name, data)
    (root / f"v{VERSION}/bin/linux/amd64/kubeadm").write_bytes(b"tampered")
    out = tmp_path / "out"
    with pytest.raises(ArtifactError) as e:
        fetch(kubernetes_artifacts(VERSION, base_url=url), out)
    want = hashlib.sha256(BINS["kubeadm"]).hexdigest()
    assert str(e.value) == (
        f"kubeadm: checksum mismatch for {url}/v{VERSION}/bin/linux/amd64/kubeadm: expected "
        f"sha256 {want} (published), got {hashlib.sha256(b'tampered').hexdigest()}")
    assert sorted(p.name for p in out.iterdir()) == ["kubectl", "kubelet"]  # verified ones only


def test_pinned_digest_must_match_too(release_server, tmp_path):
    root, url = release_server
    for name, data in BINS.items():
        publish(root, name, data)
    arts = kubernetes_artifacts(VERSION, base_url=url, pinned={"kubelet": "0" * 64})
    with pytest.raises(ArtifactError, match=r"kubelet: .* expected sha256 0{64} \(pinned by k8simg\)"):
        fetch(arts, tmp_path / "out")


def test_unreachable_names_the_url(tmp_path):
    url = "http://127.0.0.1:9/release"  # discard port: nothing listens
    with pytest.raises(ArtifactError, match=r"cannot fetch http://127.0.0.1:9/release/v1.35.2/bin/"
                                            r"linux/amd64/kubelet.sha256: .*[Cc]onnection refused"):
        fetch(kubernetes_artifacts(VERSION, base_url=url), tmp_path / "out", timeout=5)


def test_missing_on_server_names_the_url(release_server, tmp_path):
    _, url = release_server
    with pytest.raises(ArtifactError, match=r"cannot fetch .*/kubelet.sha256: HTTP 404 File not found"):
        fetch(kubernetes_artifacts(VERSION, base_url=url), tmp_path / "out")


def test_artifacts_directory(tmp_path):
    src = tmp_path / "artifacts"
    src.mkdir()
    for name, data in BINS.items():
        (src / name).write_bytes(data)
        (src / f"{name}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    got = fetch(kubernetes_artifacts(VERSION), tmp_path / "out", artifacts_dir=src)
    assert {f.name: f.source for f in got} == {n: str(src / n) for n in BINS}
    (src / "kubectl").write_bytes(b"other")
    with pytest.raises(ArtifactError, match="kubectl: checksum mismatch"):
        fetch(kubernetes_artifacts(VERSION), tmp_path / "out2", artifacts_dir=src)
    (src / "kubeadm.sha256").unlink()
    with pytest.raises(ArtifactError, match=r"kubeadm: .*kubeadm.sha256 is missing from the "
                                            r"artifacts directory"):
        fetch(kubernetes_artifacts(VERSION)[2:], tmp_path / "out3", artifacts_dir=src)
    (src / "kubelet.sha256").write_text("not a digest")
    with pytest.raises(ArtifactError, match="kubelet.sha256: not a SHA-256 checksum file"):
        fetch(kubernetes_artifacts(VERSION)[:1], tmp_path / "out4", artifacts_dir=src)


def test_bake_offline_stops_naming_what_it_could_not_fetch(tmp_path):
    """Without artifacts and without the network, the bake stops before building anything."""
    from click.testing import CliRunner

    from k8simg.cli import cli
    from k8simg.ops.bake import BakeRequest, bake
    with pytest.raises(ArtifactError, match=r"cannot fetch http://127.0.0.1:9/v1.35.2/bin/linux/"
                                            r"amd64/kubelet.sha256"):
        bake(BakeRequest(kubernetes_version=VERSION, output_dir=tmp_path / "out",
                         release_base_url="http://127.0.0.1:9"))
    assert not list((tmp_path / "out").iterdir())
    r = CliRunner().invoke(cli, ["bake", "--artifacts", str(tmp_path), "--output-dir",
                                 str(tmp_path / "out2")])
    assert r.exit_code == 1 and "kubelet" in r.output and "is missing from the artifacts" in r.output


def test_unreachable_tells_why_or_nothing(release_server):
    """What `bake --without-kubernetes-if-unreachable` asks before it falls back."""
    from k8simg.ops.artifacts import unreachable

    root, url = release_server
    assert "HTTP 404" in unreachable(VERSION, url)
    publish(root, "kubelet", BINS["kubelet"])
    assert unreachable(VERSION, url) is None
    why = unreachable(VERSION, "http://127.0.0.1:9", timeout=5)
    assert why.startswith("http://127.0.0.1:9/v1.35.2/bin/linux/amd64/kubelet.sha256: ")
    assert "refused" in why.lower()
