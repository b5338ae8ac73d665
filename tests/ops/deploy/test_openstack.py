"""``k8simg deploy`` / ``destroy`` against the real OpenStack test cloud (tests/cloud): every
assertion lists the cloud, never counts calls."""

import base64
import json
import os
import signal
import subprocess
import sys
import time

import keystoneauth1.session as ks_session
import pytest
from cryptography import x509

from k8simg.clouds.base import Change, CloudError, PreflightError
from k8simg.clouds.openstack.connect import cluster_tag, connect
from k8simg.errors import K8simgError
from k8simg.ignition.render import render_context, render_user_data
from k8simg.model.credential import CloudCredential
from k8simg.model.plan import initial_nodes
from k8simg.ops.deploy import Deployment
from tests.conftest import edit_cluster as edit
from tests.conftest import write_cluster
from tests.ignition.support import kube_objects
from tests.support import FAILED_CONSOLE

pytestmark = pytest.mark.slow

IMAGE = "k8simg-deploy-test"


@pytest.fixture(scope="module")
def image(test_cloud, tmp_path_factory):
    """A small real qcow2 in Glance, owned by the test project, with k8simg's properties."""
    return test_cloud.image(IMAGE, tmp_path_factory.mktemp("image"),
                            meta={"k8simg_kubernetes_binaries": "included"})


MADE: list = []  # the clusters the running test wrote


@pytest.fixture(autouse=True)
def destroyed_when_failed(request):
    """A test that fails destroys nothing itself: what it left would count against the next
    tests' quota (seen in CI: a failed HA deploy left a server, and the quota test found one
    instance fewer). So a failed test's clusters are destroyed here, as best as they can be."""
    failed_before = request.session.testsfailed
    MADE.clear()
    yield
    if request.session.testsfailed > failed_before:
        for cd in MADE:
            if cd.state.uid:
                try:
                    Deployment.for_cluster(cd, None).destroy()
                except Exception as e:  # noqa: BLE001 - the test's own failure is the report
                    print(f"cleanup of {cd.path} failed: {e}", file=sys.stderr)
    MADE.clear()


def cluster(tmp_path, name, topology="ha", masters=3, workers=2, bastion=True, **over):
    settings = {"cloud": "k8simg-test", "image": IMAGE, "topology": topology,
                "masters": {"count": masters, "flavor": "k8s.small", "volume_size_gb": 10},
                "workers": {"count": workers, "flavor": "k8s.small", "volume_size_gb": 10},
                "bastion__enabled": bastion, "bastion__flavor": "k8s.tiny",
                "openstack__external_network": "public"}
    cd = write_cluster(tmp_path / name, **{**settings, **over})
    MADE.append(cd)
    return cd


def tag_of(cd) -> str:
    return cluster_tag(cd.state.uid)


def listing(conn, cd) -> dict[str, set[str]]:
    """Everything in the connection's project that carries the cluster's UID (a tag, Cinder
    metadata, the name of a server group or of the application credential), by kind."""
    tag, uid, name = tag_of(cd), cd.state.uid, cd.load().name
    n, c, b, lb = conn.network, conn.compute, conn.block_storage, conn.load_balancer
    pid = conn.current_project_id  # admin credentials list every project's
    return {
        "network": {x.name for x in n.networks(tags=[tag], project_id=pid)},
        "subnet": {x.name for x in n.subnets(tags=[tag], project_id=pid)},
        "router": {x.name for x in n.routers(tags=[tag], project_id=pid)},
        "security_group": {x.name for x in n.security_groups(tags=[tag], project_id=pid)},
        "port": {x.name for x in n.ports(tags=[tag], project_id=pid)},
        # "k8simg cluster <name>: api k8simg-uid=<uid>" -> "<name>-api"
        "floating_ip": {f"{name}-{x.description.split(': ')[1].split()[0]}"
                        for x in n.ips(tags=[tag], project_id=pid)},
        "server": {x.name for x in c.servers(tags=tag)},
        "volume": {x.name for x in b.volumes() if (x.metadata or {}).get("k8simg-uid") == uid},
        "server_group": {g.name for g in c.server_groups() if g.name.endswith(f"-{uid}")},
        "load_balancer": {x.name for x in lb.load_balancers(tags=tag, project_id=pid)},
        "application_credential": {x.name for x in conn.identity.application_credentials(
            conn.current_user_id) if x.name.endswith(f"-{uid}")},
    }


def expected(cd, masters, workers, bastion) -> dict[str, set[str]]:
    name, uid = cd.load().name, cd.state.uid
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
        "server_group": {f"{name}-masters-{uid}"} | ({f"{name}-workers-{uid}"} if workers
                                                     else set()),
        "load_balancer": {f"{name}-api"},
        "application_credential": {f"{name}-k8simg-{uid}"},
    }


def nothing_left(conn, cd) -> None:
    assert all(not v for v in listing(conn, cd).values()), listing(conn, cd)
    # nor anything untagged that the cluster made
    marker = f"k8simg-uid={cd.state.uid}"
    assert not [p for p in conn.network.ports() if (p.description or "").endswith(marker)]
    assert not [v for v in conn.block_storage.volumes()
                if (v.metadata or {}).get("k8simg-uid") == cd.state.uid]


