"""`upgrade --control-plane-surge 3`: the three masters' replacements boot at once and each
joins etcd in its turn, under writes, also when the run is killed and run again.

The upgrade (k8simg.ops.upgrade) runs for real against real etcd members on a loopback range;
only the servers are a double (tests/ops/upgrade/cloud_double.py): a master's "boot" is what its
first boot does for etcd, from the Ignition config the upgrade gave it: the config's files
written under a folder of its own, then the image's etcd unit as systemd runs it (the join step,
then etcd with the environment files). A master's deletion stops its etcd.
"""

import contextlib
import json
import os
import signal
import subprocess

import pytest

from k8simg.clouds.base import ImageFacts, Preflight, Reach
from k8simg.ignition.image import ETCD_ENV, ETCD_JOIN, ETCD_JOIN_ENV
from k8simg.model.plan import client_url, peer_url
from k8simg.model.versions import DEBIAN_ETCD
from k8simg.ops.deploy import Deployment
from k8simg.ops.etcd import Etcd
from k8simg.ops.upgrade import Upgrade
from k8simg.pki import cluster_pki
from tests.conftest import write_cluster
from tests.ignition.support import etcd_command, materialise, node_view
from tests.ops.upgrade.cloud_double import CloudDouble, Killed
from tests.ops.upgrade.kubeapi import KubeApiDouble
from tests.ops.upgrade.test_etcd_roll import Writer
from tests.support import etcd_available, processes, wait_until

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd-server/etcd-client missing")

NET = {"node_cidr": "127.79.0.0/24", "service_cidr": "10.96.0.0/12",
       "pod_cidr": "10.244.0.0/16", "dns_domain": "cluster.local", "dns_nameservers": []}


class EtcdNodes(CloudDouble):
    """The cloud double whose masters run their config's etcd as their first boot would."""

    def __init__(self, cd, api, image, start, tmp, **kw):
        super().__init__(cd, api, image, **kw)
        self.start_proc, self.tmp = start, tmp
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = []
        self.api_members: list[list[str]] = []  # the API load balancer's members, each time
        self.kill_lb = False

    def prepare(self, nodes) -> Preflight:
        return Preflight([], ImageFacts(self.image, self.image, has_kubernetes=False,
                                        etcd_join=True))

    @contextlib.contextmanager
    def reach(self):
        yield Reach()  # the members' loopback addresses are this machine's

    def boot_etcd(self, node, user_data: bytes) -> None:
        doc = json.loads(user_data)
        root = self.tmp / node.name
        materialise(doc, root)
        (root / "var/lib/etcd").mkdir(parents=True, exist_ok=True)  # the volume's bind mount
        version = self.cfg.kubernetes_version
        join = root / "etcd-join"
        join.write_bytes(node_view(doc, version, DEBIAN_ETCD)[ETCD_JOIN][1])
        etcd = etcd_command(doc, root, node, version, DEBIAN_ETCD)
        env_file = root / ETCD_ENV.lstrip("/")
        joined = root / ETCD_JOIN_ENV.lstrip("/")
        # systemd: the config's environment file, then the join step, then etcd with both
        script = ('set -a; . "$0"; set +a; K8SIMG_ETCD_JOIN_ENV="$1" sh "$2" || exit; '
                  'if [ -f "$1" ]; then set -a; . "$1"; set +a; fi; shift 2; exec "$@"')
        log = open(self.tmp / f"{node.name}.log", "a")
        self.logs.append(log)
        self.procs[node.name] = self.start_proc(
            ["sh", "-c", script, str(env_file), str(joined), str(join), *etcd],
            stdout=log, stderr=subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin", "K8SIMG_ETCD_DATA_DIR": str(root / "var/lib/etcd"),
                 "K8SIMG_PKI": str(root / "etc/kubernetes/pki")})

    def ensure_node(self, node, user_data, infra) -> None:
        fresh = node.name not in self.servers
        super().ensure_node(node, user_data, infra)
        if fresh and node.role == "master":
            self.boot_etcd(node, user_data)

    def ensure_api_members(self, masters, infra) -> None:
        if self.kill_lb:  # a run killed in a turn's load-balancer swap: promoted, not removed
            self.kill_lb = False
            raise Killed("killed in the load balancer's swap")
        self.api_members.append(sorted(m.name for m in masters))

    def delete_node(self, name: str) -> None:
        super().delete_node(name)
        p = self.procs.get(name)
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)  # etcd, or a join step still waiting, and its own
            p.wait(timeout=20)


