"""The local cloud's network without any VM: the cluster's namespace, dnsmasq's fixed leases and
haproxy in front of the masters, exercised by a stand-in "node" (a veth in a namespace of the
test's own, with the node's planned MAC) that asks for a lease with busybox's real DHCP client
and serves the API port. Everything is real; only the VM is missing."""

import json
import shutil
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from k8simg.clouds import open_cloud
from k8simg.clouds.base import Infra, Preflight, PreflightError
from k8simg.clouds.console import failure_lines
from k8simg.clouds.local.network import BRIDGE, Namespace, mac_address, namespace_name
from k8simg.clouds.local.process import ProcessTable, Recorded, running
from k8simg.clouds.local.vm import config_drive
from k8simg.model.cluster import ClusterDir
from k8simg.model.plan import initial_nodes
from k8simg.ops.deploy import Deployment
from tests.clouds.local.conftest import leftovers, reap
from tests.conftest import edit_cluster, write_cluster

UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc calls this with the lease in its environment
[ "$1" = bound ] || exit 0
echo "$ip $subnet $router $hostname $dns" > {out}
ip addr add "$ip/24" dev "$interface"
"""


def _sh(*argv, check=True, **kw):
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, **kw)


@contextmanager
def stand_in_node(cluster_ns: str, mac: str, tmp_path):
    """A namespace of the test's own, linked to the cluster's bridge by a veth whose far end
    has ``mac``; removed afterwards whatever happens."""
    name = f"k8simg-test-{uuid.uuid4().hex[:8]}"
    peer = f"veth-{uuid.uuid4().hex[:6]}"
    _sh("ip", "netns", "add", name)
    try:
        _sh("ip", "-n", cluster_ns, "link", "add", peer, "type", "veth", "peer", "name", "eth0",
            "netns", name)
        _sh("ip", "-n", cluster_ns, "link", "set", peer, "master", BRIDGE, "up")
        _sh("ip", "-n", name, "link", "set", "eth0", "address", mac)
        _sh("ip", "-n", name, "link", "set", "eth0", "up")
        _sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def dhcp(ns: str, tmp_path) -> str | None:
    """Ask for a lease with busybox udhcpc inside ``ns``; the lease line, or None."""
    out = tmp_path / f"lease-{ns}"
    script = tmp_path / f"udhcpc-{ns}.sh"
    script.write_text(UDHCPC_SCRIPT.format(out=out))
    script.chmod(0o755)
    r = subprocess.run(["ip", "netns", "exec", ns, "busybox", "udhcpc", "-i", "eth0", "-f",
                        "-q", "-n", "-t", "4", "-T", "1", "-s", str(script)],
                       capture_output=True, text=True, timeout=30)
    return out.read_text().strip() if r.returncode == 0 and out.exists() else None


@pytest.fixture
def cluster(tmp_path, local_cluster, monkeypatch):
    image = tmp_path / "image.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1G"], check=True)
    # A relative cluster path, as `k8simg deploy clusters/demo` gives one (the daemons
    # detach into /, so every path they get must be absolute).
    monkeypatch.chdir(tmp_path)
    cd = write_cluster(Path("net"), image=str(image),
                       workers={"count": 1, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": False})
    local_cluster(cd)
    return cd


def test_namespace_dhcp_and_api_load_balancer(cluster, tmp_path):
    cloud = open_cloud(cluster, cluster.load())
    nodes = initial_nodes(cloud.cfg)
    cloud.ensure_infrastructure(Preflight([], None), nodes)
    masters = [n for n in nodes if n.role == "master"]
    cloud.ensure_api_members(masters, Infra())
    ns = cloud.ns.name
    assert ns == namespace_name("net", cluster.path) and Namespace(ns).exists

    # Contained: loopback, the bridge, nothing else; no route but the node subnet.
    links = {ln.split(":")[1].strip() for ln in _sh("ip", "-n", ns, "-o", "link").stdout.splitlines()}
    assert links == {"lo", BRIDGE}
    assert _sh("ip", "-n", ns, "-4", "route").stdout.split("\n")[0].startswith("10.0.0.0/24 dev br0")
    assert "default" not in _sh("ip", "-n", ns, "-4", "route").stdout

    master0, worker0 = masters[0], next(n for n in nodes if n.role == "worker")
    with stand_in_node(ns, mac_address(master0.name, cluster.path), tmp_path) as node_ns:
        lease = dhcp(node_ns, tmp_path)
        assert lease is not None, "no lease for a planned node's MAC"
        ip, subnet, router, hostname, dns = lease.split()
        assert (ip, subnet, router, hostname, dns) == (
            str(master0.address), "255.255.255.0", "10.0.0.1", master0.name, "10.0.0.1")
        # DNS for the node names, from the bridge; nothing forwarded.
        r = _sh("ip", "netns", "exec", node_ns, "busybox", "nslookup",
                f"{worker0.name}", "10.0.0.1", check=False)
        assert str(worker0.address) in r.stdout, r.stdout + r.stderr
        # The metadata service answers a node with its own user_data, as Nova does, and
        # anyone else with 404.
        _sh("ip", "-n", node_ns, "route", "add", "default", "via", "10.0.0.1")
        rec = cloud.node_path(master0.name)
        rec.mkdir(parents=True)
        (rec / "node.json").write_text(json.dumps({"name": master0.name, "uuid": "u-0",
                                                   "address": str(master0.address)}))
        (rec / "user_data").write_bytes(b"master-0's ignition config")
        url = "http://169.254.169.254/openstack/latest/user_data"
        r = _sh("ip", "netns", "exec", node_ns, "busybox", "wget", "-q", "-O", "-", url)
        assert r.stdout == "master-0's ignition config"
        r = _sh("ip", "netns", "exec", node_ns, "busybox", "wget", "-q", "-O", "-",
                "http://169.254.169.254/openstack/latest/meta_data.json")
        assert json.loads(r.stdout) == {"uuid": "u-0", "name": master0.name,
                                        "hostname": master0.name}
        (rec / "node.json").write_text(json.dumps({"name": master0.name, "uuid": "u-0",
                                                   "address": "10.0.0.99"}))
        r = _sh("ip", "netns", "exec", node_ns, "busybox", "wget", "-q", "-O", "-", url,
                check=False)
        assert r.returncode != 0 and r.stdout == ""  # 404: not the node at that address
        shutil.rmtree(rec)
        # Nothing outside the namespace is reachable from a node.
        r = _sh("ip", "netns", "exec", node_ns, "busybox", "ping", "-c", "1", "-W", "1",
                "192.0.2.1", check=False)
        assert r.returncode != 0
        # The API VIP forwards to the master's API port.
        server = subprocess.Popen(
            ["ip", "netns", "exec", node_ns, "python3", "-c",
             f"import socket; s = socket.create_server(('{master0.address}', 6443)); "
             f"c, _ = s.accept(); c.sendall(b'api-of-{master0.name}'); c.close()"])
        try:
            got = ""
            for _ in range(50):
                r = _sh("ip", "netns", "exec", ns, "python3", "-c",
                        "import socket; s = socket.create_connection(('10.0.0.5', 6443), 2); "
                        "print(s.recv(100).decode())", check=False)
                got = r.stdout.strip()
                if got:
                    break
                subprocess.run(["sleep", "0.2"])
            assert got == f"api-of-{master0.name}"
        finally:
            server.kill()
            server.wait()
    # A MAC the plan does not know gets no address.
    with stand_in_node(ns, "fa:16:3e:00:00:01", tmp_path) as stranger:
        assert dhcp(stranger, tmp_path) is None

    # A second run changes nothing; destroy leaves nothing.
    again = open_cloud(cluster, cluster.load())
    again.ensure_infrastructure(Preflight([], None), nodes)
    again.ensure_api_members(masters, Infra())
    assert again.ledger.changes == []
    pids = [r.pid for r in cloud.procs.all().values()]
    assert len(pids) == 3  # dnsmasq, haproxy, the metadata service
    # A copy of the cluster directory (its process table included) is another cluster: its
    # destroy stops none of the original's processes.
    copy = tmp_path / "copy" / cluster.path.name
    (copy / "local").mkdir(parents=True)
    for f in ("cluster.yaml", "state.json", "local/processes.json"):
        (copy / f).write_bytes((cluster.path / f).read_bytes())
    assert Deployment.for_cluster(ClusterDir(copy)).destroy().left == []
    assert all(running(pid) for pid in pids)
    result = Deployment.for_cluster(cluster).destroy()
    assert result.left == []
    assert leftovers(cluster, pids) == []


def test_a_reused_pid_is_never_signalled(tmp_path):
    table = ProcessTable(tmp_path / "processes.json")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = tmp_path / "sleep.pid"
        pid_file.write_text(f"{sleeper.pid}\n")
        rec = table.record("sleeper", pid_file, "sleep")
        assert rec.alive
        # The same PID with another start time is another process: not ours to stop.
        impostor = Recorded("sleeper", rec.pid, rec.started + 1, "sleep")
        assert not impostor.alive
        data = json.loads(table.path.read_text())
        data["sleeper"]["started"] += 1
        table.path.write_text(json.dumps(data))
        assert table.stop("sleeper") is False
        assert sleeper.poll() is None
        assert table.all() == {}
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_record_is_the_cluster_s_only_by_its_uid_and_directory(tmp_path):
    """The table of a copied directory, of a cluster re-made in the place of a deleted one,
    or a record from before UIDs in a copy: none of them stops the original's process."""
    home = tmp_path / "a" / "local"
    home.mkdir(parents=True)
    # as the local cloud's daemons do, it names a file in the cluster's folder
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             str(home / "vm.pid")], cwd=tmp_path)
    try:
        pid_file = home / "p.pid"
        pid_file.write_text(str(proc.pid))
        original = ProcessTable(home / "processes.json", owner=f"u1@{home}", home=home)
        assert original.record("vm", pid_file, "python3").alive
        # a copy: same UID (state.json was copied), another directory
        copy = tmp_path / "b" / "local"
        copy.mkdir(parents=True)
        (copy / "processes.json").write_bytes((home / "processes.json").read_bytes())
        copied = ProcessTable(copy / "processes.json", owner=f"u1@{copy}", home=copy)
        assert copied.all() == {} and copied.stop("vm") is False
        # a new cluster in the old one's place: same directory, another UID
        remade = ProcessTable(home / "processes.json", owner=f"u2@{home}", home=home)
        assert remade.all() == {} and remade.stop("vm") is False
        # a record from before owners, in a copy: the process does not name the copy
        data = json.loads((home / "processes.json").read_text())
        del data["vm"]["owner"]
        (copy / "processes.json").write_text(json.dumps(data))
        legacy = ProcessTable(copy / "processes.json", owner=f"u1@{copy}", home=copy)
        assert list(legacy.all()) == ["vm"] and not legacy.all()["vm"].alive
        assert legacy.stop("vm") is False
        assert proc.poll() is None
        assert original.stop("vm") is True
        assert proc.wait(10) == -15  # SIGTERM
    finally:
        proc.kill()
        proc.wait()


