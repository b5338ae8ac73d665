"""`deploy` after `workers.count` shrinks: the workers beyond it are all cordoned, then each
drained through the Eviction API (PodDisruptionBudgets honoured) before its server is deleted;
where the Kubernetes API cannot be asked, nothing is deleted unless --skip-unobservable, which
says so. The cloud is the test double of tests/ops/upgrade/cloud_double.py and the Kubernetes API
the one of tests/ops/upgrade/kubeapi.py (both named as such: no API server runs here); the real
clouds' scale-down is in tests/ops/deploy/test_openstack.py and tests/clouds/local/test_network.py."""

import re

import pytest

from k8simg.errors import K8simgError
from k8simg.model.plan import make_node
from k8simg.ops.deploy import Deployment
from k8simg.pki import cluster_pki
from tests.conftest import edit_cluster, write_cluster
from tests.ops.upgrade.cloud_double import CloudDouble
from tests.ops.upgrade.kubeapi import KubeApiDouble

WORKERS = 4


def scaled_down(tmp_path, api, cloud_name: str = "local") -> tuple:
    """A cluster deployed with 4 workers, each running one pod of a ReplicaSet whose budget
    allows one pod down; then workers.count set to 2."""
    cd = write_cluster(tmp_path / "sd", cloud=cloud_name, topology="one-master",
                       masters__count=1,
                       workers={"count": WORKERS, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": False})
    cluster_pki(cd, cd.load()).ensure()
    cloud = CloudDouble(cd, api, "img")
    for node in cd.nodes(cd.load()):
        cloud.place(node, "img")
    api.nodes["sd-master-0"]["spec"]["unschedulable"] = True  # as a tainted control plane
    workers = [f"sd-worker-{i}" for i in range(WORKERS)]
    api.add_replicaset("default", "web", {"app": "web"}, workers)
    api.add_pdb("default", "web", {"app": "web"}, min_available=WORKERS - 1)
    edit_cluster(cd, workers__count=2)
    cloud.cfg = cd.load()  # as the next deploy run reads it
    return cd, cloud


def test_surplus_workers_are_drained_before_deletion(tmp_path):
    with KubeApiDouble(termination_s=0.05, start_s=0.3) as api:
        # The scheduler picks the last schedulable node: without every leaving worker cordoned
        # first, sd-worker-3's evicted pod would land on sd-worker-2, the next to go.
        api.pick = lambda names: names[-1]
        cd, cloud = scaled_down(tmp_path, api)
        on_delete = {}
        delete = cloud.delete_node

        def delete_node(name):
            with api.lock:
                on_delete[name] = sorted(k for k, p in api.pods.items()
                                         if p["spec"]["nodeName"] == name)
            delete(name)

        cloud.delete_node = delete_node
        result = Deployment(cd, cloud, kube=api.client).deploy()
        with api.lock:
            placed = sorted(p["spec"]["nodeName"] for p in api.pods.values())

    deletes = [(c.name, c.detail) for c in result.changes if c.action == "delete"]
    assert [name for name, _ in deletes] == ["sd-worker-3", "sd-worker-2"]  # newest first
    assert deletes[0][1] == "beyond workers.count; drained: 1 pod(s) evicted"
    # The budget (3 of 4 up) refuses sd-worker-2's eviction until sd-worker-3's pod is back
    # up elsewhere (unless the drain got there that late).
    assert re.fullmatch(r"beyond workers.count; drained: 1 pod\(s\) evicted(, \d+ "
                        r"eviction\(s\) waited for a disruption budget)?", deletes[1][1])
    assert [code for _, code in api.evictions].count(429) >= 1 or "waited" not in deletes[1][1]
    assert on_delete == {"sd-worker-3": [], "sd-worker-2": []}  # empty when deleted
    assert sorted(s.name for s in cloud.nodes()) == ["sd-master-0", "sd-worker-0",
                                                     "sd-worker-1"]
    # Two evictions that went through, one per leaving pod: nothing evicted twice.
    assert [code for _, code in api.evictions].count(201) == 2
    assert placed == ["sd-worker-0", "sd-worker-1", "sd-worker-1", "sd-worker-1"]
    assert api.min_available["web"] >= WORKERS - 1
    assert api.unexpected == []
    assert not any("without draining" in w for w in result.warnings)


def test_plan_says_they_will_be_drained(tmp_path):
    with KubeApiDouble() as api:
        cd, cloud = scaled_down(tmp_path, api)
        cloud.ledger.dry_run = True
        result = Deployment(cd, cloud, kube=api.client).deploy()
        assert api.evictions == []
    assert [(c.action, c.name, c.detail) for c in result.changes] == [
        ("delete", "sd-worker-3", "beyond workers.count; to be drained first"),
        ("delete", "sd-worker-2", "beyond workers.count; to be drained first")]
    assert len(cloud.servers) == WORKERS + 1


@pytest.mark.parametrize("cloud_name,why", [
    ("local", "the local cloud's API is inside its network namespace"),
    ("k8simg-test", "the API does not answer")])  # its admin.conf leads nowhere
def test_no_api_no_deletion_unless_skipped_and_said(tmp_path, cloud_name, why):
    """The scale-down step alone (deploy's last; a whole deploy on the OpenStack test cloud is
    in tests/ops/deploy/test_openstack.py)."""
    with KubeApiDouble() as api:
        cd, cloud = scaled_down(tmp_path, api, cloud_name)
        with pytest.raises(K8simgError) as e:
            Deployment(cd, cloud).remove_surplus()
        assert "sd-worker-3, sd-worker-2" in str(e.value)
        assert f"cannot be asked to drain them ({why}" in str(e.value)
        assert "--skip-unobservable" in str(e.value)
        assert len(cloud.servers) == WORKERS + 1  # nothing deleted
        assert cloud.ledger.changes == []

        skipping = Deployment(cd, cloud, skip_unobservable=True)
        skipping.remove_surplus()
    assert [(c.name, c.detail) for c in cloud.ledger.changes if c.action == "delete"] == [
        ("sd-worker-3", "beyond workers.count; not drained"),
        ("sd-worker-2", "beyond workers.count; not drained")]
    said = [w for w in skipping.warnings if "without draining" in w]
    assert len(said) == 1 and said[0].startswith(
        f"workers sd-worker-3, sd-worker-2 removed without draining: {why}")
    assert sorted(cloud.servers) == ["sd-master-0", "sd-worker-0", "sd-worker-1"]


def test_after_an_upgrade_deploy_still_scales_the_workers(tmp_path):
    """Once an upgrade (or a restore) has recorded the node set, workers.count still rules its
    workers: deploy removes the newest first and makes new ones at the next index, records the
    set before it changes anything, and leaves the masters as the upgrade left them. (The
    recorded set used to be taken as it was: a worker added after an upgrade was never made,
    and said nothing; the local lifecycle test found it.)"""
    with KubeApiDouble(termination_s=0.05, start_s=0.3) as api:
        cd, cloud = scaled_down(tmp_path, api)  # 4 workers up, workers.count now 2
        cfg = cd.load()
        # as an upgrade leaves it: sd-master-0 replaced by sd-master-1, the set recorded
        new_master = make_node(cfg, "master", 1)
        cloud.delete_node("sd-master-0")
        cloud.place(new_master, "img")
        api.nodes["sd-master-1"]["spec"]["unschedulable"] = True
        cd.save_nodes([new_master, *(make_node(cfg, "worker", i) for i in range(WORKERS))])

        result = Deployment(cd, cloud, kube=api.client).deploy()
        assert [(c.action, c.name) for c in result.changes if c.kind == "server"] == [
            ("delete", "sd-worker-3"), ("delete", "sd-worker-2")]
        assert cd.state.node_keys == ["master-1", "worker-0", "worker-1"]

        edit_cluster(cd, workers__count=3)
        cloud.cfg = cd.load()
        booted = len(cloud.log)
        Deployment(cd, cloud, kube=api.client).deploy()
    # (the double boots without a ledger entry: its log says what it booted)
    assert cloud.log[booted:] == [("boot", "sd-worker-2", 3)]  # not sd-master-0 again
    assert cd.state.node_keys == ["master-1", "worker-0", "worker-1", "worker-2"]
    assert sorted(s.name for s in cloud.nodes()) == [
        "sd-master-1", "sd-worker-0", "sd-worker-1", "sd-worker-2"]
