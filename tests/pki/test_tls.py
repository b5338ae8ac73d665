"""The API server certificate in real TLS handshakes, and the kubeconfigs in a real kubectl."""

import json
import socket
import ssl
import subprocess
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from k8simg.pki import certs as table
from k8simg.pki import cluster_pki


@contextmanager
def tls_server(cert, key, client_ca=None):
    """An HTTPS server on 127.0.0.1 that answers /version like kube-apiserver.

    Yields ``(port, seen)``; ``seen`` collects the client certificates' subjects.
    """
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            peer = self.connection.getpeercert()
            if peer:
                seen.append(dict(x[0] for x in peer["subject"]))
            # every field kube-apiserver's /version has (the Python client requires them)
            body = json.dumps({"major": "1", "minor": "35", "gitVersion": "v1.35.2",
                               "gitCommit": "0" * 40, "gitTreeState": "clean",
                               "buildDate": "2026-02-10T00:00:00Z", "goVersion": "go1.25.6",
                               "compiler": "gc", "platform": "linux/amd64"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def handshake(port, ca, name):
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=name) as tls:
            return tls.version()


@pytest.fixture
def cluster(make_cluster):
    cd = make_cluster(api={"port": 6443, "extra_sans": ["api.example.com", "192.0.2.10"],
                           "allowed_cidrs": ["0.0.0.0/0"], "floating_ip": "198.51.100.7"})
    p = cluster_pki(cd)
    p.ensure()
    p.write_kubeconfigs(cd.kubeconfig_dir)
    return cd, p


def test_apiserver_cert_verifies_for_every_san_and_no_other(cluster):
    cd, p = cluster
    inst = next(i for i in table.instances(p.ctx) if i.id == "apiserver@c0-master-1")
    crt, key = p.paths(inst)
    sans = inst.sans(p.ctx)
    names = list(sans.dns) + [str(ip) for ip in sans.ips]
    assert {"api.example.com", "192.0.2.10", "198.51.100.7", "10.0.0.5", "10.0.0.11",
            "c0-master-1"} <= set(names)
    with tls_server(crt, key) as (port, _):
        for name in names:
            assert handshake(port, cd.pki_dir / "ca.crt", name).startswith("TLSv1.")
        for wrong in ["evil.example.com", "10.0.0.10", "c0-master-0", "kubernetes.default.svc.x"]:
            with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
                handshake(port, cd.pki_dir / "ca.crt", wrong)
        # Trusting the front-proxy CA instead of the cluster CA must fail.
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            handshake(port, cd.pki_dir / "front-proxy-ca.crt", "kubernetes")


@pytest.mark.parametrize("conf, cn, org", [
    ("admin.conf", "kubernetes-admin", "kubeadm:cluster-admins"),
    ("super-admin.conf", "kubernetes-super-admin", "system:masters"),
    ("nodes/c0-worker-0/kubelet.conf", "system:node:c0-worker-0", "system:nodes"),
])
def test_kubectl_uses_the_kubeconfig(cluster, kubectl, conf, cn, org):
    cd, p = cluster
    kc = cd.kubeconfig_dir / conf
    view = subprocess.run([str(kubectl), "--kubeconfig", str(kc), "config", "view", "-o", "json"],
                          capture_output=True, text=True, check=True)
    parsed = json.loads(view.stdout)
    assert parsed["current-context"] == f"{cn}@c0"
    assert parsed["contexts"][0]["context"] == {"cluster": "c0", "user": cn}
    expected_server = ("https://10.0.0.5:6443" if "kubelet" in conf
                       else "https://198.51.100.7:6443")
    assert parsed["clusters"][0]["cluster"]["server"] == expected_server
    # Against a TLS server with master-0's apiserver cert that requires a cluster client cert:
    # kubectl must trust the embedded CA and present the embedded client certificate.
    inst = next(i for i in table.instances(p.ctx) if i.id == "apiserver@c0-master-0")
    crt, key = p.paths(inst)
    with tls_server(crt, key, client_ca=cd.pki_dir / "ca.crt") as (port, seen):
        r = subprocess.run([str(kubectl), "--kubeconfig", str(kc),
                            f"--server=https://127.0.0.1:{port}", "--tls-server-name=kubernetes",
                            "version", "-o", "json"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["serverVersion"]["gitVersion"] == "v1.35.2"
        assert seen and seen[0] == {"organizationName": org, "commonName": cn}
        # A server name outside the certificate makes kubectl refuse the server.
        r = subprocess.run([str(kubectl), "--kubeconfig", str(kc),
                            f"--server=https://127.0.0.1:{port}", "--tls-server-name=nope.invalid",
                            "version", "-o", "json"], capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "certificate is valid for" in r.stderr


def test_kubeconfig_is_plain_yaml_with_embedded_credentials(cluster):
    cd, _ = cluster
    doc = yaml.safe_load((cd.kubeconfig_dir / "controller-manager.conf").read_text())
    assert doc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    user = doc["users"][0]["user"]
    assert set(user) == {"client-certificate-data", "client-key-data"}
