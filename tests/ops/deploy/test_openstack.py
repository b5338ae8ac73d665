"""``k8simg deploy`` / ``destroy`` against the real OpenStack test cloud (tests/cloud): every
assertion lists the cloud, never counts calls."""

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from cryptography import x509

from k8simg.clouds.base import CloudError, PreflightError
from k8simg.clouds.openstack.connect import cluster_tag, connect
from k8simg.errors import K8simgError
from k8simg.ignition.render import render_context, render_user_data
from k8simg.model.plan import initial_nodes
from k8simg.ops.deploy import Deployment
from tests.conftest import edit_cluster as edit
from tests.conftest import write_cluster

pytestmark = pytest.mark.slow

IMAGE = "k8simg-deploy-test"


@pytest.fixture(scope="module")
def image(test_cloud, tmp_path_factory):
    """A small real qcow2 in Glance, owned by the test project, with k8simg's properties."""
    return test_cloud.image(IMAGE, tmp_path_factory.mktemp("image"),
                            meta={"k8simg_kubernetes_binaries": "included"})


def cluster(tmp_path, name, topology="ha", masters=3, workers=2, bastion=True, **over):
    settings = {"cloud": "k8simg-test", "image": IMAGE, "topology": topology,
                "masters": {"count": masters, "flavor": "k8s.small", "volume_size_gb": 10},
                "workers": {"count": workers, "flavor": "k8s.small", "volume_size_gb": 10},
                "bastion__enabled": bastion, "bastion__flavor": "k8s.tiny",
                "openstack__external_network": "public"}
    return write_cluster(tmp_path / name, **{**settings, **over})


def listing(conn, name: str) -> dict[str, set[str]]:
    """Everything in the cloud that carries the cluster's tag (or, for server groups, which
    have none, its name), by kind."""
    tag = cluster_tag(name)
    n, c, b, lb = conn.network, conn.compute, conn.block_storage, conn.load_balancer
    return {
        "network": {x.name for x in n.networks(tags=[tag])},
        "subnet": {x.name for x in n.subnets(tags=[tag])},
        "router": {x.name for x in n.routers(tags=[tag])},
        "security_group": {x.name for x in n.security_groups(tags=[tag])},
        "port": {x.name for x in n.ports(tags=[tag])},
        "floating_ip": {x.description for x in n.ips(tags=[tag])},
        "server": {x.name for x in c.servers(tags=tag)},
        "volume": {x.name for x in b.volumes() if (x.metadata or {}).get(tag) == "true"},
        "server_group": {g.name for g in c.server_groups() if g.name.startswith(f"{name}-")},
        "load_balancer": {x.name for x in lb.load_balancers(tags=tag)},
    }


def expected(name, masters, workers, bastion) -> dict[str, set[str]]:
    nodes = [f"{name}-master-{i}" for i in range(masters)] + \
            [f"{name}-worker-{i}" for i in range(workers)]
    everything = nodes + ([f"{name}-bastion"] if bastion else [])
    groups = {"nodes", "masters"} | ({"workers"} if workers else set()) | \
        ({"bastion"} if bastion else set())
    return {
        "network": {f"{name}-net"}, "subnet": {f"{name}-subnet"}, "router": {f"{name}-router"},
        "security_group": {f"{name}-{g}" for g in groups},
        "port": {f"{n}-port" for n in everything} | {f"{name}-api-vip"},
        "floating_ip": {f"{name}-api"} | ({f"{name}-bastion"} if bastion else set()),
        "server": set(everything), "volume": {f"{n}-storage" for n in nodes},
        "server_group": {f"{name}-masters"} | ({f"{name}-workers"} if workers else set()),
        "load_balancer": {f"{name}-api"},
    }


def nothing_left(conn, name) -> None:
    assert all(not v for v in listing(conn, name).values()), listing(conn, name)
    # nor anything untagged that the cluster made
    assert not [p for p in conn.network.ports() if (p.name or "").startswith(f"{name}-")]
    assert not [v for v in conn.block_storage.volumes() if v.name.startswith(f"{name}-")]
    assert not list(conn.identity.application_credentials(conn.current_user_id,
                                                          name=f"{name}-k8simg"))


