"""Workers roll in batches of maxSurge + maxUnavailable, as a Deployment's pods do: capacity
never goes below (workers - maxUnavailable) nor above (workers + maxSurge), every old worker is
drained (PodDisruptionBudgets honoured) and replaced exactly once, also when the run is killed
mid-batch and run again. The cloud is the test double in tests/ops/upgrade/cloud_double.py and the
Kubernetes API the one in tests/ops/upgrade/kubeapi.py (both named as such); the real clouds' worker
path runs in the OpenStack test-cloud upgrade test."""

import pytest

from k8simg.ops.deploy import Deployment
from k8simg.ops.upgrade import Upgrade, UpgradeAborted
from k8simg.pki import cluster_pki
from tests.conftest import write_cluster
from tests.ops.upgrade.cloud_double import CloudDouble, Killed
from tests.ops.upgrade.kubeapi import KubeApiDouble

WORKERS = 4


def cluster(tmp_path):
    cd = write_cluster(tmp_path / "wb", topology="one-master", masters__count=1,
                       workers={"count": WORKERS, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": False})
    cluster_pki(cd, cd.load()).ensure()
    return cd


def deployed(cd, api, **kw) -> CloudDouble:
    cloud = CloudDouble(cd, api, "img-new", **kw)
    for node in cd.nodes(cd.load()):
        cloud.place(node, "img-new" if node.role == "master" else "img-old")
    workers = [n.name for n in cd.nodes(cd.load()) if n.role == "worker"]
    api.add_replicaset("default", "web", {"app": "web"}, workers)
    api.add_pdb("default", "web", {"app": "web"}, min_available=WORKERS - 1)
    return cloud


def run(cd, cloud, api, surge, unavailable, events):
    up = Upgrade(Deployment(cd, cloud), max_surge=surge, max_unavailable=unavailable,
                 timeout=30, kube=api.client, events=lambda e, d: events.append((e, d)))
    return up.run()


def check_rolled(cd, cloud, api, events, surge, unavailable):
    workers = {s.name: s.image for s in cloud.nodes() if s.role == "worker"}
    assert workers == {f"wb-worker-{i}": "img-new" for i in range(WORKERS, 2 * WORKERS)}
    assert sorted(n.name for n in cd.nodes(cd.load()) if n.role == "worker") == sorted(workers)
    counts = [c for _, _, c in cloud.log]
    assert min(counts) >= WORKERS - unavailable and max(counts) <= WORKERS + surge, cloud.log
    # The allowances are used, not just respected: the roll is as fast as it may be.
    assert min(counts) == WORKERS - unavailable
    assert max(counts) == WORKERS + surge
    # Every old worker drained (a re-run killed between drain and delete drains it again:
    # a no-op on a cordoned, empty node) and deleted exactly once.
    drained = {d["node"] for e, d in events if e == "drained"}
    assert sorted(drained) == [f"wb-worker-{i}" for i in range(WORKERS)]
    deleted = [name for verb, name, _ in cloud.log if verb == "delete"]
    assert sorted(deleted) == [f"wb-worker-{i}" for i in range(WORKERS)]
    assert api.min_available["web"] >= WORKERS - 1  # the budget held throughout
    assert api.unexpected == []
    assert cd.state.upgrade is None


@pytest.mark.parametrize("surge,unavailable", [(1, 0), (0, 1), (2, 1)])
def test_capacity_stays_within_surge_and_unavailable(tmp_path, surge, unavailable):
    cd = cluster(tmp_path)
    events = []
    with KubeApiDouble(termination_s=0.05, start_s=0.1) as api:
        cloud = deployed(cd, api)
        result = run(cd, cloud, api, surge, unavailable, events)
        check_rolled(cd, cloud, api, events, surge, unavailable)
    assert result.exit_code == 0 and result.skipped_gates == []
    assert len(result.replaced) == WORKERS
    # maxUnavailable: the old node goes before its replacement boots; otherwise after.
    order = [(verb, name) for verb, name, _ in cloud.log]
    first_delete = order.index(("delete", "wb-worker-0"))
    first_boot = order.index(("boot", "wb-worker-4"))
    assert (first_delete < first_boot) == (unavailable > 0)


@pytest.mark.parametrize("kill", [("boot", "wb-worker-4"), ("delete", "wb-worker-1")])
def test_killed_mid_batch_and_rerun(tmp_path, kill):
    """Killed after an old worker left but before its replacement booted (or mid-batch): the
    re-run first brings the replacement up, then goes on; nothing is replaced twice and the
    capacity bounds hold across both runs."""
    cd = cluster(tmp_path)
    events = []
    with KubeApiDouble(termination_s=0.05, start_s=0.1) as api:
        cloud = deployed(cd, api, kill_before=kill)
        with pytest.raises(Killed):
            run(cd, cloud, api, 1, 1, events)
        assert cd.state.upgrade.replacing  # the chosen replacements are on record
        run(cd, cloud, api, 1, 1, events)
        check_rolled(cd, cloud, api, events, 1, 1)
    boots = [name for verb, name, _ in cloud.log if verb == "boot"]
    assert sorted(boots) == [f"wb-worker-{i}" for i in range(WORKERS, 2 * WORKERS)]


def test_both_zero_is_refused(tmp_path):
    cd = cluster(tmp_path)
    with KubeApiDouble() as api, pytest.raises(UpgradeAborted, match="cannot both be 0"):
        Upgrade(Deployment(cd, deployed(cd, api)), max_surge=0, max_unavailable=0)


def test_bastion_replaced_in_place_last_and_after_a_kill(tmp_path):
    """The bastion's name, address and floating IP are the operators' fixed way in: it is
    replaced in place after every worker; a run killed between its deletion and its new boot
    boots it on the next run."""
    cd = write_cluster(tmp_path / "wb", topology="one-master", masters__count=1,
                       workers={"count": 1, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": True, "flavor": "b"})
    cluster_pki(cd, cd.load()).ensure()
    events = []
    with KubeApiDouble(termination_s=0.05, start_s=0.1) as api:
        cloud = CloudDouble(cd, api, "img-new", kill_before=("boot", "wb-bastion"))
        for node in cd.nodes(cd.load()):
            cloud.place(node, "img-new" if node.role == "master" else "img-old")
        with pytest.raises(Killed):
            run(cd, cloud, api, 1, 0, events)
        assert "wb-bastion" not in {s.name for s in cloud.nodes()}
        result = run(cd, cloud, api, 1, 0, events)
    assert {s.name: s.image for s in cloud.nodes()} == {
        "wb-master-0": "img-new", "wb-worker-1": "img-new", "wb-bastion": "img-new"}
    order = [(verb, name) for verb, name, _ in cloud.log]
    assert order == [("boot", "wb-worker-1"), ("delete", "wb-worker-0"),
                     ("delete", "wb-bastion"), ("boot", "wb-bastion")]
    assert ("resume", {"node": "wb-bastion", "with": "wb-bastion"}) in events
    assert result.exit_code == 0 and cd.state.upgrade is None


def test_a_run_killed_during_the_bastion_boots_it_before_anything_is_asked(tmp_path):
    """Killed between the old bastion's deletion and the new one's boot; the next pipeline
    names a newer image, so the masters are stale again and their etcd is reached through the
    bastion. The interrupted replacement is finished first (the bastion boots), then the run
    refuses, with nothing else changed, on what it cannot observe (the double has no way into
    the nodes' network): the cluster is not left without its way in."""
    cd = write_cluster(tmp_path / "wb", topology="one-master", masters__count=1,
                       workers={"count": 1, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": True, "flavor": "b"})
    cluster_pki(cd, cd.load()).ensure()
    with KubeApiDouble(termination_s=0.05, start_s=0.1) as api:
        cloud = CloudDouble(cd, api, "img-new", kill_before=("boot", "wb-bastion"))
        for node in cd.nodes(cd.load()):
            cloud.place(node, "img-new" if node.role == "master" else "img-old")
        with pytest.raises(Killed):
            run(cd, cloud, api, 1, 0, [])
        assert "wb-bastion" not in {s.name for s in cloud.nodes()}
        cloud.image = "img-newer"
        with pytest.raises(UpgradeAborted, match="etcd cannot be reached from here"):
            run(cd, cloud, api, 1, 0, [])
        assert {s.name: s.image for s in cloud.nodes()} == {
            "wb-master-0": "img-new", "wb-worker-1": "img-new", "wb-bastion": "img-newer"}
