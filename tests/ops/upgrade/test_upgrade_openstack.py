"""`k8simg upgrade` on the real OpenStack test cloud: an HA cluster's servers rolled onto a new
Glance image, masters one at a time with the load balancer's pool following, workers surged;
resumable after SIGKILL; exit codes for CI. The test cloud's computes run nothing (Nova's
FakeDriver), so etcd and the Kubernetes API cannot be asked there: the upgrade needs
``--skip-unobservable`` and names those gates as skipped (the etcd choreography itself is
tested against real etcd in test_etcd_roll.py)."""

import base64
import json
import os
import signal
import subprocess
import sys

import pytest

from k8simg.ops.deploy import Deployment
from tests.conftest import edit_cluster
from tests.ops.deploy.test_openstack import (  # noqa: F401 (fixtures)
    IMAGE,
    cluster,
    destroyed_when_failed,
    image,
    listing,
    nothing_left,
)

pytestmark = pytest.mark.slow

NEW_IMAGE = "k8simg-upgrade-test-new"
SKEW_IMAGE = "k8simg-upgrade-test-1-34"  # carries (its properties say) Kubernetes 1.34.5


@pytest.fixture(scope="module")
def new_image(test_cloud, tmp_path_factory):
    return test_cloud.image(NEW_IMAGE, tmp_path_factory.mktemp("image2"), size="2G")