def test_ha_deploy_is_exact_idempotent_and_destroyed(test_cloud, os_cloud, image, tmp_path,
                                                     monkeypatch):
    cd = cluster(tmp_path, "ha")
    # every request the deploy's threads make, through keystoneauth's sessions
    sent, request = [], ks_session.Session.request

    def counted(self, url, method, *args, **kwargs):
        sent.append((method, url, id(self)))
        return request(self, url, method, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(ks_session.Session, "request", counted)
        result = Deployment.for_cluster(cd, None).deploy()
    assert result.changes
    # one keystone session for all of them: one token asked for, whatever the threads
    assert len({session for _m, _u, session in sent}) == 1
    tokens = [u for m, u, _s in sent if m == "POST" and u.endswith("/auth/tokens")]
    assert len(tokens) == 1, tokens
    conn = connect(os_cloud)
    assert listing(conn, cd) == expected(cd, 3, 2, True)

    admin = connect("k8simg-test-admin")
    admin.compute.default_microversion = "2.67"
    servers = {s.name: admin.compute.get_server(s.id) for s in conn.compute.servers(tags=
                                                                                   tag_of(cd))}
    assert all(s.status == "ACTIVE" for s in servers.values())
    # each first boot's end read from Nova's console log, and kept with the server
    assert {s.metadata["k8simg-boot"] for s in servers.values()} == {"ready"}
    assert {n.state for n in Deployment.for_cluster(cd, None).cloud.nodes()} == {"ready"}
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
    # Services of type LoadBalancer: the cloud controller's config, as Nova holds it in the
    # master's user_data, names the subnet and the floating network deploy made and found.
    doc = json.loads(base64.b64decode(servers["ha-master-0"].user_data))
    objs = {o["metadata"]["name"]: o for _, o in kube_objects(doc, cd.load().kubernetes_version)
            if o["kind"] in ("Secret", "ConfigMap")}
    conf = objs["cloud-config"]["stringData"]["cloud.conf"]
    section = conf.split("[LoadBalancer]\n", 1)[1].split("\n[", 1)[0]
    lb = dict(ln.split("=", 1) for ln in section.splitlines() if not ln.startswith("#"))
    subnet = conn.network.find_subnet("ha-subnet")
    assert subnet.project_id == conn.current_project_id and tag_of(cd) in subnet.tags
    assert (lb["enabled"], lb["lb-provider"], lb["create-monitor"]) == ("true", "amphora", "true")
    assert lb["subnet-id"] == subnet.id
    assert lb["floating-network-id"] == conn.network.find_network("public").id
    assert objs["k8simg-cluster"]["data"]["cloud-name"] == f"ha-{cd.state.uid}"

    lb = conn.load_balancer.find_load_balancer("ha-api")
    assert lb.provisioning_status == "ACTIVE" and lb.vip_address == "10.0.0.5"
    pool = conn.load_balancer.find_pool("ha-api-masters")
    members = {m.name: m.address for m in conn.load_balancer.members(pool)}
    assert members == {n.name: str(n.address) for n in initial_nodes(cd.load())
                       if n.role == "master"}
    assert pool.health_monitor_id
    fip = next(conn.network.ips(tags=[tag_of(cd)],
                                description=f"k8simg cluster ha: api k8simg-uid={cd.state.uid}"))
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
    assert listing(conn, cd) == expected(cd, 3, 2, True)

    gone = Deployment.for_cluster(cd, None).destroy()
    assert gone.left == []
    nothing_left(conn, cd)
    assert not (cd.path / "openstack" / "application-credential.json").exists()


@pytest.mark.parametrize("name,topology,masters,workers,bastion", [
    ("solo", "single", 1, 0, False), ("one", "one-master", 1, 3, True)])
def test_smaller_topologies(os_cloud, image, tmp_path, name, topology, masters, workers,
                            bastion):
    cd = cluster(tmp_path, name, topology=topology, masters=masters, workers=workers,
                 bastion=bastion)
    plan = Deployment.for_cluster(cd, None, dry_run=True).deploy()
    conn = connect(os_cloud)
    assert all(not v for v in listing(conn, cd).values())  # --plan touched nothing
    planned_servers = {c.name for c in plan.changes if c.kind == "server"}
    assert planned_servers == expected(cd, masters, workers, bastion)["server"]
    Deployment.for_cluster(cd, None).deploy()
    assert listing(conn, cd) == expected(cd, masters, workers, bastion)
    assert Deployment.for_cluster(cd, None, dry_run=True).deploy().changes == []
    assert Deployment.for_cluster(cd, None).destroy().left == []
    nothing_left(conn, cd)


def test_bad_input_fails_preflight_with_nothing_created(os_cloud, image, tmp_path):
    conn = connect(os_cloud)
    cd = cluster(tmp_path, "bad", image="no-such-image", masters__flavor="no-such-flavor",
                 openstack__external_network="no-such-net", openstack__lb_provider="ovn")
    with pytest.raises(PreflightError) as e:
        Deployment.for_cluster(cd, None).deploy()
    fields = [f for f, _ in e.value.problems]
    assert fields == ["image", "masters.flavor", "openstack.external_network",
                      "openstack.lb_provider"], e.value.problems
    assert "no image 'no-such-image'" in str(e.value)
    # the test cloud's Octavia runs the amphora provider only
    assert "Octavia in cloud 'k8simg-test' has no provider 'ovn' (it has: amphora)" \
        in str(e.value), str(e.value)
    big = cluster(tmp_path, "big", pki__key_algorithm="rsa-4096", topology="one-master",
                  masters=1, workers=1)
    with pytest.raises(PreflightError) as e:
        Deployment.for_cluster(big, None).deploy()
    assert [f for f, _ in e.value.problems] == ["user_data.big-master-0"]
    assert "Nova accepts at most 49149" in str(e.value)
    for c in (cd, big):
        nothing_left(conn, c)


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
        nothing_left(conn, cd)
    finally:
        admin.compute.update_quota_set(pid, instances=50)
    Deployment.for_cluster(cd, None).deploy()
    assert listing(conn, cd) == expected(cd, 1, 2, False)
    assert Deployment.for_cluster(cd, None).destroy().left == []


def test_preflight_names_a_network_that_is_not_external_then_a_load_balancer_short(
        test_cloud, os_cloud, image, tmp_path):
    """Each refusal by its field, nothing created: a floating network that is not external;
    then Octavia's quota one load balancer short of the API's and ingress-nginx's."""
    admin = connect("k8simg-test-admin")
    conn = connect(os_cloud)
    pid = conn.current_project_id
    private = conn.network.create_network(name="lbq-private")
    cd = cluster(tmp_path, "lbq", topology="single", masters=1, workers=0, bastion=False,
                 openstack__external_network="lbq-private")
    try:
        with pytest.raises(PreflightError) as e:
            Deployment.for_cluster(cd, None).deploy()
        assert e.value.problems == [("openstack.external_network", "network 'lbq-private' is "
                                     "not external (router:external is false): floating IPs "
                                     "come from an external network")]
        nothing_left(conn, cd)
        edit(cd, openstack__external_network="public")
        used = len(list(conn.load_balancer.load_balancers(project_id=pid)))
        admin.load_balancer.update_quota(pid, load_balancer=used + 1)
        with pytest.raises(PreflightError) as e:
            Deployment.for_cluster(cd, None).deploy()
        assert e.value.problems == [(
            "quota.load_balancers", f"the cluster needs 2 more (of the API's, ingress-nginx's "
                                    f"Service), the project has 1 left (limit {used + 1}, in use "
                                    f"{used})")]
        nothing_left(conn, cd)
    finally:
        admin.load_balancer.delete_quota(pid)
        conn.network.delete_network(private)


def test_volume_and_server_in_error_are_reported_then_replaced(test_cloud, os_cloud, image,
                                                                tmp_path):
    """Cinder's scheduler with no backend for the project's volume type, then Nova's with no
    host big enough: each error is reported with the service's own reason, and the next run
    replaces what went to error."""
    admin = connect("k8simg-test-admin")
    if not admin.compute.find_flavor("k8s.huge", ignore_missing=True):
        admin.compute.create_flavor(name="k8s.huge", vcpus=2, ram=4 * 1024 * 1024, disk=20)
    cd = cluster(tmp_path, "err", topology="one-master", masters=1, workers=1,
                 bastion=False, workers__flavor="k8s.huge")
    conn = connect(os_cloud)
    pid = conn.current_project_id
    admin.compute.update_quota_set(pid, ram=-1)  # past preflight
    bs = admin.block_storage
    nowhere = bs.find_type("k8simg-nowhere") or bs.create_type(
        name="k8simg-nowhere", extra_specs={"volume_backend_name": "no-such-backend"})
    try:
        bs.set_default_type(pid, nowhere)  # what the cluster's volumes get (it names none)
        with pytest.raises(CloudError, match=r"volume err-(master|worker)-0-storage went to "
                                             r"error: .*Could not find any available"):
            Deployment.for_cluster(cd, None).deploy()
        errored = {v.id: v.name for v in conn.block_storage.volumes() if v.status == "error"}
        assert errored and set(errored.values()) <= {"err-master-0-storage",
                                                     "err-worker-0-storage"}
        bs.unset_default_type(pid)
        with pytest.raises(CloudError, match=r"server err-worker-0 went to ERROR: .*No valid "
                                             r"host"):
            Deployment.for_cluster(cd, None).deploy()
        now = {v.id: v for v in conn.block_storage.volumes()}
        assert not set(errored) & set(now), "the errored volumes were replaced"
        assert {v.name for v in now.values() if v.status != "error"} >= set(errored.values())
        edit(cd, workers__flavor="k8s.small")
        result = Deployment.for_cluster(cd, None).deploy()
        assert [(c.action, c.name) for c in result.changes if c.kind == "server"] == \
            [("replace", "err-worker-0"), ("create", "err-worker-0")]
        assert listing(conn, cd) == expected(cd, 1, 1, False)
        assert all(s.status == "ACTIVE" for s in conn.compute.servers(tags=tag_of(cd)))
    finally:
        bs.unset_default_type(pid)
        assert Deployment.for_cluster(cd, None).destroy().left == []
        admin.compute.update_quota_set(conn.current_project_id, ram=51200)
    nothing_left(conn, cd)


def k8simg(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "k8simg", *map(str, args)], text=True,
                          capture_output=True, timeout=timeout)