def test_concurrent_records_are_all_kept(tmp_path):
    """A deploy starts its VMs from several threads at once: no record may be lost."""
    import concurrent.futures as cf

    table = ProcessTable(tmp_path / "processes.json")
    pid_file = tmp_path / "self.pid"
    pid_file.write_text(str(subprocess.os.getpid()))
    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: table.record(f"qemu:n{i}", pid_file, "python"), range(40)))
    assert sorted(table.all()) == sorted(f"qemu:n{i}" for i in range(40))


def test_preflight_names_every_problem(tmp_path):
    cd = write_cluster(tmp_path / "pf", image=str(tmp_path / "missing.qcow2"),
                       local={"memory_mb": 262144})
    with pytest.raises(PreflightError) as e:
        Deployment.for_cluster(cd).deploy()
    text = str(e.value)
    assert "preflight on the local cloud failed; nothing was created" in text
    assert f"image: {tmp_path / 'missing.qcow2'}: no such file" in text
    assert "local.memory_mb: 6 new nodes x 262144 MiB" in text
    assert not (cd.path / "local").exists()
    not_qcow = tmp_path / "raw.img"
    not_qcow.write_bytes(b"\0" * 4096)
    with pytest.raises(PreflightError, match="raw.img: not a qcow2 image"):
        Deployment.for_cluster(write_cluster(tmp_path / "pf2", image=str(not_qcow))).deploy()


