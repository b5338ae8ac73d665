"""Draining a worker before it is replaced, with the official Kubernetes client, against the
stateful Kubernetes API test double in tests/ops/upgrade/kubeapi.py (named as such: no real API
server runs on this machine)."""

import pytest

from k8simg.ops.drain import DrainError, drain, wait_ready
from tests.ops.upgrade.kubeapi import PDB_MESSAGE, KubeApiDouble


@pytest.fixture
def api():
    with KubeApiDouble() as double:
        for n in ("w0", "w1", "w2"):
            double.add_node(n)
        yield double
        assert double.unexpected == [], "requests the double does not serve"


def test_drain_respects_disruption_budgets_and_leaves_daemonsets(api):
    # web: 3 replicas, two of them on w0; at least 2 must stay available.
    api.add_replicaset("default", "web", {"app": "web"}, ["w0", "w0", "w1"])
    api.add_pdb("default", "web", {"app": "web"}, min_available=2)
    api.add_pod("kube-system", "flannel-abc", "w0", owner=("DaemonSet", "flannel"))
    api.add_pod("kube-system", "kube-proxy-w0", "w0",
                annotations={"kubernetes.io/config.mirror": "x"})
    api.add_pod("default", "lonely", "w0")  # no controller
    api.add_pod("default", "job-done", "w0", owner=("Job", "once"), phase="Succeeded")
    with api.client() as c:
        result = drain(c, "w0", timeout=30, poll=0.05)
    assert api.nodes["w0"]["spec"]["unschedulable"] is True
    assert sorted(result.evicted) == ["default/lonely", "default/web-0", "default/web-1"]
    assert sorted(result.left_alone) == ["kube-system/flannel-abc", "kube-system/kube-proxy-w0"]
    assert result.unmanaged == ["default/lonely"]
    # The budget was enforced and honoured: refused at least once, never broken.
    assert result.refusals >= 1
    assert any(code == 429 for _, code in api.evictions)
    assert api.min_available["web"] >= 2
    # Only what is left alone (and the finished pod) is still on w0; web runs elsewhere.
    on_w0 = sorted(k for k, p in api.pods.items() if p["spec"]["nodeName"] == "w0")
    assert on_w0 == ["default/job-done", "kube-system/flannel-abc", "kube-system/kube-proxy-w0"]
    web = [p for p in api.pods.values() if p["metadata"]["labels"].get("app") == "web"]
    assert len(web) == 3 and all(p["spec"]["nodeName"] != "w0" for p in web)


def test_a_budget_that_never_allows_it_times_out_naming_the_pod(api):
    api.add_replicaset("db", "pg", {"app": "pg"}, ["w0", "w1", "w2"])
    api.add_pdb("db", "pg", {"app": "pg"}, min_available=3)
    with api.client() as c, pytest.raises(DrainError) as e:
        drain(c, "w0", timeout=1.5, poll=0.1)
    assert "w0: not drained after 2 s; still there: db/pg-0" in str(e.value)
    assert PDB_MESSAGE in str(e.value)
    assert api.nodes["w0"]["spec"]["unschedulable"] is True  # stays cordoned
    assert "db/pg-0" in api.pods  # nothing was forced


def test_wait_ready(api):
    api.add_node("w3", ready=False)
    api.after(0.5, lambda: api.set_ready("w3"))
    with api.client() as c:
        wait_ready(c, "w3", timeout=10, poll=0.1)
        with pytest.raises(DrainError, match=r"node w9 not Ready after 1 s: not registered"):
            wait_ready(c, "w9", timeout=1, poll=0.1)
