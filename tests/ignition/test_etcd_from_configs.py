"""The etcd members exactly as the rendered master configs define them, run for real.

The node subnet is a loopback range, so every member binds its planned address; the configs'
files are written under a temporary root per node and only their paths are rebased.
"""

import subprocess

import pytest

from k8simg.ignition.render import render_node
from k8simg.model.versions import DEBIAN_ETCD
from tests.ignition.support import env_values, exec_start, materialise, unit_text
from tests.support import etcd_available, processes, wait_until

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd-server/etcd-client missing")


def test_rendered_etcd_forms_a_healthy_tls_cluster(rendered_cluster, tmp_path):
    cd, ctx = rendered_cluster("ha3", network={
        "node_cidr": "127.77.0.0/24", "service_cidr": "10.96.0.0/12",
        "pod_cidr": "10.244.0.0/16", "dns_domain": "cluster.local", "dns_nameservers": []})
    masters = [n for n in ctx.nodes if n.role == "master"]
    pki = cd.pki_dir
    eps = []
    with processes(kill=True) as start:
        for node in masters:
            root = tmp_path / node.name
            doc = render_node(ctx, node)
            materialise(doc, root)
            # The image's unit with the config's environment file, as systemd would run it.
            # (of the offline image: this machine's etcd is Debian's, as that image's is)
            unit = unit_text(doc, "k8simg-etcd.service", ctx.config.kubernetes_version,
                             DEBIAN_ETCD)
            args = exec_start(unit)
            # Type=notify: ready once the cluster has a leader, so no start timeout (members
            # wait for their peers' boots; systemd's 90 s default would kill and restart them).
            assert "Type=notify" in unit and "\nTimeoutStartSec=0\n" in unit
            env = env_values(doc, "/etc/k8simg/etcd.env")
            assert args[0] == "/usr/bin/etcd"
            assert env["ETCD_LISTEN_CLIENT_URLS"] == f"https://{node.address}:2379"
            # (a node's loopback is its own: here the members share one, so each gets its
            # metrics listener on its own loopback address)
            rebased = ["etcd"] + [a.replace("/etc/kubernetes/pki", f"{root}/etc/kubernetes/pki")
                                  .replace("/var/lib/etcd", f"{root}/var/lib/etcd")
                                  .replace("//127.0.0.1:2381", f"//{node.address}:2381")
                                  for a in args[1:]]
            log = open(tmp_path / f"{node.name}.log", "w")
            start(rebased, stdout=log, stderr=subprocess.STDOUT, env=env)
            eps.append(f"https://{node.address}:2379")

        def etcdctl(*args, endpoints=eps):
            return subprocess.run(
                ["etcdctl", f"--endpoints={','.join(endpoints)}",
                 f"--cacert={pki}/etcd/ca.crt", f"--cert={pki}/etcd/healthcheck-client.crt",
                 f"--key={pki}/etcd/healthcheck-client.key", "--dial-timeout=2s",
                 "--command-timeout=3s", *args],
                capture_output=True, text=True, timeout=15, env={"ETCDCTL_API": "3"})

        wait_until(lambda: etcdctl("endpoint", "health").stderr.count("is healthy") == 3, 60,
                   "three healthy members from the rendered configs")
        members = etcdctl("member", "list").stdout
        assert sorted(ln.split(", ")[2] for ln in members.splitlines()) == [
            n.name for n in masters]
        assert etcdctl("put", "/from-configs", "ok", endpoints=eps[:1]).returncode == 0
        for ep in eps[1:]:
            got = etcdctl("get", "/from-configs", "--print-value-only", endpoints=[ep])
            assert got.stdout.strip() == "ok"
        # The API server's identity, as the static pod's flags name it, is accepted too.
        master0 = tmp_path / masters[0].name / "etc/kubernetes/pki"
        r = subprocess.run(
            ["etcdctl", f"--endpoints={eps[2]}", f"--cacert={master0}/etcd/ca.crt",
             f"--cert={master0}/apiserver-etcd-client.crt",
             f"--key={master0}/apiserver-etcd-client.key", "get", "/from-configs",
             "--print-value-only"], capture_output=True, text=True, timeout=15,
            env={"ETCDCTL_API": "3"})
        assert r.stdout.strip() == "ok", r.stderr
