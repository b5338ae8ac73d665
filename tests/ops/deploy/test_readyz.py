"""deploy's API gate (:mod:`k8simg.ops.readyz`): ``/readyz?verbose`` asked over TLS with the
cluster-admin certificate until it answers 200. The API server cannot run here; what answers
is a TLS server on loopback that serves with a master's real ``apiserver.crt`` from the
cluster's PKI (its names include 127.0.0.1), requires a client certificate from the cluster's
CA, and answers as kube-apiserver does while etcd is not ready, then ready."""

import http.server
import ssl
import threading
from contextlib import contextmanager

import pytest

from k8simg.ops import readyz
from k8simg.pki import cluster_pki
from tests.conftest import write_cluster

NOT_READY = ("[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]informer-sync ok\n"
             "readyz check failed\n")


@pytest.fixture
def pki(tmp_path):
    cd = write_cluster(tmp_path / "api", topology="single", masters__count=1,
                       workers__count=0)
    p = cluster_pki(cd, cd.load())
    p.ensure()
    return cd, p


@contextmanager
def api_server(cd, answers: list[tuple[int, str]]):
    """Serves ``answers`` in turn (the last one from then on); yields its URL and the
    requests' paths and client certificates' subjects."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            peer = self.connection.getpeercert()
            seen.append((self.path, dict(x[0] for x in peer["subject"])))
            status, body = answers.pop(0) if len(answers) > 1 else answers[0]
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *_):
            pass

    node = cd.pki_dir / "nodes" / "api-master-0"
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=cd.pki_dir / "ca.crt")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(node / "apiserver.crt", node / "apiserver.key")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_waits_until_the_api_server_is_ready(pki):
    cd, p = pki
    _, ca, crt, key = p.client_credentials("admin")
    said = []
    with api_server(cd, [(503, NOT_READY), (503, NOT_READY), (200, "ok")]) as (url, seen):
        readyz.wait_ready(url, ca, crt, key, timeout=60, progress=said.append, poll=0.1)
    assert [path for path, _ in seen] == ["/readyz?verbose"] * 3
    # asked as the cluster's admin (kubeadm's: O=kubeadm:cluster-admins)
    assert seen[0][1]["organizationName"] == "kubeadm:cluster-admins"
    assert said == ["API server: not ready yet (503: [-]etcd failed: reason withheld); waiting"]


def test_an_api_server_never_ready_fails_with_its_last_answer(pki):
    cd, p = pki
    _, ca, crt, key = p.client_credentials("admin")
    with api_server(cd, [(503, NOT_READY)]) as (url, _), \
            pytest.raises(readyz.ApiNotReady) as e:
        readyz.wait_ready(url, ca, crt, key, timeout=0.5, progress=lambda _m: None, poll=0.1)
    assert str(e.value).startswith(f"the API server at {url} is not ready after 0 s of asking")
    assert "  503: [+]ping ok" in str(e.value) and "  [-]etcd failed: reason withheld" in \
        str(e.value)


def test_a_server_that_is_not_the_clusters_is_not_trusted(pki, tmp_path):
    """The answer counts only from a server the cluster's CA vouches for."""
    cd, p = pki
    other = write_cluster(tmp_path / "other", name="api", topology="single",
                          masters__count=1, workers__count=0)
    cluster_pki(other, other.load()).ensure()
    _, ca, crt, key = p.client_credentials("admin")
    with api_server(other, [(200, "ok")]) as (url, seen):
        status, why = readyz.ask(url, ca, crt, key)
    assert status is None and "CERTIFICATE_VERIFY_FAILED" in why and seen == []
