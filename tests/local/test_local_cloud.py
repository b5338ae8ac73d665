"""The local cloud end to end: the freshly baked image booted as QEMU VMs (software emulation)
with nothing but their config drives, in the cluster's own network namespace.

An HA cluster's three masters form one TLS etcd cluster, checked from the host with etcdctl and
the cluster's healthcheck-client certificate through the namespace; a node whose Ignition config
is refused is reported failed with its console lines; a second deploy changes nothing; destroy
leaves nothing behind.
"""

import json
import re
import subprocess
import sys
import time

import pytest

from k8simg.local.provider import LocalProvider
from k8simg.provider import Deployment, NodeFailed
from tests.bake.conftest import baked_image  # noqa: F401  (the slow tier's image)
from tests.conftest import write_cluster
from tests.local.conftest import leftovers, reap

pytestmark = pytest.mark.slow


def k8simg(*args, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "k8simg", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"k8simg {' '.join(args)} exited {r.returncode}:\n{r.stderr}")
    return r


def etcdctl(provider, *args, endpoint=None):
    eps = [endpoint] if endpoint else None
    from k8simg.etcd import etcdctl as run

    return run(provider, list(args), endpoints=eps)


def test_ha_cluster_forms_one_etcd_across_vms(baked_image, tmp_path, local_cluster):  # noqa: F811
    image, manifest, _ = baked_image
    cd = write_cluster(tmp_path / "ha", image=str(image), topology="ha",
                       workers={"count": 0, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": False},
                       local={"memory_mb": 1536, "cpus": 1, "boot_timeout_s": 1800})
    local_cluster(cd)
    started = time.monotonic()
    r = k8simg("deploy", str(cd.path), "-o", "json")
    print(f"deploy to three booted masters: {time.monotonic() - started:.0f} s", file=sys.stderr)
    out = json.loads(r.stdout)
    made = sorted((c["action"], c["kind"], c["name"]) for c in out["changes"])
    assert made == sorted([
        ("create", "network namespace", LocalProvider(cd).ns.name),
        ("create", "dhcp server", "dnsmasq"),
        ("create", "load balancer", "ha-api"),
        *[("create", "server", f"ha-master-{i}") for i in range(3)]])
    assert out["api_endpoint"] == "https://10.0.0.5:6443"

    nodes = json.loads(k8simg("nodes", str(cd.path), "-o", "json").stdout)
    sha = json.loads(manifest.read_text())["image"]["sha256"]
    assert [(n["name"], n["state"], n["address"]) for n in nodes] == [
        (f"ha-master-{i}", "ready", f"10.0.0.1{i}") for i in range(3)]
    assert all(n["image"] == f"{image.name}@sha256:{sha[:12]}" for n in nodes)

    # Each booted with its Ignition config alone, and brought up containerd and etcd.
    for n in nodes:
        console = open(n["console"], errors="replace").read()
        assert "Finished ignition-files.service" in console, n["name"]
        assert re.search(r"Started containerd\.service", console), n["name"]
        assert re.search(r"Started k8simg-etcd\.service", console), n["name"]
        assert f"{n['name']} login:" in console
        assert "[FAILED]" not in console, n["name"]
        assert "k8simg: first boot failed" not in console
    provider = LocalProvider(cd)
    procs = provider.procs.all()
    assert sorted(procs) == ["dnsmasq", "haproxy", *[f"qemu:ha-master-{i}" for i in range(3)]]
    assert all(p.alive for p in procs.values())
    assert sorted(provider.ns.taps()) == ["tap-m0", "tap-m1", "tap-m2"]

    # One etcd cluster of three, over TLS, asked from the host through the namespace. The
    # VMs are still importing container images under emulation: allow them time to answer.
    deadline = time.monotonic() + 600
    while True:
        r = k8simg("etcd", "health", str(cd.path), "-o", "json", check=False)
        health = json.loads(r.stdout) if r.stdout.strip() else {}
        if r.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(10)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(e["endpoint"] for e in health["endpoints"] if e["healthy"]) == [
        f"https://10.0.0.1{i}:2379" for i in range(3)]
    assert sorted((m["name"], m["peer_urls"][0], m["learner"]) for m in health["members"]) == [
        (f"ha-master-{i}", f"https://10.0.0.1{i}:2380", False) for i in range(3)]
    status = etcdctl(provider, "endpoint", "status", "-w", "json")
    assert status.returncode == 0, status.stderr
    headers = [s["Status"]["header"] for s in json.loads(status.stdout)]
    assert len({h["cluster_id"] for h in headers}) == 1  # one cluster, not three
    leaders = {s["Status"]["leader"] for s in json.loads(status.stdout)}
    assert len(leaders) == 1
    # Plain HTTP is not served: the members speak TLS only.
    plain = subprocess.run(provider.in_network(
        ["etcdctl", "--endpoints=http://10.0.0.10:2379", "--dial-timeout=3s", "get", "x"]),
        capture_output=True, text=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    assert plain.returncode != 0

    # A key written through one member is read from each of the others (serializable reads
    # are answered from that member's own copy).
    assert etcdctl(provider, "put", "/k8simg/test", "written-via-master-0",
                   endpoint="https://10.0.0.10:2379").returncode == 0
    for i in (1, 2):
        got = ""
        for _ in range(30):
            r = etcdctl(provider, "get", "/k8simg/test", "--print-value-only",
                        "--consistency=s", endpoint=f"https://10.0.0.1{i}:2379")
            got = r.stdout.strip()
            if got:
                break
            time.sleep(1)
        assert got == "written-via-master-0", f"master-{i}: {r.stderr}"

    # Deploying again changes nothing and keeps the same VMs.
    again = json.loads(k8simg("deploy", str(cd.path), "-o", "json").stdout)
    assert again["changes"] == []
    assert {k: p.pid for k, p in provider.procs.all().items()} == {
        k: p.pid for k, p in procs.items()}
    assert json.loads(k8simg("deploy", str(cd.path), "--plan", "-o", "json").stdout)[
        "changes"] == []

    # destroy: no process, namespace (bridge, taps), mount, loop device or file left.
    pids = [p.pid for p in procs.values()]
    r = k8simg("destroy", str(cd.path), "-o", "json")
    assert json.loads(r.stdout)["left"] == []
    reap(pids)
    assert leftovers(cd, pids) == []


def test_a_node_whose_config_ignition_refuses_fails_visibly(baked_image, tmp_path,  # noqa: F811
                                                            local_cluster):
    image, _, _ = baked_image
    cd = write_cluster(tmp_path / "bad", image=str(image), topology="single",
                       masters={"count": 1, "flavor": "x", "volume_size_gb": 10},
                       workers={"count": 0, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": False},
                       local={"memory_mb": 1536, "cpus": 1, "boot_timeout_s": 1800})
    local_cluster(cd)
    d = Deployment.for_cluster(cd)
    rendered = d.render

    def broken():
        out = rendered()
        doc = json.loads(out["bad-master-0"])
        # Ignition requires absolute paths; this config is refused as a whole.
        doc["storage"]["files"].append({"path": "etc/not-absolute",
                                        "contents": {"source": "data:,x"}})
        out["bad-master-0"] = json.dumps(doc).encode()
        return out

    d.render = broken
    started = time.monotonic()
    with pytest.raises(NodeFailed) as e:
        d.deploy()
    print(f"failure reported after {time.monotonic() - started:.0f} s", file=sys.stderr)
    (name, detail), = e.value.failures
    assert name == "bad-master-0"
    assert detail.startswith("its boot failed; serial console ")  # seen, not timed out
    assert "[FAILED] Failed to start ignition-fetch" in detail
    assert "k8simg: ignition:" in detail and "absolute" in detail, detail
    assert "emergency" in detail.lower()
    nodes = LocalProvider(cd).nodes()
    assert [(n.name, n.state) for n in nodes] == [("bad-master-0", "failed")]
    # The next deploy replaces it (as a server in ERROR is replaced on OpenStack).
    plan = json.loads(k8simg("deploy", str(cd.path), "--plan", "-o", "json").stdout)
    assert [(c["action"], c["name"], c["detail"]) for c in plan["changes"]] == [
        ("replace", "bad-master-0", "its boot failed")]