def test_a_failed_first_boot_is_reported_from_novas_console(test_cloud, os_cloud, image,
                                                             tmp_path):
    """ACTIVE is not up. The test cloud's computes serve each server a console log (its
    compute driver, tests/cloud/plugins/k8simg_testcloud/nova.py): a boot that ends at the
    login prompt, or one scripted here whose Ignition failed. deploy reads Nova's console log
    and reports the failed node with the lines that say why; `nodes` and `console` show it;
    the next deploy replaces it."""
    cd = cluster(tmp_path, "boot", topology="one-master", masters=1, workers=1, bastion=False)
    conn = connect(os_cloud)
    test_cloud.script_console("boot-worker-0", FAILED_CONSOLE)
    try:
        r = k8simg("deploy", cd.path, "--no-wait")
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr
        assert (f"node boot-worker-0 failed: its first boot failed; Nova's console log: "
                f"k8simg console {cd.path} boot-worker-0") in r.stderr, r.stderr
        assert "k8simg: ignition: files: op(3): [failed] writing file \"/etc/hosts\": no space " \
            "left on device" in r.stderr
        assert "boot-master-0: first boot done" in r.stderr
        r = k8simg("nodes", cd.path, "-o", "json")
        assert {n["name"]: n["state"] for n in json.loads(r.stdout)} == \
            {"boot-master-0": "ready", "boot-worker-0": "failed"}, r.stderr
        r = k8simg("console", cd.path, "boot-worker-0", "--no-follow", "--lines", "0")
        assert r.returncode == 0 and r.stdout == FAILED_CONSOLE, r.stderr
        servers = {x.name: x for x in conn.compute.servers(tags=tag_of(cd))}
        assert {n: x.metadata["k8simg-boot"] for n, x in servers.items()} == \
            {"boot-master-0": "ready", "boot-worker-0": "failed"}
    finally:
        test_cloud.script_console("boot-worker-0", None)
    r = k8simg("deploy", cd.path, "--no-wait", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert [(c["action"], c["name"]) for c in json.loads(r.stdout)["changes"]
            if c["kind"] == "server"] == [("replace", "boot-worker-0"), ("create", "boot-worker-0")]
    new = {x.name: x for x in conn.compute.servers(tags=tag_of(cd))}
    assert new["boot-worker-0"].id != servers["boot-worker-0"].id
    assert new["boot-master-0"].id == servers["boot-master-0"].id
    assert {n: x.metadata["k8simg-boot"] for n, x in new.items()} == \
        {"boot-master-0": "ready", "boot-worker-0": "ready"}
    r = k8simg("console", cd.path, "boot-worker-0", "--no-follow", "--lines", "1")
    assert r.stdout == "boot-worker-0 login: "
    assert Deployment.for_cluster(cd, None).destroy().left == []
    nothing_left(conn, cd)


def killed_deploy(cd, kill_after: str, env) -> None:
    """`k8simg deploy --no-wait` on ``cd``, SIGKILLed (its whole group) right after it says
    ``kill_after``."""
    proc = subprocess.Popen([sys.executable, "-m", "k8simg", "deploy", str(cd.path),
                             "--no-wait"],
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
    assert any(kill_after in s for s in seen), (kill_after, "".join(seen)[-2000:])


def test_killed_deploy_converges_on_rerun(os_cloud, image, tmp_path):
    """Killed right after it says it creates a security group; its re-run killed right after
    it says it creates the load balancer (made beside the nodes' ports, volumes and servers);
    that one's re-run right after it says it creates a server; then a re-run converges on
    exactly the cluster, with no duplicate of anything. (Once three tests, each killed from
    nothing: the same kill points, a third of the test cloud's work.)"""
    cd = cluster(tmp_path, "kill", topology="one-master", masters=1, workers=2, bastion=True)
    env = dict(os.environ)
    # --no-wait: the test cloud's servers run nothing, no etcd to wait for
    for kind in ("security group", "load balancer", "server"):
        # the whole kind, as deploy prints a change (a "server group" or "security group
        # rule" line is not a kill point)
        killed_deploy(cd, str(Change("create", kind, f"{cd.load().name}-")), env)
        time.sleep(1)
    r = subprocess.run([sys.executable, "-m", "k8simg", "deploy", str(cd.path), "--no-wait",
                        "-o", "json"], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    conn = connect(os_cloud)
    assert listing(conn, cd) == expected(cd, 1, 2, True)
    # exactly one of each (a killed run may not leave a duplicate behind)
    assert len(list(conn.compute.servers(tags=tag_of(cd)))) == 4
    assert len(list(conn.network.ips(tags=[tag_of(cd)]))) == 2
    assert len(list(conn.network.security_groups(tags=[tag_of(cd)]))) == 4
    assert len(list(conn.load_balancer.load_balancers(tags=tag_of(cd)))) == 1
    r = subprocess.run([sys.executable, "-m", "k8simg", "deploy", str(cd.path), "--no-wait",
                        "-o", "json"], capture_output=True, text=True, env=env, timeout=900)
    assert json.loads(r.stdout)["changes"] == []
    r = subprocess.run([sys.executable, "-m", "k8simg", "destroy", str(cd.path)],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    nothing_left(conn, cd)


def test_scaling_workers_up_and_down(os_cloud, image, tmp_path):
    cd = cluster(tmp_path, "scale", topology="one-master", masters=1, workers=2, bastion=False)
    Deployment.for_cluster(cd, None).deploy()
    conn = connect(os_cloud)
    edit(cd, workers__count=3)
    up = Deployment.for_cluster(cd, None).deploy()
    assert {(c.action, c.kind, c.name) for c in up.changes} == {
        ("create", "port", "scale-worker-2-port"), ("create", "volume", "scale-worker-2-storage"),
        ("create", "server", "scale-worker-2")}
    assert listing(conn, cd) == expected(cd, 1, 3, False)
    edit(cd, workers__count=1)
    plan = Deployment.for_cluster(cd, None, dry_run=True).deploy()
    assert [(c.action, c.name) for c in plan.changes] == [("delete", "scale-worker-2"),
                                                          ("delete", "scale-worker-1")]
    # Its servers run no kubelet: the API cannot be asked to drain them, so nothing goes...
    with pytest.raises(K8simgError, match=r"workers beyond workers.count \(scale-worker-2, "
                       r"scale-worker-1\) were not removed: the Kubernetes API cannot be asked"):
        Deployment.for_cluster(cd, None).deploy()
    assert listing(conn, cd) == expected(cd, 1, 3, False)
    # ...unless the operator says so, and then it is said back.
    down = Deployment.for_cluster(cd, None, skip_unobservable=True).deploy()
    assert [(c.action, c.name, c.detail) for c in down.changes if c.kind == "server"] == \
        [("delete", "scale-worker-2", "beyond workers.count; not drained"),
         ("delete", "scale-worker-1", "beyond workers.count; not drained")]
    assert any(w.startswith("workers scale-worker-2, scale-worker-1 removed without draining")
               for w in down.warnings)
    assert listing(conn, cd) == expected(cd, 1, 1, False)
    assert Deployment.for_cluster(cd, None).deploy().changes == []
    assert Deployment.for_cluster(cd, None).destroy().left == []
    nothing_left(conn, cd)


def test_dedicated_etcd_gets_its_groups_and_rules(os_cloud, image, tmp_path):
    cd = cluster(tmp_path, "ded", topology="one-master", masters=1, workers=1, bastion=True,
                 etcd={"placement": "dedicated", "count": 3, "flavor": "k8s.tiny",
                       "volume_size_gb": 10})
    Deployment.for_cluster(cd, None).deploy()
    conn = connect(os_cloud)
    got = listing(conn, cd)
    want = expected(cd, 1, 1, True)
    etcd = {f"ded-etcd-{i}" for i in range(3)}
    assert got["server"] == want["server"] | etcd
    assert got["volume"] == want["volume"] | {f"{n}-storage" for n in etcd}
    assert got["security_group"] == want["security_group"] | {"ded-etcds"}
    assert got["server_group"] == want["server_group"] | {f"ded-etcds-{cd.state.uid}"}
    admin = connect("k8simg-test-admin")
    hosts = {admin.compute.get_server(s.id).compute_host
             for s in conn.compute.servers(tags=tag_of(cd)) if s.name in etcd}
    assert len(hosts) == 3

    n = conn.network
    ids = {sg.name: sg.id for sg in n.security_groups(tags=[tag_of(cd)])}

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
    # NodePorts from the node subnet alone (the Services' load balancers' members), no wider
    assert ingress("ded-workers") == {("tcp", 30000, 32767, "10.0.0.0/24"),
                                      ("udp", 30000, 32767, "10.0.0.0/24")}
    ports = {p.name: set(p.security_group_ids) for p in n.ports(tags=[tag_of(cd)])}
    assert ports["ded-etcd-0-port"] == {ids["ded-nodes"], ids["ded-etcds"]}
    assert ports["ded-bastion-port"] == {ids["ded-bastion"]}
    assert Deployment.for_cluster(cd, None).destroy().left == []
    nothing_left(conn, cd)


def test_warns_when_the_image_has_no_kubernetes(test_cloud, os_cloud, tmp_path):
    conn = test_cloud.member()
    qcow2 = tmp_path / "demo.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(qcow2), "2G"], check=True,
                   capture_output=True)
    for old in conn.image.images(name="k8simg-demo-image"):
        conn.image.delete_image(old)
    conn.image.create_image("k8simg-demo-image", filename=str(qcow2), disk_format="qcow2",
                            container_format="bare", wait=True,
                            meta={"k8simg_kubernetes_binaries": "absent",
                                  "k8simg_etcd_version": "3.4.23-4+b5",
                                  "k8simg_etcd_source": "debian"})
    cd = cluster(tmp_path, "demo", image="k8simg-demo-image", topology="single", masters=1,
                 workers=0, bastion=False)
    messages = []
    result = Deployment.for_cluster(cd, None, dry_run=True, progress=messages.append).deploy()
    assert any("baked without Kubernetes binaries" in w for w in result.warnings)
    assert any(m.startswith("warning: image k8simg-demo-image was baked without Kubernetes")
               for m in messages)
    # and the offline image's etcd, as its Glance properties say
    assert any("carries Debian's etcd 3.4.23-4+b5, a line upstream no longer maintains" in w
               for w in result.warnings), result.warnings


@pytest.fixture(scope="module")
def isolation_users(test_cloud):
    test_cloud.users_for_isolation_tests()


def admin_project_load_balancer(admin, name: str, tag: str):
    """A load balancer in the admin's own project, named and tagged as a cluster's would be
    (what a copy of its directory deployed there would make); with its network and subnet."""
    net = admin.network.create_network(name=f"{name}-elsewhere")
    sub = admin.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.99.0.0/24",
                                      name=f"{name}-elsewhere")
    lb = admin.load_balancer.create_load_balancer(name=name, vip_subnet_id=sub.id, tags=[tag])
    deadline = time.monotonic() + 120
    while admin.load_balancer.get_load_balancer(lb.id).provisioning_status != "ACTIVE":
        assert time.monotonic() < deadline, "the admin project's load balancer never went ACTIVE"
        time.sleep(1)
    return net, sub, lb


def test_two_clusters_of_one_name_each_keep_to_their_own(os_cloud, image, tmp_path,
                                                         isolation_users):
    """Two cluster directories named ``twin`` in one project (a copy for a second region, a
    re-init after losing the directory), one deployed with admin credentials, which list
    every project's load balancers: each destroy removes exactly its own, and a lost
    credential file replaces only its own cluster's credential."""
    a = cluster(tmp_path / "a", "twin", topology="single", masters=1, workers=0, bastion=False)
    b = cluster(tmp_path / "b", "twin", topology="single", masters=1, workers=0, bastion=False)
    assert a.load().name == b.load().name == "twin" and a.state.uid != b.state.uid
    as_admin = "k8simg-test-admin-in-project"
    admin = connect("k8simg-test-admin")
    elsewhere = admin_project_load_balancer(admin, "twin-api", tag_of(a))
    try:
        Deployment.for_cluster(a, as_admin).deploy()
        Deployment.for_cluster(b, None).deploy()
        member, in_project = connect(os_cloud), connect(as_admin)
        assert listing(member, b) == expected(b, 1, 0, False)
        got_a = listing(in_project, a)  # its credential is the admin's
        assert got_a == expected(a, 1, 0, False)
        # the admin sees both projects' load balancers tagged as a's; a has one of them
        seen = {(x.name, x.project_id) for x in in_project.load_balancer.load_balancers(
            tags=tag_of(a))}
        assert len(seen) == 2

        # b's credential file is lost: its next deploy replaces b's own credential only
        a_cred = CloudCredential.load(a.path).application_credential_id
        b_cred = CloudCredential.load(b.path).application_credential_id
        CloudCredential.path(b.path).unlink()
        Deployment.for_cluster(b, None).deploy()
        b_new = CloudCredential.load(b.path).application_credential_id
        mine = {c.id for c in member.identity.application_credentials(member.current_user_id)}
        assert b_new in mine and b_cred not in mine
        assert in_project.identity.get_application_credential(
            in_project.current_user_id, a_cred).id == a_cred

        assert Deployment.for_cluster(a, as_admin).destroy().left == []
        nothing_left(in_project, a)
        assert listing(member, b) == expected(b, 1, 0, False)
        assert admin.load_balancer.get_load_balancer(elsewhere[2].id).provisioning_status \
            == "ACTIVE"
        assert Deployment.for_cluster(b, None).destroy().left == []
        nothing_left(member, b)
    finally:  # a failed assertion leaves nothing behind either
        Deployment.for_cluster(a, as_admin).destroy()
        Deployment.for_cluster(b, None).destroy()
        net, sub, lb = elsewhere
        admin.load_balancer.delete_load_balancer(lb, cascade=True)
        deadline = time.monotonic() + 120
        while admin.load_balancer.find_load_balancer(lb.id, ignore_missing=True) is not None \
                and time.monotonic() < deadline:
            time.sleep(1)
        admin.network.delete_subnet(sub, ignore_missing=True)
        admin.network.delete_network(net, ignore_missing=True)


def test_a_cluster_from_before_uids_is_adopted_on_deploy(os_cloud, image, tmp_path):
    cd = cluster(tmp_path, "old", topology="single", masters=1, workers=0, bastion=False)
    cd.state.path.unlink()  # made before UIDs: its state held no UID
    conn = connect(os_cloud)
    n = conn.network
    old = "k8simg-cluster-old"
    public = n.find_network("public")
    # What an earlier k8simg made and tagged: adopted.
    net = n.create_network(name="old-net")
    n.set_tags(net, [old])
    sg = n.create_security_group(name="old-nodes")
    n.set_tags(sg, [old])
    fip = n.create_ip(floating_network_id=public.id, description="old-api")
    n.set_tags(fip, [old])
    # Another cluster's (it carries a UID), and an untagged group of one of its names: not.
    claimed = n.create_network(name="old-net")
    n.set_tags(claimed, [old, "k8simg-uid-00000000000000ff"])
    stray = n.create_security_group(name="old-masters")
    try:
        with pytest.raises(CloudError, match="no UID yet.*run `k8simg deploy` .or `k8simg "
                                             "destroy`. on it once"):
            Deployment.for_cluster(cd, None).cloud.nodes()
        Deployment.for_cluster(cd, None).deploy()
        assert cd.state.uid and not cd.state.adopting
        assert listing(conn, cd) == expected(cd, 1, 0, False)
        tag = tag_of(cd)
        assert [x.id for x in n.networks(tags=[tag])] == [net.id]
        assert sg.id in {x.id for x in n.security_groups(tags=[tag])}
        assert cd.state.api_floating_ip == fip.floating_ip_address
        assert tag not in n.get_network(claimed.id).tags
        assert tag not in (n.get_security_group(stray.id).tags or [])
        assert Deployment.for_cluster(cd, None, dry_run=True).deploy().changes == []
        assert Deployment.for_cluster(cd, None).destroy().left == []
        nothing_left(conn, cd)
        assert n.get_network(claimed.id) and n.get_security_group(stray.id)
    finally:
        if cd.state.uid:
            Deployment.for_cluster(cd, None).destroy()
        n.delete_network(claimed, ignore_missing=True)
        n.delete_security_group(stray, ignore_missing=True)


def test_the_credential_carries_only_its_roles(os_cloud, image, tmp_path, isolation_users):
    """Deployed as a user who holds only ``member`` (``reader`` implied): the credential has
    exactly the roles asked for; a role the user does not hold is refused by name."""
    member_only = "k8simg-test-member"
    cd = cluster(tmp_path, "roles", topology="single", masters=1, workers=0, bastion=False,
                 openstack__credential_roles=["member", "admin"])
    r = subprocess.run([sys.executable, "-m", "k8simg", "deploy", str(cd.path), "--cloud",
                        member_only], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr  # a preflight problem: the definition's
    assert "preflight on cloud 'k8simg-test-member' failed; nothing was created" in r.stderr
    assert "openstack.credential_roles: role 'admin' is not one you hold" in r.stderr
    assert "Traceback" not in r.stderr
    assert not CloudCredential.path(cd.path).exists()
    conn = connect(member_only)
    assert not list(conn.identity.application_credentials(conn.current_user_id))
    nothing_left(conn, cd)  # refused in the preflight: nothing was created

    edit(cd, openstack__credential_roles=["member"])
    try:
        Deployment.for_cluster(cd, member_only).deploy()
        saved = CloudCredential.load(cd.path)
        cred = conn.identity.get_application_credential(conn.current_user_id,
                                                        saved.application_credential_id)
        # member and what Keystone's default inference makes it imply; never more
        assert sorted(role["name"] for role in cred.roles) == ["member", "reader"]
        assert cred.unrestricted is False
    finally:
        assert Deployment.for_cluster(cd, member_only).destroy().left == []
    nothing_left(conn, cd)


# -- what Kubernetes makes in the cloud ------------------------------------------------------

def made_as_kubernetes_makes_it(conn, cluster: str, subnet_id: str | None, tag: str,
                                svc: str | None = None):
    """For Service ``svc`` (default/web-<tag>) and a PVC: what the cloud controller manager and Cinder
    CSI make for ``cluster`` (cloud-provider-openstack's names, descriptions, tags and
    metadata): a load balancer with listener, pool, member and monitor on ``subnet_id`` (none
    without one), its floating IP, the per-Service security group of manage-security-groups,
    a volume and its snapshot. Returns them by kind."""
    import uuid

    lbs, n, b = conn.load_balancer, conn.network, conn.block_storage
    svc = svc or f"default/web-{tag}"
    got = {}
    if subnet_id:
        name = f"kube_service_{cluster}_{svc.replace('/', '_')}"
        lb = lbs.create_load_balancer(name=name, vip_subnet_id=subnet_id, tags=[name],
                                      description=f"Kubernetes external service {svc} from "
                                                  f"cluster {cluster}")

        def active():
            lbs.wait_for_load_balancer(lb.id, status="ACTIVE", failures=["ERROR"], wait=120)
        active()
        listener = lbs.create_listener(name=f"listener_0_{name}", protocol="TCP",
                                       protocol_port=80, load_balancer_id=lb.id, tags=[name])
        active()
        pool = lbs.create_pool(name=f"pool_0_{name}", protocol="TCP", lb_algorithm="ROUND_ROBIN",
                               listener_id=listener.id)
        active()
        lbs.create_member(pool, address="10.0.0.10", protocol_port=30080, subnet_id=subnet_id)
        active()
        lbs.create_health_monitor(name=f"monitor_0_{name}", pool_id=pool.id, type="TCP",
                                  delay=5, timeout=3, max_retries=3)
        active()
        got["load-balancer"] = name
        # The controller puts it on the load balancer's VIP port. The test cloud's Octavia
        # runs the noop network driver, which makes no Neutron port for a VIP: the address is
        # made unattached, as it is once a load balancer (and its VIP port) is gone.
        got["floating-ip"] = n.create_ip(
            floating_network_id=n.find_network("public").id,
            description=f"Floating IP for Kubernetes external service {svc} from cluster "
                        f"{cluster}").floating_ip_address
    got["security-group"] = n.create_security_group(
        name=f"lb-sg-{uuid.uuid4()}-{svc.replace('/', '-')}",
        description=f"Security Group for {svc} Service LoadBalancer in cluster {cluster}").name
    volume = b.create_volume(name=f"pvc-{uuid.uuid4()}", size=1, metadata={
        "cinder.csi.openstack.org/cluster": cluster, "csi.storage.k8s.io/pvc/name": "data",
        "csi.storage.k8s.io/pvc/namespace": "default"})
    b.wait_for_status(volume, "available", failures=["error"], wait=120)
    got["volume"] = volume.name
    snap = b.create_snapshot(volume_id=volume.id, name=f"snapshot-{uuid.uuid4()}", metadata={
        "cinder.csi.openstack.org/cluster": cluster,
        "csi.storage.k8s.io/volumesnapshot/name": "data-snap"})
    b.wait_for_status(snap, "available", failures=["error"], wait=120)
    got["volume-snapshot"] = snap.name
    got["volume-id"] = volume.id
    return got


def still_there(conn, made: dict) -> set[str]:
    """Which of ``made`` (by kind) the project still holds."""
    pid = conn.current_project_id
    n, b = conn.network, conn.block_storage
    have = {
        "load-balancer": {x.name for x in conn.load_balancer.load_balancers(project_id=pid)},
        "floating-ip": {x.floating_ip_address for x in n.ips(project_id=pid)},
        "security-group": {x.name for x in n.security_groups(project_id=pid)},
        "volume": {x.name for x in b.volumes()},
        "volume-snapshot": {x.name for x in b.snapshots()},
    }
    return {f"{k} {v}" for k, v in made.items() if k in have and v in have[k]}


def test_destroy_removes_what_kubernetes_made_and_names_what_survives(os_cloud, image, tmp_path):
    """The cloud controller's load balancers (with listener, pool, member, monitor and
    floating IP) and security groups, Cinder CSI's volumes and snapshots: a cluster's go with
    it, a same-named cluster's in the same project stay, and whatever cannot go is named."""
    conn = connect(os_cloud)
    mine = cluster(tmp_path, "kmade", topology="single", masters=1, workers=0, bastion=False)
    other = cluster(tmp_path / "second", "kmade", topology="single", masters=1, workers=0,
                    bastion=False)
    assert mine.state.uid != other.state.uid
    Deployment.for_cluster(mine, None).deploy()
    subnet = conn.network.find_subnet("kmade-subnet")
    assert tag_of(mine) in subnet.tags
    ours = made_as_kubernetes_makes_it(conn, f"kmade-{mine.state.uid}", subnet.id, "a")
    # ingress-nginx's Service: its address is said by `nodes`
    ingress = made_as_kubernetes_makes_it(conn, f"kmade-{mine.state.uid}", subnet.id, "i",
                                          svc="ingress-nginx/ingress-nginx-controller")
    r = subprocess.run([sys.executable, "-m", "k8simg", "nodes", str(mine.path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == \
        f"ingress: {ingress['floating-ip']} (ingress-nginx's load balancer)", r.stdout
    ingress.pop("volume-id")
    # The other cluster's: its Service's load balancer on a network of neither cluster.
    net = conn.network.create_network(name="kmade-bystander-net")
    try:
        side = conn.network.create_subnet(network_id=net.id, ip_version=4,
                                          cidr="192.168.77.0/24", name="kmade-bystander")
        theirs = made_as_kubernetes_makes_it(conn, f"kmade-{other.state.uid}", side.id, "b")
        id_of = {"volume": ours.pop("volume-id")}
        theirs.pop("volume-id")

        # The plan names them all, and touches nothing.
        r = subprocess.run([sys.executable, "-m", "k8simg", "destroy", str(mine.path), "--plan",
                            "-o", "json"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        planned = set(json.loads(r.stdout)["deleted"])
        for kind, name in ours.items():
            assert any(p.startswith("delete") and f"{kind}" in p and name in p
                       for p in planned), (kind, name, planned)
        assert not any(v in " ".join(planned) for v in theirs.values())
        assert still_there(conn, ours) == {f"{k} {v}" for k, v in ours.items()}

        # One survivor on purpose: a snapshot someone took by hand of the cluster's CSI
        # volume (not the cluster's: no CSI metadata) keeps the volume from going.
        by_hand = conn.block_storage.create_snapshot(volume_id=id_of["volume"], name="by-hand")
        conn.block_storage.wait_for_status(by_hand, "available", failures=["error"], wait=120)
        r = subprocess.run([sys.executable, "-m", "k8simg", "destroy", str(mine.path), "-o",
                            "json"], capture_output=True, text=True, timeout=900)
        assert r.returncode == 1, r.stderr
        left = json.loads(r.stdout)["left"]
        assert [x.split(":")[0] for x in left] == [f"volume {ours['volume']}"], left
        assert f"could not remove:\n  volume {ours['volume']}" in r.stderr
        assert still_there(conn, ours) == {f"volume {ours['volume']}"}
        assert still_there(conn, theirs) == {f"{k} {v}" for k, v in theirs.items()}

        conn.block_storage.delete_snapshot(by_hand)
        conn.block_storage.wait_for_delete(by_hand, wait=120)
        r = subprocess.run([sys.executable, "-m", "k8simg", "destroy", str(mine.path), "-o",
                            "json"], capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["left"] == []
        assert still_there(conn, ours) == set() and still_there(conn, ingress) == set()
        nothing_left(conn, mine)
        # The same-named cluster's, untouched; its own destroy takes them.
        assert still_there(conn, theirs) == {f"{k} {v}" for k, v in theirs.items()}
        assert Deployment.for_cluster(other, None).destroy().left == []
        assert still_there(conn, theirs) == set()
    finally:  # the bystander network, whatever happened (the clusters: the fixture's)
        try:
            for lb in conn.load_balancer.load_balancers(project_id=conn.current_project_id):
                if lb.vip_network_id == net.id:
                    conn.load_balancer.delete_load_balancer(lb, cascade=True)
                    conn.load_balancer.wait_for_delete(lb, wait=120)
            conn.network.delete_network(net)
        except Exception as e:  # noqa: BLE001 - the test's own outcome is the report
            print(f"cleanup of kmade-bystander-net failed: {e}", file=sys.stderr)
