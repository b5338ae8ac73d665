"""The generated PKI as openssl sees it: chains, purposes, SANs, key usages, key pairs."""

import subprocess

import pytest

from k8simg.pki import certs as table
from k8simg.pki import cluster_pki
from k8simg.pki.keys import ALGORITHMS


def openssl(*args: str) -> str:
    r = subprocess.run(["openssl", *args], capture_output=True, text=True)
    assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stdout}{r.stderr}"
    return r.stdout


def extensions(path) -> str:
    return openssl("x509", "-in", str(path), "-noout", "-ext",
                   "subjectAltName,keyUsage,extendedKeyUsage,basicConstraints")


@pytest.fixture(params=ALGORITHMS)
def pki(request, make_cluster, key_pool, clock):
    cd = make_cluster(pki={"key_algorithm": request.param, "ca_validity_days": 3650,
                           "cert_validity_days": 365})
    p = cluster_pki(cd, clock=clock, keygen=key_pool)
    p.ensure()
    return p


def test_every_leaf_verifies_against_its_ca_for_its_purpose(pki):
    checked = 0
    for inst in table.instances(pki.ctx):
        if inst.spec.is_ca:
            continue
        crt, _ = pki.paths(inst)
        ca = pki.root / f"{table.BY_NAME[inst.spec.ca].path}.crt"
        for usage in inst.spec.usages:
            purpose = {"server": "sslserver", "client": "sslclient"}[usage]
            # -attime: the fixture's clock is fixed; verify at that instant.
            out = openssl("verify", "-attime", "1795694400", "-purpose", purpose, "-CAfile",
                          str(ca), str(crt))
            assert out.strip() == f"{crt}: OK"
            checked += 1
    # etcd server and peer x3 count twice (server and client), then apiservers, shared, kubelets
    assert checked == 3 * 2 * 2 + 3 + 8 + 5


def test_wrong_ca_and_wrong_purpose_fail(pki):
    leaf = pki.root / "apiserver-etcd-client.crt"
    r = subprocess.run(["openssl", "verify", "-attime", "1795694400", "-CAfile",
                        str(pki.root / "ca.crt"), str(leaf)], capture_output=True, text=True)
    assert r.returncode != 0 and "unable to get local issuer certificate" in r.stdout + r.stderr
    r = subprocess.run(["openssl", "verify", "-attime", "1795694400", "-purpose", "sslserver",
                        "-CAfile", str(pki.root / "etcd/ca.crt"), str(leaf)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "unsuitable certificate purpose" in r.stdout + r.stderr


def test_keys_match_their_certificates(pki):
    for inst in list(table.instances(pki.ctx))[:6]:
        crt, key = pki.paths(inst)
        assert openssl("x509", "-in", str(crt), "-noout", "-pubkey") == openssl(
            "pkey", "-in", str(key), "-pubout")


def test_extensions_as_openssl_reads_them(pki):
    rsa = pki.algorithm.startswith("rsa")
    ca = extensions(pki.root / "ca.crt")
    assert "CA:TRUE" in ca and "Certificate Sign" in ca
    api = extensions(pki.root / "nodes/c0-master-1/apiserver.crt")
    for name in ["DNS:c0-master-1", "DNS:kubernetes", "DNS:kubernetes.default",
                 "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
                 "IP Address:10.96.0.1", "IP Address:10.0.0.11", "IP Address:10.0.0.5",
                 "IP Address:127.0.0.1"]:
        assert name in api
    assert "IP Address:10.0.0.10" not in api  # another master's address
    assert "TLS Web Server Authentication" in api and "Client Authentication" not in api
    assert "CA:FALSE" in api
    assert ("Digital Signature, Key Encipherment" in api) == rsa
    peer = extensions(pki.root / "nodes/c0-master-2/etcd/peer.crt")
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in peer
    assert "DNS:c0-master-2, DNS:localhost" in peer and "IP Address:0:0:0:0:0:0:0:1" in peer
    client = extensions(pki.root / "kubeconfig/admin.crt")
    assert "TLS Web Client Authentication" in client and "Subject Alternative Name" not in client
    subject = openssl("x509", "-in", str(pki.root / "kubeconfig/admin.crt"), "-noout", "-subject")
    assert subject.strip() == "subject=O = kubeadm:cluster-admins, CN = kubernetes-admin"
    kubelet = openssl("x509", "-in", str(pki.root / "nodes/c0-worker-1/kubelet-client.crt"),
                      "-noout", "-subject")
    assert kubelet.strip() == "subject=O = system:nodes, CN = system:node:c0-worker-1"
    text = openssl("x509", "-in", str(pki.root / "apiserver-kubelet-client.crt"), "-noout", "-text")
    want = {"ecdsa-p256": "prime256v1", "ecdsa-p384": "secp384r1"}.get(pki.algorithm)
    if want:
        assert f"ASN1 OID: {want}" in text
    else:
        assert f"Public-Key: ({pki.algorithm[4:]} bit)" in text