def upgrade(cd, *args, kill_after: tuple[str, int] | None = None):
    """Run `k8simg upgrade -o json`; with ``kill_after=(event, n)``, SIGKILL it right after
    the n-th such event."""
    p = subprocess.Popen([sys.executable, "-m", "k8simg", "upgrade", str(cd.path), "-o", "json",
                          *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=os.environ.copy())
    events = []
    for line in p.stdout:
        events.append(json.loads(line))
        if kill_after and [e["event"] for e in events].count(kill_after[0]) == kill_after[1]:
            p.send_signal(signal.SIGKILL)
            break
    p.wait()
    return p.returncode, events, p.stderr.read()


def hosts_of(conn, names):
    admin_view = {s.name: s for s in conn.compute.servers(details=True, all_projects=True)}
    return [admin_view[n].compute_host or admin_view[n].hypervisor_hostname for n in names]


def test_ha_servers_rolled_onto_a_new_image(test_cloud, os_cloud, image, new_image,  # noqa: F811
                                            tmp_path):
    conn = test_cloud.member()
    # 20-day leaves, so that a renewal has something to renew later on
    cd = cluster(tmp_path, "up", pki__cert_validity_days=20)
    Deployment.for_cluster(cd).deploy()
    edit_cluster(cd, image=NEW_IMAGE)

    plan = subprocess.run([sys.executable, "-m", "k8simg", "upgrade", str(cd.path), "--plan",
                           "-o", "json"], capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    assert [r["node"] for r in json.loads(plan.stdout)["replace"]] == [
        "up-master-0", "up-master-1", "up-master-2", "up-worker-0", "up-worker-1", "up-bastion"]

    # Without leave to skip what cannot be observed, it refuses and changes nothing.
    before = listing(conn, cd)
    code, _, err = upgrade(cd)
    assert code == 4, err
    assert "etcd cannot be reached from here" in err
    assert listing(conn, cd) == before

    # Killed in the middle of the second master's replacement, then run again.
    code, events, err = upgrade(cd, "--skip-unobservable", kill_after=("lb-member-added", 2))
    assert code == -signal.SIGKILL, err[-3000:]
    assert [e["node"] for e in events if e["event"] == "deleted"] == ["up-master-0"]
    code, events, err = upgrade(cd, "--skip-unobservable")
    assert code == 0, err
    assert events[-1]["event"] == "done"
    assert [tuple(r) for r in events[-1]["replaced"]] == [  # in the order of the plan
        ("up-master-1", "up-master-4"), ("up-master-2", "up-master-5"),
        ("up-worker-0", "up-worker-2"), ("up-worker-1", "up-worker-3"),
        ("up-bastion", "up-bastion")]  # in place, last: its name, address and FIP are fixed
    assert {"etcd", "kubernetes-api", "node-ready", "drain"} <= set(
        events[-1]["skipped_gates"])

    # Every node on the new image, each old one replaced exactly once, nothing leaked.
    masters = ["up-master-3", "up-master-4", "up-master-5"]
    workers = ["up-worker-2", "up-worker-3"]
    got = listing(conn, cd)
    assert got["server"] == {*masters, *workers, "up-bastion"}
    assert got["volume"] == {f"{n}-storage" for n in masters + workers}
    assert got["port"] == {f"{n}-port" for n in masters + workers} | {"up-bastion-port",
                                                                       "up-api-vip"}
    images = {s.name: (s.metadata or {}).get("k8simg-image") for s in conn.compute.servers()
              if s.name in got["server"]}
    assert images == {n: new_image for n in got["server"]}
    # The operators' address stayed and now leads to the new bastion.
    fip = next(conn.network.ips(
        description=f"k8simg cluster up: bastion k8simg-uid={cd.state.uid}"))
    port = next(conn.network.ports(name="up-bastion-port"))
    assert fip.port_id == port.id and fip.floating_ip_address == cd.state.bastion_floating_ip
    lb = conn.load_balancer
    pool = next(lb.pools(name="up-api-masters"))
    assert sorted(m.name for m in lb.members(pool)) == masters
    admin = test_cloud.admin()
    assert len(set(hosts_of(admin, masters))) == 3  # anti-affinity held through the surge
    # CI: nothing left to do is its own exit code; deploy agrees there is nothing to change.
    code, events, _ = upgrade(cd, "--skip-unobservable")
    assert (code, events[-1]["event"]) == (10, "nothing-to-do")
    assert Deployment.for_cluster(cd, dry_run=True).deploy().changes == []

    # Day 2: a config change reaches the nodes it touches, by replacement. An extra API name
    # is in the masters' serving certificate only.
    edit_cluster(cd, api__extra_sans=["api.example.com"])
    rows = plan_rows(cd)
    assert [r["node"] for r in rows] == masters
    assert all(r["from"] == r["to"] == new_image and
               "/etc/kubernetes/pki/apiserver.crt" in r["config_changes"] for r in rows), rows
    code, events, err = upgrade(cd, "--skip-unobservable")
    assert code == 0, err
    assert [r[0] for r in events[-1]["replaced"]] == masters
    new_masters = [r[1] for r in events[-1]["replaced"]]
    assert new_masters == ["up-master-6", "up-master-7", "up-master-8"]
    # Each new server booted with its config as it renders now (the same files; only the
    # etcd membership it joined with differs, which a running member never reads again), and
    # keeps that config's digest.
    from k8simg.clouds.base import config_of
    from k8simg.ignition.render import render_context, render_user_data

    ctx = render_context(cd)
    admin.compute.default_microversion = "2.67"
    for node in [n for n in ctx.nodes if n.name in new_masters]:
        server = next(admin.compute.servers(name=f"^{node.name}$", all_projects=True))
        server = admin.compute.get_server(server.id)
        booted = config_of(base64.b64decode(server.user_data))
        assert booted == config_of(render_user_data(ctx, node)), node.name
        assert server.metadata["k8simg-config"] == booted
    assert plan_rows(cd) == []
    # A setting every kubelet reads (the cluster's DNS domain): every node but the bastion.
    edit_cluster(cd, network__dns_domain="k8s.example")
    assert [r["node"] for r in plan_rows(cd)] == new_masters + workers
    edit_cluster(cd, network__dns_domain="cluster.local")
    assert plan_rows(cd) == []

    # A new cloud credential reaches only the add-on values the masters apply (the cloud
    # controller manager's and Cinder CSI's): no worker is replaced.
    from k8simg.model.credential import FILE, CloudCredential

    saved = (cd.path / FILE).read_bytes()
    cred = CloudCredential.load(cd.path)
    CloudCredential(cred.auth_url, cred.application_credential_id, "another secret",
                    cred.region).save(cd.path)
    rows = plan_rows(cd)
    assert [r["node"] for r in rows] == new_masters
    assert all(r["config_changes"] == ["/etc/k8simg/addons.yaml"] for r in rows), rows
    (cd.path / FILE).write_bytes(saved)
    assert plan_rows(cd) == []

    # Kubernetes' version skew policy, against the image as Glance describes it: refused
    # (exit 4) before anything changes.
    def skew_refusal(*args) -> str:
        before = listing(conn, cd)
        r = subprocess.run([sys.executable, "-m", "k8simg", "upgrade", str(cd.path), "--plan",
                            *args], capture_output=True, text=True)
        assert r.returncode == 4, (r.returncode, r.stderr)
        assert "version skew policy refuses" in r.stderr and "Traceback" not in r.stderr
        assert listing(conn, cd) == before
        return r.stderr

    older = test_cloud.image(SKEW_IMAGE, tmp_path, meta={
        "k8simg_kubernetes_binaries": "included", "k8simg_kubernetes_version": "1.34.5"})
    edit_cluster(cd, image=SKEW_IMAGE)
    assert f"image {SKEW_IMAGE} carries Kubernetes 1.34.5, cluster.yaml's kubernetes_version " \
           "is 1.35.2" in skew_refusal()
    edit_cluster(cd, kubernetes_version="1.34.5")
    assert "1.35.2 -> 1.34.5 is a downgrade: refused unless --allow-downgrade" in \
        skew_refusal()
    assert [r["to"] for r in plan_rows(cd, "--allow-downgrade")] == [older] * 6  # planned only
    edit_cluster(cd, image=NEW_IMAGE, kubernetes_version="1.35.2")
    cd.state.set_kubernetes_version("1.33.7")
    assert "1.33.7 -> 1.35.2 skips a minor version" in skew_refusal()
    cd.state.set_kubernetes_version("1.35.2")
    assert plan_rows(cd) == []

    # Certificate renewal from CI: with 365-day leaves asked for, the 20-day ones expire
    # within 30 days; the renewal reissues them and replaces every node carrying one.
    def expiring_within_30() -> int:
        return subprocess.run([sys.executable, "-m", "k8simg", "pki", "check-expiration",
                               str(cd.path), "--days", "30"], capture_output=True).returncode

    assert expiring_within_30() == 3
    edit_cluster(cd, pki__cert_validity_days=365)
    rows = plan_rows(cd, "--renew-certs-within", "30")
    assert [r["node"] for r in rows] == new_masters + workers  # the bastion carries none
    code, events, err = upgrade(cd, "--skip-unobservable", "--renew-certs-within", "30")
    assert code == 0, err
    renewed = next(e for e in events if e["event"] == "certificates-renewed")
    assert "apiserver@up-master-6" in renewed["certificates"], renewed
    assert [r[0] for r in events[-1]["replaced"]] == new_masters + workers
    assert expiring_within_30() == 0
    assert plan_rows(cd, "--renew-certs-within", "30") == []

    assert Deployment.for_cluster(cd).destroy().left == []
    nothing_left(conn, cd)


def plan_rows(cd, *args) -> list[dict]:
    plan = subprocess.run([sys.executable, "-m", "k8simg", "upgrade", str(cd.path), "--plan",
                           "-o", "json", *args], capture_output=True, text=True)
    assert plan.returncode in (0, 10), plan.stderr
    return json.loads(plan.stdout)["replace"]
