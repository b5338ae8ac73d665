"""The generated etcd certificates in a real three-member etcd cluster on loopback."""

import subprocess

import pytest

from k8simg.pki import cluster_pki
from tests.support import etcd_available, free_ports, processes, wait_until

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd-server/etcd-client missing")


def etcdctl(endpoints, ca, cert, key, *args, timeout=5):
    return subprocess.run(
        ["etcdctl", f"--endpoints={','.join(endpoints)}", f"--cacert={ca}", f"--cert={cert}",
         f"--key={key}", "--dial-timeout=2s", "--command-timeout=3s", *args],
        capture_output=True, text=True, timeout=timeout, env={"ETCDCTL_API": "3"})


def test_three_member_tls_cluster(make_cluster, clock, tmp_path):
    cd = make_cluster()
    cluster_pki(cd).ensure()  # real clock: etcd checks validity against now
    foreign = make_cluster()
    cluster_pki(foreign).ensure()
    pki = cd.pki_dir
    masters = [f"c0-master-{i}" for i in range(3)]
    ports = free_ports(6)
    peers = {m: f"https://127.0.0.1:{ports[2 * i]}" for i, m in enumerate(masters)}
    clients = {m: f"https://127.0.0.1:{ports[2 * i + 1]}" for i, m in enumerate(masters)}
    initial = ",".join(f"{m}={u}" for m, u in peers.items())
    ca = pki / "etcd/ca.crt"
    with processes(kill=True) as start:
        for m in masters:
            node = pki / "nodes" / m / "etcd"
            log = open(tmp_path / f"{m}.log", "w")
            start(["etcd", f"--name={m}", f"--data-dir={tmp_path / m}",
                   f"--listen-peer-urls={peers[m]}", f"--initial-advertise-peer-urls={peers[m]}",
                   f"--listen-client-urls={clients[m]}", f"--advertise-client-urls={clients[m]}",
                   f"--initial-cluster={initial}", "--initial-cluster-state=new",
                   "--initial-cluster-token=test",
                   "--client-cert-auth", f"--trusted-ca-file={ca}",
                   f"--cert-file={node}/server.crt", f"--key-file={node}/server.key",
                   "--peer-client-cert-auth", f"--peer-trusted-ca-file={ca}",
                   f"--peer-cert-file={node}/peer.crt", f"--peer-key-file={node}/peer.key"],
                  stdout=log, stderr=subprocess.STDOUT)
        hc = (ca, pki / "etcd/healthcheck-client.crt", pki / "etcd/healthcheck-client.key")
        eps = list(clients.values())

        def healthy():
            r = etcdctl(eps, *hc, "endpoint", "health")
            return r.returncode == 0 and r.stderr.count("is healthy") == 3
        wait_until(healthy, 60, "3 healthy etcd members")

        members = etcdctl(eps, *hc, "member", "list", "-w", "simple").stdout
        assert sorted(line.split(", ")[2] for line in members.splitlines()) == masters

        # Write through one member, read through each of the others.
        assert etcdctl([eps[0]], *hc, "put", "/k8simg/test", "hello").returncode == 0
        for ep in eps[1:]:
            r = etcdctl([ep], *hc, "get", "/k8simg/test", "--print-value-only")
            assert r.stdout.strip() == "hello", r.stderr
        # The API server's client certificate works as well.
        api = (ca, pki / "apiserver-etcd-client.crt", pki / "apiserver-etcd-client.key")
        assert etcdctl([eps[2]], *api, "get", "/k8simg/test").returncode == 0

        # A client certificate from another cluster's etcd CA is refused by the server.
        fp = foreign.pki_dir
        r = etcdctl([eps[0]], ca, fp / "etcd/healthcheck-client.crt",
                    fp / "etcd/healthcheck-client.key", "get", "/k8simg/test")
        assert r.returncode != 0 and "hello" not in r.stdout
        # No client certificate at all: refused too.
        r = subprocess.run(["etcdctl", f"--endpoints={eps[0]}", f"--cacert={ca}",
                            "--dial-timeout=2s", "--command-timeout=3s", "get", "/k8simg/test"],
                           capture_output=True, text=True, timeout=10, env={"ETCDCTL_API": "3"})
        assert r.returncode != 0 and "hello" not in r.stdout
        # A client that trusts the wrong CA does not accept the servers.
        r = etcdctl([eps[1]], fp / "etcd/ca.crt", *hc[1:], "get", "/k8simg/test")
        assert r.returncode != 0 and "hello" not in r.stdout
    # Member 0 saw and refused the foreign client certificate during the handshake.
    log0 = (tmp_path / "c0-master-0.log").read_text()
    assert "rejected connection" in log0 and "certificate signed by unknown authority" in log0