@pytest.fixture
def surge_cluster(tmp_path):
    """Three masters deployed, their etcd a healthy cluster of three; the cloud and the etcd
    client. (The Kubernetes API double only records the cloud double's nodes.)"""
    cd = write_cluster(tmp_path / "cps", topology="ha",
                       workers={"count": 0, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": False}, network=NET)
    cluster_pki(cd, cd.load()).ensure()
    api = KubeApiDouble()
    with processes(kill=True) as start:
        cloud = EtcdNodes(cd, api, "img-new", start, tmp_path)
        from k8simg.ignition.render import render_context, render_user_data
        ctx = render_context(cd)
        for node in cd.nodes(cd.load()):
            cloud.place(node, "img-old")
            cloud.boot_etcd(node, render_user_data(ctx, node))
        etcd = Etcd(cd.pki_dir, identity="apiserver-etcd-client")
        eps = [client_url(n) for n in cd.nodes(cd.load())]
        wait_until(lambda: sum(e.healthy for e in etcd.health(eps)) == 3, 60,
                   "three healthy members")
        try:
            yield cd, cloud, etcd
        finally:
            for log in cloud.logs:
                log.close()


def upgrade(cd, cloud, events):
    """The image has no Kubernetes: no API gate is asked (each is named as skipped)."""
    up = Upgrade(Deployment(cd, cloud), control_plane_surge=3, timeout=120,
                 events=lambda e, d: events.append((e, d)))
    return up.run()


@pytest.mark.slow  # six real members, three joins under writes: about a minute
@pytest.mark.parametrize("kill", [None, ("boot", "cps-master-5"), ("delete", "cps-master-1")],
                         ids=["whole", "killed-booting-ahead", "killed-in-the-second-turn"])
def test_three_replacements_boot_at_once_and_join_one_by_one(surge_cluster, kill):
    cd, cloud, etcd = surge_cluster
    old = [f"cps-master-{i}" for i in range(3)]
    new = [f"cps-master-{i}" for i in (3, 4, 5)]
    addresses = {n.name: n for n in cd.nodes(cd.load())}
    writer = Writer(cd.pki_dir, [f"https://127.79.0.1{i}:2379" for i in (3, 4, 5, 0, 1, 2)],
                    interval=0.05, sticky=True)
    events: list[tuple[str, dict]] = []
    writer.start()
    try:
        if kill is not None:
            cloud.kill_before = kill
            with pytest.raises(Killed):
                upgrade(cd, cloud, events)
            events.append(("killed", {}))
        result = upgrade(cd, cloud, events)
    finally:
        writer.stop()
    # (the run killed in the second turn had replaced the first master: the re-run, the rest)
    assert result.replaced == list(zip(old, new, strict=True))[
        1 if kill == ("delete", "cps-master-1") else 0:]
    addresses.update({n.name: n for n in cd.nodes(cd.load())})

    # All three booted before the first membership change, each booted once (a re-run boots
    # only what the killed run had not); the changes one at a time, in order.
    names = [e for e, _ in events]
    first_add = names.index("etcd-learner-added")
    booted = [d["node"] for e, d in events if e == "boot-ahead"]
    assert sorted(set(booted)) == new
    assert max(i for i, (e, _) in enumerate(events) if e == "boot-ahead") < first_add
    assert sorted(n for v, n, _ in cloud.log if v == "boot") == new
    assert [d["node"] for e, d in events if e == "etcd-promoted"] == new
    assert [d["node"] for e, d in events if e == "etcd-removed"] == old
    adds = [i for i, (e, _) in enumerate(events) if e == "etcd-learner-added"]
    removes = [i for i, (e, _) in enumerate(events) if e == "etcd-removed"]
    assert adds[1] > removes[0] and adds[2] > removes[1]  # one learner at a time
    if kill == ("boot", "cps-master-5"):
        # killed while booting ahead (the third announced, not booted): the re-run boots
        # the third alone
        k = names.index("killed")
        assert [d["node"] for e, d in events[:k] if e == "boot-ahead"] == new
        assert [d["node"] for e, d in events[k:] if e == "boot-ahead"] == new[2:]

    # etcd: exactly the new members, voters, healthy; every acknowledged write kept; quorum
    # never lost; the old members' etcd stopped with their servers
    eps = [client_url(addresses[n]) for n in new]
    assert sorted((m.name, m.learner) for m in etcd.members(eps)) == [(n, False) for n in new]
    assert all(e.healthy for e in etcd.health(eps))
    assert len(writer.acked) > 50
    assert [(ep, writer.missing(etcd, ep)) for ep in eps] == [(ep, []) for ep in eps]
    assert [e for e in writer.errors if "no leader" in e or "leader changed" in e] == []
    assert sorted(cloud.servers) == new
    assert all(cloud.procs[n].poll() is not None for n in old)
    if kill is None:
        # the API load balancer: each turn adds its own replacement, then drops its old
        # master; never one booted ahead before its turn (its API cannot answer yet)
        m = [f"cps-master-{i}" for i in range(6)]
        assert cloud.api_members == [[m[0], m[1], m[2], m[3]], [m[1], m[2], m[3]],
                                     [m[1], m[2], m[3], m[4]], [m[2], m[3], m[4]],
                                     [m[2], m[3], m[4], m[5]], [m[3], m[4], m[5]]]
    # each new member started with the list as the cluster had it in its turn, not the
    # rendered one (which named all six)
    for i, n in enumerate(new):
        said = (cloud.tmp / f"{n}.log").read_text()
        listed = [*new[:i], *old[i:], n]
        want = ",".join(sorted(f"{m}={peer_url(addresses[m])}" for m in listed))
        got = next(ln for ln in said.splitlines() if "the cluster lists" in ln)
        assert ",".join(sorted(got.rsplit("joining ", 1)[1].split(","))) == want, got


@pytest.mark.slow  # six real members under writes: about a minute each
@pytest.mark.parametrize("kill", ["booting-ahead", "head-promoted"])
def test_a_master_lost_while_the_run_was_killed_leaves_etcd_first(surge_cluster, kill):
    """A run killed, then master-1's server deleted outside k8simg (by hand, or lost with its
    host): its etcd member stays listed, dead. Killed while booting ahead (master-3 and -4 up,
    waiting, no membership changed), or in master-0's turn with master-3 promoted beside the
    old three (the load balancer's swap, before master-0's removal). The re-run, after its
    snapshot, removes master-1's member (the others hold quorum), then goes on turn by turn:
    master-4 joins in master-1's turn, with the member list as it is then. Before, the re-run
    took "old server gone" for "membership done": it dropped master-1 and aborted on the dead
    member at the next preflight, for good, master-4 left waiting for a turn never to come."""
    from k8simg.ops.etcd import EtcdAbort
    from k8simg.ops.membership import remove_lost_members

    cd, cloud, etcd = surge_cluster
    nodes = {n.name: n for n in cd.nodes(cd.load())}
    old = [f"cps-master-{i}" for i in range(3)]
    new = [f"cps-master-{i}" for i in (3, 4, 5)]
    # the control: a member whose server runs and answers is never taken for lost
    with pytest.raises(EtcdAbort, match="cps-master-1 still answers"):
        remove_lost_members(etcd, [nodes["cps-master-1"]],
                            [client_url(nodes[n]) for n in ("cps-master-0", "cps-master-2")])
    assert len(etcd.members([client_url(nodes["cps-master-0"])])) == 3

    writer = Writer(cd.pki_dir, [f"https://127.79.0.1{i}:2379" for i in (3, 4, 5, 0, 2)],
                    interval=0.05, sticky=True)
    events: list[tuple[str, dict]] = []
    writer.start()
    try:
        if kill == "booting-ahead":
            cloud.kill_before = ("boot", "cps-master-5")
        else:
            cloud.kill_lb = True
        with pytest.raises(Killed):
            upgrade(cd, cloud, events)
        cloud.delete_node("cps-master-1")  # not through k8simg: its etcd stops, its member stays
        assert "cps-master-1" in {m.name for m in etcd.members([client_url(nodes[old[0]])])}
        events.append(("killed-and-lost", {}))
        swaps = len(cloud.api_members)
        result = upgrade(cd, cloud, events)
    finally:
        writer.stop()

    assert result.replaced == list(zip(old, new, strict=True))
    after = events[[e for e, _ in events].index("killed-and-lost"):]
    names = [e for e, _ in after]
    lost = names.index("etcd-lost-member-removed")
    assert after[lost][1]["name"] == "cps-master-1"
    assert names.count("etcd-lost-member-removed") == 1
    assert names.index("etcd-snapshot") < lost  # the restore point first
    # then the turns: master-0's (finished where it was killed), master-1's, master-2's
    assert lost < min(i for i, e in enumerate(names) if e in ("etcd-learner-added",
                                                              "etcd-removed"))
    assert [d["node"] for e, d in after if e == "etcd-promoted"] == (
        new if kill == "booting-ahead" else new[1:])
    assert [d["node"] for e, d in after if e == "etcd-removed"] == ["cps-master-0",
                                                                    "cps-master-2"]
    assert sorted(n for v, n, _ in cloud.log if v == "boot") == new  # each booted once
    # the load balancer never again given the lost master, and left with the new three
    assert all("cps-master-1" not in m for m in cloud.api_members[swaps:])
    assert cloud.api_members[-1] == new

    nodes.update({n.name: n for n in cd.nodes(cd.load())})
    new_eps = [client_url(nodes[n]) for n in new]
    assert sorted((m.name, m.learner) for m in etcd.members(new_eps)) == [(n, False)
                                                                           for n in new]
    assert all(e.healthy for e in etcd.health(new_eps))
    assert sorted(cloud.servers) == new
    assert cd.state.upgrade is None
    # master-4 started with the list as the cluster had it in master-1's turn: never the lost
    # member (the rendered list named it)
    said = (cloud.tmp / "cps-master-4.log").read_text()
    got = next(ln for ln in said.splitlines() if "the cluster lists" in ln)
    assert "cps-master-1=" not in got and "cps-master-2=" in got, got
    assert len(writer.acked) > 50
    assert [(ep, writer.missing(etcd, ep)) for ep in new_eps] == [(ep, []) for ep in new_eps]

    # two of three lost: the one left has no quorum (nor health: no leader) and cannot commit
    # a removal; refused, naming the way back
    cloud.delete_node("cps-master-3")
    cloud.delete_node("cps-master-4")
    with pytest.raises(EtcdAbort, match=r"cps-master-5 .* not healthy either.*k8simg restore"):
        remove_lost_members(etcd, [nodes["cps-master-3"], nodes["cps-master-4"]],
                            [client_url(nodes["cps-master-5"])])
    assert len(etcd.members([client_url(nodes["cps-master-5"])])) == 3


def test_an_image_without_the_join_step_is_refused_a_surge(tmp_path):
    """An image whose manifest does not say its etcd waits for its turn (baked before
    etcd-join): a master booted ahead would start etcd with a list etcd refuses, for good. The
    upgrade refuses before anything is created (exit 4); a surge of 1 is not refused."""
    from k8simg.ops.upgrade import UpgradeAborted

    cd = write_cluster(tmp_path / "old", topology="ha",
                       workers={"count": 0, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": False}, network=NET)
    cluster_pki(cd, cd.load()).ensure()

    class OldImage(CloudDouble):
        def prepare(self, nodes) -> Preflight:
            return Preflight([], ImageFacts(self.image, "k8simg-2026-11", has_kubernetes=False))

    cloud = OldImage(cd, KubeApiDouble(), "img-new")
    for node in cd.nodes(cd.load()):
        cloud.place(node, "img-old")
    with pytest.raises(UpgradeAborted) as e:
        Upgrade(Deployment(cd, cloud), control_plane_surge=2).run()
    assert e.value.exit_code == 4
    assert "--control-plane-surge 2: the image k8simg-2026-11 does not say" in str(e.value)
    assert cloud.log == [] and cd.state.upgrade is None  # nothing created, nothing begun
    # a surge of 1 goes past this check (and on to etcd, which this double cannot reach)
    with pytest.raises(UpgradeAborted) as e:
        Upgrade(Deployment(cd, cloud), control_plane_surge=1).run()
    assert "etcd cannot be reached" in str(e.value)