def test_ha_deploy_is_exact_idempotent_and_destroyed(test_cloud, os_cloud, image, tmp_path):
    cd = cluster(tmp_path, "ha")
    result = Deployment.for_cluster(cd, None).deploy()
    assert result.changes
    conn = connect(os_cloud)
    assert listing(conn, "ha") == expected("ha", 3, 2, True)

    admin = connect("k8simg-test-admin")
    admin.compute.default_microversion = "2.67"
    servers = {s.name: admin.compute.get_server(s.id) for s in conn.compute.servers(tags=
                                                                                   cluster_tag("ha"))}
    assert all(s.status == "ACTIVE" for s in servers.values())
    masters = [s for name, s in servers.items() if "-master-" in name]
    assert len({s.compute_host for s in masters}) == 3  # anti-affinity over three hosts
    ctx = render_context(cd)
    for node in initial_nodes(cd.load()):
        s = servers[node.name]
        assert s.has_config_drive in (True, "True")
        assert base64.b64decode(s.user_data) == render_user_data(ctx, node), node.name
        port = conn.network.find_port(f"{node.name}-port")
        assert port.fixed_ips[0]["ip_address"] == str(node.address)
        if node.role != "bastion":
            assert port.allowed_address_pairs[0]["ip_address"] == "10.244.0.0/16"

    lb = conn.load_balancer.find_load_balancer("ha-api")
    assert lb.provisioning_status == "ACTIVE" and lb.vip_address == "10.0.0.5"
    pool = conn.load_balancer.find_pool("ha-api-masters")
    members = {m.name: m.address for m in conn.load_balancer.members(pool)}
    assert members == {n.name: str(n.address) for n in initial_nodes(cd.load())
                       if n.role == "master"}
    assert pool.health_monitor_id
    fip = next(conn.network.ips(tags=[cluster_tag("ha")], description="ha-api"))
    vip = conn.network.find_port("ha-api-vip")
    assert fip.port_id == vip.id
    # The API's floating IP is in the API server's certificate and the admin kubeconfig
    assert result.api_endpoint == f"https://{fip.floating_ip_address}:6443"
    for i in range(3):
        cert = x509.load_pem_x509_certificate(
            (cd.pki_dir / "nodes" / f"ha-master-{i}" / "apiserver.crt").read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert fip.floating_ip_address in [str(ip) for ip in sans.get_values_for_type(
            x509.IPAddress)]
    assert f"server: https://{fip.floating_ip_address}:6443" in \
        (cd.kubeconfig_dir / "admin.conf").read_text()
    cred = json.loads((cd.path / "openstack" / "application-credential.json").read_text())
    assert (cd.path / "openstack" / "application-credential.json").stat().st_mode & 0o777 == 0o600
    import openstack
    app = openstack.connect(auth_type="v3applicationcredential", auth={
        "auth_url": cred["auth_url"], "application_credential_id":
        cred["application_credential_id"], "application_credential_secret":
        cred["application_credential_secret"]}, region_name=cred["region"])
    assert app.current_project_id == conn.current_project_id

    again = Deployment.for_cluster(cd, None).deploy()
    assert again.changes == []
    assert listing(conn, "ha") == expected("ha", 3, 2, True)

    gone = Deployment.for_cluster(cd, None).destroy()
    assert gone.left == []
    nothing_left(conn, "ha")
    assert not (cd.path / "openstack" / "application-credential.json").exists()


@pytest.mark.parametrize("name,topology,masters,workers,bastion", [
    ("solo", "single", 1, 0, False), ("one", "one-master", 1, 3, True)])
def test_smaller_topologies(os_cloud, image, tmp_path, name, topology, masters, workers,
                            bastion):
    cd = cluster(tmp_path, name, topology=topology, masters=masters, workers=workers,
                 bastion=bastion)
    plan = Deployment.for_cluster(cd, None, dry_run=True).deploy()
    conn = connect(os_cloud)
    assert all(not v for v in listing(conn, name).values())  # --plan touched nothing
    planned_servers = {c.name for c in plan.changes if c.kind == "server"}
    assert planned_servers == expected(name, masters, workers, bastion)["server"]
    Deployment.for_cluster(cd, None).deploy()
    assert listing(conn, name) == expected(name, masters, workers, bastion)
    assert Deployment.for_cluster(cd, None, dry_run=True).deploy().changes == []
    assert Deployment.for_cluster(cd, None).destroy().left == []
    nothing_left(conn, name)


def test_bad_input_fails_preflight_with_nothing_created(os_cloud, image, tmp_path):
    conn = connect(os_cloud)
    cd = cluster(tmp_path, "bad", image="no-such-image", masters__flavor="no-such-flavor",
                 openstack__external_network="no-such-net")
    with pytest.raises(PreflightError) as e:
        Deployment.for_cluster(cd, None).deploy()
    fields = [f for f, _ in e.value.problems]
    assert fields == ["image", "masters.flavor", "openstack.external_network"], e.value.problems
    assert "no image 'no-such-image'" in str(e.value)
    big = cluster(tmp_path, "big", pki__key_algorithm="rsa-4096", topology="one-master",
                  masters=1, workers=1)
    with pytest.raises(PreflightError) as e:
        Deployment.for_cluster(big, None).deploy()
    assert [f for f, _ in e.value.problems] == ["user_data.big-master-0"]
    assert "Nova accepts at most 49149" in str(e.value)
    for name in ("bad", "big"):
        nothing_left(conn, name)


def test_quota_refusal_then_recovery(test_cloud, os_cloud, image, tmp_path):
    admin = connect("k8simg-test-admin")
    conn = connect(os_cloud)
    pid = conn.current_project_id
    admin.compute.update_quota_set(pid, instances=2)
    cd = cluster(tmp_path, "quota", topology="one-master", masters=1, workers=2,
                 bastion=False)
    try:
        with pytest.raises(PreflightError) as e:
            Deployment.for_cluster(cd, None).deploy()
        assert e.value.problems[0][0] == "quota.instances"
        assert "needs 3 more, the project has 2 left (limit 2" in str(e.value)
        nothing_left(conn, "quota")
    finally:
        admin.compute.update_quota_set(pid, instances=50)
    Deployment.for_cluster(cd, None).deploy()
    assert listing(conn, "quota") == expected("quota", 1, 2, False)
    assert Deployment.for_cluster(cd, None).destroy().left == []


def test_server_in_error_is_reported_then_replaced(test_cloud, os_cloud, image, tmp_path):
    admin = connect("k8simg-test-admin")
    if not admin.compute.find_flavor("k8s.huge", ignore_missing=True):
        admin.compute.create_flavor(name="k8s.huge", vcpus=2, ram=4 * 1024 * 1024, disk=20)
    cd = cluster(tmp_path, "err", topology="one-master", masters=1, workers=1,
                 bastion=False, workers__flavor="k8s.huge")
    conn = connect(os_cloud)
    admin.compute.update_quota_set(conn.current_project_id, ram=-1)  # past preflight
    try:
        with pytest.raises(CloudError, match=r"server err-worker-0 went to ERROR: .*No valid "
                                             r"host"):
            Deployment.for_cluster(cd, None).deploy()
        edit(cd, workers__flavor="k8s.small")
        result = Deployment.for_cluster(cd, None).deploy()
        assert [(c.action, c.name) for c in result.changes if c.kind == "server"] == \
            [("replace", "err-worker-0"), ("create", "err-worker-0")]
        assert listing(conn, "err") == expected("err", 1, 1, False)
        assert all(s.status == "ACTIVE" for s in conn.compute.servers(tags=cluster_tag("err")))
    finally:
        assert Deployment.for_cluster(cd, None).destroy().left == []
        admin.compute.update_quota_set(conn.current_project_id, ram=51200)
    nothing_left(conn, "err")


@pytest.mark.parametrize("kill_after", ["create   security group", "create   server",
                                        "create   load balancer"])
def test_killed_deploy_converges_on_rerun(os_cloud, image, tmp_path, kill_after):
    name = "kill" + hashlib.sha256(kill_after.encode()).hexdigest()[:4]
    cd = cluster(tmp_path, name, topology="one-master", masters=1, workers=2, bastion=True)
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "k8simg", "deploy", str(cd.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if kill_after in line:
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert any(kill_after in s for s in seen), "".join(seen)[-2000:]
    time.sleep(1)
    r = subprocess.run([sys.executable, "-m", "k8simg", "deploy", str(cd.path), "-o", "json"],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    conn = connect(os_cloud)
    assert listing(conn, name) == expected(name, 1, 2, True)
    # exactly one of each (a killed run may not leave a duplicate behind)
    assert len(list(conn.compute.servers(tags=cluster_tag(name)))) == 4
    assert len(list(conn.network.ips(tags=[cluster_tag(name)]))) == 2
    r = subprocess.run([sys.executable, "-m", "k8simg", "deploy", str(cd.path), "-o", "json"],
                       capture_output=True, text=True, env=env, timeout=900)
    assert json.loads(r.stdout)["changes"] == []
    r = subprocess.run([sys.executable, "-m", "k8simg", "destroy", str(cd.path)],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    nothing_left(conn, name)


def test_scaling_workers_up_and_down(os_cloud, image, tmp_path):
    cd = cluster(tmp_path, "scale", topology="one-master", masters=1, workers=2, bastion=False)
    Deployment.for_cluster(cd, None).deploy()
    conn = connect(os_cloud)
    edit(cd, workers__count=3)
    up = Deployment.for_cluster(cd, None).deploy()
    assert {(c.action, c.kind, c.name) for c in up.changes} == {
        ("create", "port", "scale-worker-2-port"), ("create", "volume", "scale-worker-2-storage"),
        ("create", "server", "scale-worker-2")}
    assert listing(conn, "scale") == expected("scale", 1, 3, False)
    edit(cd, workers__count=1)
    plan = Deployment.for_cluster(cd, None, dry_run=True).deploy()
    assert [(c.action, c.name) for c in plan.changes] == [("delete", "scale-worker-2"),
                                                          ("delete", "scale-worker-1")]
    # Its servers run no kubelet: the API cannot be asked to drain them, so nothing goes...
    with pytest.raises(K8simgError, match=r"workers beyond workers.count \(scale-worker-2, "
                       r"scale-worker-1\) were not removed: the Kubernetes API cannot be asked"):
        Deployment.for_cluster(cd, None).deploy()
    assert listing(conn, "scale") == expected("scale", 1, 3, False)
    # ...unless the operator says so, and then it is said back.
    down = Deployment.for_cluster(cd, None, skip_unobservable=True).deploy()
    assert [(c.action, c.name, c.detail) for c in down.changes if c.kind == "server"] == \
        [("delete", "scale-worker-2", "beyond workers.count; not drained"),
         ("delete", "scale-worker-1", "beyond workers.count; not drained")]
    assert any(w.startswith("workers scale-worker-2, scale-worker-1 removed without draining")
               for w in down.warnings)
    assert listing(conn, "scale") == expected("scale", 1, 1, False)
    assert Deployment.for_cluster(cd, None).deploy().changes == []
    assert Deployment.for_cluster(cd, None).destroy().left == []
    nothing_left(conn, "scale")


def test_dedicated_etcd_gets_its_groups_and_rules(os_cloud, image, tmp_path):
    cd = cluster(tmp_path, "ded", topology="one-master", masters=1, workers=1, bastion=True,
                 etcd={"placement": "dedicated", "count": 3, "flavor": "k8s.tiny",
                       "volume_size_gb": 10})
    Deployment.for_cluster(cd, None).deploy()
    conn = connect(os_cloud)
    got = listing(conn, "ded")
    want = expected("ded", 1, 1, True)
    etcd = {f"ded-etcd-{i}" for i in range(3)}
    assert got["server"] == want["server"] | etcd
    assert got["volume"] == want["volume"] | {f"{n}-storage" for n in etcd}
    assert got["security_group"] == want["security_group"] | {"ded-etcds"}
    assert got["server_group"] == want["server_group"] | {"ded-etcds"}
    admin = connect("k8simg-test-admin")
    hosts = {admin.compute.get_server(s.id).compute_host
             for s in conn.compute.servers(tags=cluster_tag("ded")) if s.name in etcd}
    assert len(hosts) == 3

    n = conn.network
    ids = {sg.name: sg.id for sg in n.security_groups(tags=[cluster_tag("ded")])}

    def ingress(group):
        return {(r.protocol, r.port_range_min, r.port_range_max,
                 r.remote_ip_prefix or {v: k for k, v in ids.items()}.get(r.remote_group_id))
                for r in n.security_group_rules(security_group_id=ids[group],
                                                direction="ingress")}

    assert ingress("ded-etcds") == {("tcp", 2379, 2379, "ded-masters"),
                                    ("tcp", 2379, 2380, "ded-etcds"),
                                    ("tcp", 2379, 2379, "ded-bastion")}  # upgrade's tunnel
    assert ingress("ded-masters") == {("tcp", 6443, 6443, "0.0.0.0/0"),
                                      ("tcp", 6443, 6443, "10.0.0.0/24")}  # no etcd here
    assert ingress("ded-nodes") == {("udp", 8472, 8472, "ded-nodes"),
                                    ("tcp", 10250, 10250, "ded-masters"),
                                    ("icmp", None, None, "ded-nodes"),
                                    ("tcp", 22, 22, "ded-bastion")}
    assert ingress("ded-bastion") == {("tcp", 22, 22, "0.0.0.0/0")}
    assert ingress("ded-workers") == {("tcp", 30000, 32767, "0.0.0.0/0"),
                                      ("udp", 30000, 32767, "0.0.0.0/0")}
    ports = {p.name: set(p.security_group_ids) for p in n.ports(tags=[cluster_tag("ded")])}
    assert ports["ded-etcd-0-port"] == {ids["ded-nodes"], ids["ded-etcds"]}
    assert ports["ded-bastion-port"] == {ids["ded-bastion"]}
    assert Deployment.for_cluster(cd, None).destroy().left == []
    nothing_left(conn, "ded")


def test_warns_when_the_image_has_no_kubernetes(test_cloud, os_cloud, tmp_path):
    conn = test_cloud.member()
    qcow2 = tmp_path / "demo.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(qcow2), "2G"], check=True,
                   capture_output=True)
    for old in conn.image.images(name="k8simg-demo-image"):
        conn.image.delete_image(old)
    conn.image.create_image("k8simg-demo-image", filename=str(qcow2), disk_format="qcow2",
                            container_format="bare", wait=True,
                            meta={"k8simg_kubernetes_binaries": "absent"})
    cd = cluster(tmp_path, "demo", image="k8simg-demo-image", topology="single", masters=1,
                 workers=0, bastion=False)
    messages = []
    result = Deployment.for_cluster(cd, None, dry_run=True, progress=messages.append).deploy()
    assert any("baked without Kubernetes binaries" in w for w in result.warnings)
    assert any(m.startswith("warning: image k8simg-demo-image was baked without Kubernetes")
               for m in messages)


def test_destroy_spares_a_cluster_whose_name_extends_it(os_cloud, image, tmp_path):
    prod = cluster(tmp_path, "prod", topology="single", masters=1, workers=0, bastion=False)
    prod_eu = cluster(tmp_path, "prod-eu", topology="single", masters=1, workers=0,
                      bastion=False)
    Deployment.for_cluster(prod, None).deploy()
    Deployment.for_cluster(prod_eu, None).deploy()
    conn = connect(os_cloud)
    assert Deployment.for_cluster(prod, None).destroy().left == []
    nothing_left_tagged = listing(conn, "prod")
    assert all(not v for k, v in nothing_left_tagged.items() if k != "server_group")
    assert listing(conn, "prod-eu") == expected("prod-eu", 1, 0, False)
    assert Deployment.for_cluster(prod_eu, None).destroy().left == []
    nothing_left(conn, "prod-eu")