def test_config_drive_is_what_nova_writes(tmp_path):
    node = initial_nodes(write_cluster(tmp_path / "cd").load())[0]
    iso = config_drive(tmp_path / "config.iso", node.name, b'{"ignition": {}}',
                       instance_id="1234", network_data={"links": [], "networks": [],
                                                         "services": []})
    assert oct(iso.stat().st_mode & 0o777) == "0o600"  # it holds the node's keys
    info = _sh("isoinfo", "-d", "-i", str(iso)).stdout
    assert "Volume id: config-2" in info

    def read(path):
        return _sh("isoinfo", "-R", "-i", str(iso), "-x", path).stdout

    meta = json.loads(read("/openstack/latest/meta_data.json"))
    assert (meta["uuid"], meta["name"], meta["hostname"]) == ("1234", node.name, node.name)
    assert json.loads(read("/openstack/latest/network_data.json"))["links"] == []
    assert read("/openstack/latest/user_data") == '{"ignition": {}}'


def test_failure_lines_pick_what_explains_a_failed_boot():
    # As a refused config shows on a node's console (seen on the local cloud).
    console = "\n".join([
        "[  OK  ] Finished dracut-pre-udev.service - dracut pre-udev hook.",
        "[   36.9] platform regulatory.0: firmware: failed to load regulatory.db (-2)",
        "[FAILED] Failed to start ignition-fetch.service - Ignition (fetch).",
        "k8simg: first boot failed in the initramfs; Ignition's messages follow",
        'k8simg: ignition: GET error: Get "http://169.254.169.254/openstack/latest/user_data"',
        'k8simg: ignition: op(1): [finished] mounting config drive',
        "k8simg: ignition: error at $.storage.files.37.path, line 1 col 21928: path not absolute",
        "k8simg: ignition: Ignition failed: config is not valid",
        "k8simg: failed unit: ignition-fetch.service",
        "[  OK  ] Reached target emergency.target - Emergency Mode."])
    assert failure_lines(console) == [
        "[FAILED] Failed to start ignition-fetch.service - Ignition (fetch).",
        "k8simg: first boot failed in the initramfs; Ignition's messages follow",
        "k8simg: ignition: error at $.storage.files.37.path, line 1 col 21928: path not absolute",
        "k8simg: ignition: Ignition failed: config is not valid",
        "k8simg: failed unit: ignition-fetch.service"]


def test_scale_down_removes_the_newest_worker_vm(tmp_path, local_cluster):
    """Workers beyond the plan are found among the recorded VMs and removed newest first by
    the shared orchestration, with their tap, disks and lease (the VMs boot a blank disk:
    only their bookkeeping matters here)."""
    image = tmp_path / "image.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1G"], check=True)
    cd = write_cluster(tmp_path / "sc", image=str(image), topology="one-master",
                       masters={"count": 1, "flavor": "x", "volume_size_gb": 10},
                       workers={"count": 3, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": False}, local={"boot_timeout_s": 30})
    local_cluster(cd)
    p = open_cloud(cd, cd.load())
    nodes = initial_nodes(p.cfg)
    p.ensure_infrastructure(Preflight([], None), nodes)
    for n in nodes:
        p.ensure_node(n, b"{}", Infra())
    pids = [r.pid for r in ProcessTable(cd.path / "local" / "processes.json").all().values()]
    edit_cluster(cd, **{"workers": {"count": 1, "flavor": "x", "volume_size_gb": 10}})
    d = Deployment.for_cluster(cd, skip_unobservable=True)  # nothing runs Kubernetes here
    d.remove_surplus()
    assert [(c.action, c.kind, c.name) for c in d.ledger.changes] == [
        ("delete", "server", "sc-worker-2"), ("update", "dhcp server", "dnsmasq"),
        ("delete", "server", "sc-worker-1"), ("update", "dhcp server", "dnsmasq")]
    assert sorted(n.name for n in open_cloud(cd, cd.load()).nodes()) == ["sc-master-0", "sc-worker-0"]
    assert sorted(open_cloud(cd, cd.load()).ns.taps()) == ["tap-m0", "tap-w0"]
    hosts = (cd.path / "local/network/dnsmasq.hosts").read_text()
    assert "sc-worker-1" not in hosts and "sc-worker-0" in hosts
    reap(pids)
