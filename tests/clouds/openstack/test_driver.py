"""The OpenStack driver's logic, fast: the security-group rules a cluster wants, the quota
arithmetic, a whole deploy, its re-run and its plan, what destroy takes (and what it leaves
alone), and waits that fail at once on a failure state. Against the stateful fake of
tests/clouds/openstack/fake.py (named as such; the real test cloud's tests are in
tests/ops/deploy/test_openstack.py): it refuses what it does not model, goes through BUILD ->
ACTIVE/ERROR, and refuses deletions in the wrong order as Neutron does."""

import copy
import time

import pytest

from k8simg.clouds.base import CloudError, Ledger, NodeFailed, PreflightError
from k8simg.clouds.openstack import identity, quota, security
from k8simg.clouds.openstack.compute import Flavor
from k8simg.clouds.openstack.driver import OpenStackCloud
from k8simg.model import ports
from k8simg.model.credential import CloudCredential
from k8simg.model.plan import initial_nodes
from k8simg.ops.deploy import Deployment
from k8simg.pki import cluster_pki
from tests.clouds.openstack.fake import FakeCloud
from tests.conftest import edit_cluster as edit
from tests.conftest import write_cluster
from tests.support import FAILED_CONSOLE

IMAGE = "k8simg-1.35.2"
SMALL = {"flavor": "k8s.small", "volume_size_gb": 10}


@pytest.fixture
def fake():
    cloud = FakeCloud()
    cloud.add_flavor("k8s.small", vcpus=2, ram=2048)
    cloud.add_flavor("k8s.tiny", vcpus=1, ram=512)
    cloud.add_external_network("public")
    cloud.add_image(IMAGE, properties={"k8simg_kubernetes_binaries": "included"})
    return cloud


def cluster(tmp_path, name="c1", masters=3, workers=2, **over):
    settings = {"cloud": "fake", "image": IMAGE,
                "topology": "ha" if masters == 3 else "one-master",
                "masters": {"count": masters, **SMALL}, "workers": {"count": workers, **SMALL},
                "bastion": {"enabled": True, "flavor": "k8s.tiny"}}
    return write_cluster(tmp_path / name, **{**settings, **over})


def on(fake, cd, *, dry_run=False, messages=None, project="p1", user="u1",
       admin=False) -> Deployment:
    """The deployment of ``cd`` on the fake, as ``k8simg deploy`` makes it (no poll sleeps)."""
    ledger = Ledger(dry_run=dry_run, progress=(messages.append if messages is not None
                                               else lambda _m: None))
    cloud = OpenStackCloud(cd, cd.load(), "fake", ledger=ledger, poll=0,
                           connect=lambda _name: fake.connect(project_id=project, user_id=user,
                                                              admin=admin))
    return Deployment(cd, cloud)


# -- pure logic ------------------------------------------------------------------------------

def test_security_group_rules_wanted(tmp_path):
    cfg = cluster(tmp_path).load()
    ids = {g: f"id-{g}" for g in security.wanted_groups(cfg)}
    rules = security.wanted_rules(cfg, ids)
    assert sorted(rules) == ["bastion", "masters", "nodes", "workers"]
    assert rules["nodes"] == {
        ("udp", ports.FLANNEL_VXLAN, ports.FLANNEL_VXLAN, None, "id-nodes"),
        ("icmp", None, None, None, "id-nodes"),
        ("tcp", ports.KUBELET, ports.KUBELET, None, "id-masters"),
        ("tcp", 22, 22, None, "id-bastion")}  # SSH only from the bastion
    assert rules["masters"] == {
        ("tcp", 6443, 6443, "0.0.0.0/0", None), ("tcp", 6443, 6443, "10.0.0.0/24", None),
        ("tcp", 2379, 2380, None, "id-masters"),  # etcd among the members only
        ("tcp", 2379, 2379, None, "id-bastion")}  # the upgrade's tunnel, client port only
    assert rules["bastion"] == {("tcp", 22, 22, "0.0.0.0/0", None)}
    # NodePorts from the node subnet alone: the Services' load balancers' members
    assert rules["workers"] == {("tcp", 30000, 32767, "10.0.0.0/24", None),
                                ("udp", 30000, 32767, "10.0.0.0/24", None)}


def test_security_group_rules_for_dedicated_etcd_without_bastion(tmp_path):
    cfg = cluster(tmp_path, etcd={"placement": "dedicated", "count": 3, "flavor": "k8s.small",
                                  "volume_size_gb": 10},
                  bastion={"enabled": False}, api={"allowed_cidrs": ["198.51.100.0/24"]}).load()
    ids = {g: f"id-{g}" for g in security.wanted_groups(cfg)}
    rules = security.wanted_rules(cfg, {**ids, "bastion": None})
    assert sorted(rules) == ["etcds", "masters", "nodes", "workers"]
    assert rules["etcds"] == {("tcp", 2379, 2379, None, "id-masters"),
                              ("tcp", 2379, 2380, None, "id-etcds")}
    assert rules["masters"] == {("tcp", 6443, 6443, "198.51.100.0/24", None),
                                ("tcp", 6443, 6443, "10.0.0.0/24", None)}  # no etcd port
    assert not any(r[1] == 22 for group in rules.values() for r in group)


def test_quota_arithmetic(tmp_path):
    cfg = cluster(tmp_path).load()
    nodes = initial_nodes(cfg)  # 3 masters, 2 workers, a bastion
    flavors = {"k8s.small": Flavor("s", "k8s.small", 2, 2048),
               "k8s.tiny": Flavor("t", "k8s.tiny", 1, 512)}
    need = quota.needed(cfg, nodes, flavors, volumes_present={"c1-master-0-storage"},
                        floating_ips_present=1, load_balancers_present=1)
    # floating IPs: the API's, the bastion's and ingress-nginx's; load balancers: the API's
    # and ingress-nginx's (one of each there already)
    assert need == {("compute", "instances"): 6, ("compute", "cores"): 11,
                    ("compute", "ram"): 5 * 2048 + 512, ("volume", "volumes"): 4,
                    ("volume", "gigabytes"): 40, ("network", "floating_ips"): 2,
                    ("load_balancer", "load_balancers"): 1}

    class Nova:  # a quota set with usage, as openstacksdk has it
        instances, cores, ram = 8, -1, 100000
        usage = {"instances": 3, "cores": 40, "ram": 0}

    neutron = type("Neutron", (), {"floating_ips": {"limit": 3, "used": 2}})()
    cinder = type("Cinder", (), {"volumes": 10, "gigabytes": 40,
                                 "usage": {"volumes": 0, "gigabytes": 1}})()
    octavia = type("Octavia", (), {"load_balancers": {"limit": 1, "used": 1}})()
    problems = quota.shortfalls(need, {"compute": Nova(), "volume": cinder, "network": neutron,
                                       "load_balancer": octavia},
                                {"load_balancers": ["the API's", "ingress-nginx's Service"]})
    assert problems == [
        ("quota.instances", "the cluster needs 6 more, the project has 5 left (limit 8, in use 3)"),
        ("quota.gigabytes", "the cluster needs 40 more, the project has 39 left (limit 40, in use 1)"),
        ("quota.floating_ips", "the cluster needs 2 more, the project has 1 left (limit 3, in use 2)"),
        ("quota.load_balancers", "the cluster needs 1 more (of the API's, ingress-nginx's "
                                 "Service), the project has 0 left (limit 1, in use 1)"),
    ]  # cores are unlimited (-1)
    # a cloud whose Octavia quota cannot be read: not checked, not guessed
    assert [f for f, _ in quota.shortfalls(need, {"compute": Nova(), "volume": cinder,
                                                  "network": neutron})] == \
        ["quota.instances", "quota.gigabytes", "quota.floating_ips"]


# -- against the fake --------------------------------------------------------------------------

def test_preflight_names_every_problem_and_creates_nothing(fake, tmp_path):
    cd = cluster(tmp_path, image="no-such-image", openstack={"external_network": "nope"},
                 workers__flavor="k8s.huge")
    with pytest.raises(PreflightError) as e:
        on(fake, cd).deploy()
    fields = [f for f, _ in e.value.problems]
    assert fields == ["image", "workers.flavor", "openstack.external_network"]
    assert fake.calls == []


@pytest.mark.parametrize("properties,why", [
    ({"hw_disk_bus": "scsi"}, "k8simg-odd: hw_disk_bus is 'scsi': a node finds its storage "
                              "volume as its second virtio disk (/dev/vdb)"),
    ({"k8simg_kubernetes_version": "1.34.4"},
     "image k8simg-odd carries Kubernetes 1.34.4, cluster.yaml's kubernetes_version is 1.35.2"),
])
def test_preflight_reads_the_images_properties(fake, tmp_path, properties, why):
    fake.add_image("k8simg-odd", properties={"k8simg_kubernetes_binaries": "included",
                                             **properties})
    cd = cluster(tmp_path, image="k8simg-odd", kubernetes_version="1.35.2")
    with pytest.raises(PreflightError) as e:
        on(fake, cd).deploy()
    [(field, message)] = e.value.problems
    assert field == "image" and message.startswith(why), message
    assert fake.calls == []


def test_preflight_checks_the_services_load_balancer_provider(fake, tmp_path):
    cd = cluster(tmp_path, openstack={"lb_provider": "ovn"})
    with pytest.raises(PreflightError) as e:
        on(fake, cd).deploy()
    assert e.value.problems == [("openstack.lb_provider", "Octavia in cloud 'fake' has no "
                                 "provider 'ovn' (it has: amphora, octavia)")]
    fake.lb_providers["ovn"] = "Octavia OVN driver."
    assert on(fake, cd).deploy().changes  # now it goes
    assert fake.calls


def test_preflight_names_a_cloud_without_octavia(fake, tmp_path):
    fake.lb_providers = None
    with pytest.raises(PreflightError) as e:
        on(fake, cluster(tmp_path)).deploy()
    [(field, why)] = e.value.problems
    assert field == "openstack" and why.startswith(
        "no load-balancer service (Octavia) in cloud 'fake': the API's load balancer and the "
        "Services' need one")
    assert fake.calls == []


def test_preflight_counts_floating_ips_against_the_quota(fake, tmp_path):
    """The floating-IP quota is read from Neutron's quota details (``floating_ips``); the
    cluster needs the API's, the bastion's and the one the cloud controller gives
    ingress-nginx's Service."""
    fake.quota["floating_ips"] = 2
    with pytest.raises(PreflightError, match=r"quota.floating_ips: the cluster needs 3 more "
                                             r"\(of the API's, the bastion's, ingress-nginx's "
                                             r"Service\), the project has 2 left"):
        on(fake, cluster(tmp_path)).deploy()
    assert fake.calls == []


def fake_service_load_balancer(fake, cd, namespace, service):
    """A Service's load balancer and floating IP as the cloud controller makes them
    (kubernetes/cloud-provider-openstack pkg/openstack/loadbalancer.go), on the fake."""
    conn = fake.connect()
    cluster_name = f"{cd.load().name}-{cd.state.uid}"
    subnet = next(iter(conn.network.subnets(name=f"{cd.load().name}-subnet")))
    port = conn.network.create_port(name=f"octavia-lb-{service}", network_id=subnet.network_id,
                                    fixed_ips=[{"subnet_id": subnet.id}])
    lb = conn.load_balancer.create_load_balancer(
        name=f"kube_service_{cluster_name}_{namespace}_{service}", vip_port_id=port.id,
        description=f"Kubernetes external service {namespace}/{service} from cluster "
                    f"{cluster_name}")
    public = conn.network.find_network("public")
    fip = conn.network.create_ip(
        floating_network_id=public.id, port_id=port.id,
        description=f"Floating IP for Kubernetes external service {namespace}/{service} from "
                    f"cluster {cluster_name}")
    return lb, fip


def test_preflight_counts_load_balancers_against_octavias_quota(fake, tmp_path):
    """Octavia gives limits, not usage: the project's load balancers are counted. One short
    (the API's fits, ingress-nginx's would not) is refused before anything is made; once the
    cluster exists with both, nothing more is needed."""
    fake.quota["load_balancers"] = 1
    cd = cluster(tmp_path)
    with pytest.raises(PreflightError) as e:
        on(fake, cd).deploy()
    assert e.value.problems == [("quota.load_balancers", "the cluster needs 2 more (of the "
                                 "API's, ingress-nginx's Service), the project has 1 left "
                                 "(limit 1, in use 0)")]
    assert fake.calls == []
    fake.quota["load_balancers"] = 2
    assert on(fake, cd).deploy().ingress is None  # not made yet
    # the cloud controller makes ingress-nginx's, as it names it; then a re-run needs none,
    # and says where the ingress is
    _, fip = fake_service_load_balancer(fake, cd, "ingress-nginx", "ingress-nginx-controller")
    again = on(fake, cd).deploy()
    assert again.changes == [] and again.ingress == fip.floating_ip_address
    # another Service's load balancer is not the ingress
    cd2 = cluster(tmp_path, name="c2", masters=1, workers=1, topology="one-master")
    fake.quota["load_balancers"] = 10
    on(fake, cd2).deploy()
    fake_service_load_balancer(fake, cd2, "default", "web")
    assert on(fake, cd2).cloud.ingress_address() is None


def test_deploy_builds_the_cluster_and_a_second_run_changes_nothing(fake, tmp_path, clock):
    cd = cluster(tmp_path)
    plan = on(fake, cd, dry_run=True).deploy()
    assert fake.calls == []  # the plan touched nothing
    planned = {(c.action, c.kind, c.name) for c in plan.changes}
    result = on(fake, cd).deploy()
    made = {(c.action, c.kind, c.name) for c in result.changes}
    assert planned <= made | {("create", "router interface", "c1-router")}
    have = fake.inventory("p1")
    nodes = [f"c1-master-{i}" for i in range(3)] + ["c1-worker-0", "c1-worker-1"]
    assert have["servers"] == sorted(nodes + ["c1-bastion"])
    assert have["volumes"] == sorted(f"{n}-storage" for n in nodes)
    assert have["security_groups"] == sorted(f"c1-{g}" for g in
                                             ("nodes", "masters", "workers", "bastion"))
    uid = cd.state.uid
    assert have["server_groups"] == [f"c1-masters-{uid}", f"c1-workers-{uid}"]
    assert have["load_balancers"] == ["c1-api"]
    assert have["members"] == [f"c1-master-{i}" for i in range(3)]
    assert have["floating_ips"] == [f"k8simg cluster c1: {r} k8simg-uid={uid}"
                                    for r in ("api", "bastion")]
    assert have["application_credentials"] == [f"c1-k8simg-{uid}"]
    # every resource carries the UID: a tag, or Cinder metadata
    conn = fake.connect()
    for kind in ("networks", "subnets", "routers", "security_groups", "floating_ips"):
        assert all(f"k8simg-uid-{uid}" in o.tags for o in fake.objs[kind].values()
                   if fake.owner[o.id] == "p1" and not getattr(o, "router_external", False)
                   ), kind
    assert all(f"k8simg-uid-{uid}" in s.tags for s in conn.compute.servers())
    assert all(v.metadata["k8simg-uid"] == uid for v in conn.block_storage.volumes())
    # every server ACTIVE, on its planned port, with the cluster's tag
    statuses = {n.name: (n.state, n.address) for n in on(fake, cd).cloud.nodes()}
    assert statuses["c1-master-0"] == ("ready", "10.0.0.10")
    assert statuses["c1-worker-1"] == ("ready", "10.0.0.101")
    # the API's floating IP went into the state and the API server's certificate
    fip = cd.state.api_floating_ip
    assert fip and result.api_endpoint == f"https://{fip}:6443"
    assert cd.state.bastion_floating_ip
    assert all(fip in r.sans for r in cluster_pki(cd).records()
               if r.instance.id.startswith("apiserver@"))
    # a second run, and a plan after it, change nothing
    calls = len(fake.calls)
    assert on(fake, cd).deploy().changes == []
    assert on(fake, cd, dry_run=True).deploy().changes == []
    assert fake.calls[calls:] == []


def test_masters_ports_and_volumes_are_made_before_the_first_master_boots(fake, tmp_path,
                                                                         monkeypatch):
    """Masters are placed one after another (hard anti-affinity); what their placement does
    not depend on is made for all of them at once first, and each waits for the one before
    it to be on a host, not for it to be ACTIVE."""
    made = []
    new = fake.new
    servers = fake.objs["servers"]

    def recording(kind, project_id, **attrs):
        made.append((kind, attrs.get("name")))
        if kind == "servers":  # how the masters before it stand, as it is created
            made.append([(s.name, s.status, s.task_state) for s in servers.values()
                         if "master" in s.name])
        return new(kind, project_id, **attrs)

    monkeypatch.setattr(fake, "new", recording)
    on(fake, cluster(tmp_path)).deploy()
    first_master = made.index(("servers", "c1-master-0"))
    before = {m for m in made[:first_master] if isinstance(m, tuple)}
    for i in range(3):
        assert ("volumes", f"c1-master-{i}-storage") in before, made
        assert ("ports", f"c1-master-{i}-port") in before, made
    masters = [m[1] for m in made if isinstance(m, tuple) and m[0] == "servers"
               and "master" in m[1]]
    assert masters == [f"c1-master-{i}" for i in range(3)]  # still in turn
    # each created once the one before it was placed on a host (Nova's task state past
    # scheduling), while that one was still building
    second = made.index(("servers", "c1-master-1")) + 1
    assert made[second] == [("c1-master-0", "BUILD", "spawning")], made[second]
    third = made.index(("servers", "c1-master-2")) + 1
    assert ("c1-master-1", "BUILD", "spawning") in made[third], made[third]
    # and every one of them ACTIVE when the deploy is done
    assert {s.name: s.status for s in servers.values() if "master" in s.name} == \
        dict.fromkeys((f"c1-master-{i}" for i in range(3)), "ACTIVE")


def test_destroy_takes_the_cluster_and_nothing_else(fake, tmp_path):
    """``prod``'s destroy leaves ``prod-eu`` (a name that extends it) and another project's
    resources alone, in a cloud that refuses deletions in the wrong order."""
    prod = cluster(tmp_path, "prod", masters=1, workers=1)
    prod_eu = cluster(tmp_path, "prod-eu", masters=1, workers=1)
    other = cluster(tmp_path, "theirs", masters=1, workers=1)
    fake.add_image(IMAGE, properties={"k8simg_kubernetes_binaries": "included"}, owner="p2")
    on(fake, prod).deploy()
    on(fake, prod_eu).deploy()
    on(fake, other, project="p2").deploy()
    # Left untagged by kills between a create and its tagging: prod's own group (its UID in
    # the description), and a network named as prod names its own, without the UID.
    net = fake.connect(project_id="p1").network
    net.create_security_group(name="prod-etcds",
                              description=f"k8simg cluster prod: etcds k8simg-uid={prod.state.uid}")
    net.create_network(name="prod-scratch", description="someone else's")
    # A restore killed with its snapshot staged: prod's restore container (its UID in the
    # name), beside prod-eu's and the operator's own snapshots
    staged = {("p1", f"k8simg-restore-{prod.state.uid}"): {"prod-master-3/etcd.db.enc": b"x"},
              ("p1", f"k8simg-restore-{prod_eu.state.uid}"): {"prod-eu-master-3/x": b"y"},
              ("p1", "snapshots"): {"prod-etcd-20261130T000000Z-r1.snapshot": b"z"}}
    fake.containers.update(copy.deepcopy(staged))
    before_eu, before_other = fake.inventory("p1"), fake.inventory("p2")
    calls = len(fake.calls)

    dry = on(fake, prod, dry_run=True)
    plan = dry.destroy()
    planned = {(c.kind, c.name) for c in dry.ledger.changes if c.action == "delete"}
    assert plan.removed == [] and plan.left == []  # a plan removes nothing
    assert fake.inventory("p1") == before_eu and len(fake.calls) == calls
    assert {("server", "prod-master-0"), ("server", "prod-worker-0"), ("server", "prod-bastion"),
            ("network", "prod-net"), ("subnet", "prod-subnet"), ("router", "prod-router"),
            ("load-balancer", "prod-api"), ("volume", "prod-master-0-storage"),
            ("security-group", "prod-nodes"), ("security-group", "prod-etcds"),
            ("server-group", f"prod-masters-{prod.state.uid}"),
            ("application-credential", f"prod-k8simg-{prod.state.uid}"),
            ("swift-object", f"k8simg-restore-{prod.state.uid}/prod-master-3/etcd.db.enc"),
            ("swift-container", f"k8simg-restore-{prod.state.uid}")} <= planned
    assert fake.containers == staged
    assert not any(name.startswith(("prod-eu", "theirs")) for _, name in planned)

    gone = on(fake, prod).destroy()
    assert gone.left == []
    left = fake.inventory("p1")
    for kind, names in left.items():
        assert not any((n.startswith("prod-") and not n.startswith("prod-eu")
                        and n != "prod-scratch") or n == "prod"
                       for n in names), (kind, names)
    for kind, names in before_eu.items():  # prod-eu's resources are all still there
        assert [n for n in names if "prod-eu" in n] == [n for n in left.get(kind, [])
                                                        if "prod-eu" in n], kind
    assert "prod-etcds" not in left["security_groups"] and "prod-scratch" in left["networks"]
    assert fake.inventory("p2") == before_other
    del staged[("p1", f"k8simg-restore-{prod.state.uid}")]
    assert fake.containers == staged  # only prod's restore container went
    assert prod.state.api_floating_ip is None and prod.state.bastion_floating_ip is None
    assert not CloudCredential.path(prod.path).exists()  # its secret went with it
    assert CloudCredential.path(prod_eu.path).exists()


def test_a_server_that_errors_fails_its_wait_at_once(fake, tmp_path):
    fake.fail_servers.add("c1-worker-1")
    cd = cluster(tmp_path)
    d = on(fake, cd)
    d.cloud.timeout = d.cloud.scope.timeout = 3600  # a wait that ran to its timeout would hang
    with pytest.raises(CloudError, match=r"server c1-worker-1 went to ERROR: No valid host"):
        d.deploy()


def test_the_clusters_availability_zone_holds_its_servers_and_their_volumes(fake, tmp_path):
    cd = cluster(tmp_path, masters=1, workers=1, openstack={"availability_zone": "az-2"})
    # a zone Cinder does not have (their names often differ from Nova's): refused up front
    fake.zones["compute"].add("az-2")
    with pytest.raises(PreflightError) as e:
        on(fake, cd).deploy()
    assert e.value.problems == [("openstack.availability_zone", "Cinder in cloud 'fake' has "
                                 "no available zone 'az-2' (it has: nova)")]
    assert fake.calls == []
    fake.zones["volume"].add("az-2")
    on(fake, cd).deploy()
    assert {s.name: s.availability_zone for s in fake.objs["servers"].values()} == \
        {"c1-master-0": "az-2", "c1-worker-0": "az-2", "c1-bastion": "az-2"}
    assert {v.name: v.availability_zone for v in fake.objs["volumes"].values()} == \
        {"c1-master-0-storage": "az-2", "c1-worker-0-storage": "az-2"}


def test_a_failed_first_boot_is_reported_from_novas_console_then_replaced(fake, tmp_path):
    """ACTIVE is not up: deploy reads each server's console log from Nova and reports a node
    whose Ignition failed with the lines that say why; `nodes` shows it failed; the next
    deploy replaces it."""
    cd = cluster(tmp_path, masters=1, workers=1)
    fake.console["c1-worker-0"] = FAILED_CONSOLE
    messages = []
    with pytest.raises(NodeFailed) as failed:
        on(fake, cd, messages=messages).deploy()
    assert [name for name, _ in failed.value.failures] == ["c1-worker-0"]
    report = failed.value.failures[0][1]
    assert report.startswith("its first boot failed; Nova's console log: k8simg console ")
    assert "no space left on device" in report and "k8simg: failed unit: ignition-files" in report
    assert "Linux version" not in report  # the lines that matter, not the whole console
    assert "c1-master-0: first boot done" in messages
    states = {n.name: n.state for n in on(fake, cd).cloud.nodes()}
    assert states == {"c1-bastion": "ready", "c1-master-0": "ready", "c1-worker-0": "failed"}
    # the verdict stays with the server, whatever its console's tail shows later
    del fake.console["c1-worker-0"]
    assert {n.name: n.state for n in on(fake, cd).cloud.nodes()}["c1-worker-0"] == "failed"
    result = on(fake, cd).deploy()
    assert [(c.action, c.kind, c.name, c.detail) for c in result.changes
            if c.kind == "server"] == [("replace", "server", "c1-worker-0",
                                        "its first boot failed (its console showed it)"),
                                       ("create", "server", "c1-worker-0", "worker, k8s.small")]
    assert {n.state for n in on(fake, cd).cloud.nodes()} == {"ready"}
    assert on(fake, cd).deploy().changes == []


def test_a_node_whose_console_never_ends_its_boot_times_out_with_its_last_lines(fake, tmp_path):
    cd = cluster(tmp_path, masters=1, workers=0, topology="single", bastion={"enabled": False})
    fake.console["c1-master-0"] = "[  OK  ] Finished ignition-fetch.service\nwaiting for /dev/vdb\n"
    d = on(fake, cd)
    d.cloud.timeout = d.cloud.scope.timeout = 0.3
    with pytest.raises(NodeFailed, match=r"(?s)c1-master-0 failed: no login prompt after 0 s.*"
                                         r"waiting for /dev/vdb"):
        d.deploy()
    assert [n.state for n in on(fake, cd).cloud.nodes()] == ["booting"]


def test_a_server_booted_before_verdicts_were_kept_is_not_waited_for(fake, tmp_path):
    """A server of a cluster deployed before k8simg kept boot verdicts, booted long ago, whose
    console's tail has moved past its login prompt: running, so not waited for again."""
    cd = cluster(tmp_path, masters=1, workers=0, topology="single", bastion={"enabled": False})
    on(fake, cd).deploy()
    (srv,) = fake.objs["servers"].values()
    del srv.metadata["k8simg-boot"]
    srv.created_at = "2026-01-01T00:00:00Z"
    fake.console[srv.name] = "[12345.6] cni0: port 1(veth0) entered forwarding state\n"
    assert [n.state for n in on(fake, cd).cloud.nodes()] == ["ACTIVE"]
    assert on(fake, cd).deploy().changes == []
    assert srv.metadata["k8simg-boot"] == "ready"
    srv.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # a young one: booting
    del srv.metadata["k8simg-boot"]
    assert [n.state for n in on(fake, cd).cloud.nodes()] == ["booting"]


def test_a_node_that_timed_out_stays_unproven_however_old(fake, tmp_path):
    """A server made by a k8simg that keeps verdicts carries k8simg-boot=booting from its
    create: a boot that never showed its login prompt is never taken as up for its age."""
    cd = cluster(tmp_path, masters=1, workers=0, topology="single", bastion={"enabled": False})
    fake.console["c1-master-0"] = "[  OK  ] Finished ignition-fetch.service\n"
    d = on(fake, cd)
    d.cloud.timeout = d.cloud.scope.timeout = 0.2
    with pytest.raises(NodeFailed):
        d.deploy()
    (srv,) = fake.objs["servers"].values()
    assert srv.metadata["k8simg-boot"] == "booting"
    srv.created_at = "2026-01-01T00:00:00Z"
    assert [n.state for n in on(fake, cd).cloud.nodes()] == ["booting"]
    d = on(fake, cd)
    d.cloud.timeout = d.cloud.scope.timeout = 0.2
    with pytest.raises(NodeFailed, match="no login prompt"):
        d.deploy()


def test_a_cloud_that_keeps_no_console_log_takes_active_as_booted(fake, tmp_path):
    cd = cluster(tmp_path, masters=1, workers=1)
    fake.console.update({"c1-master-0": None, "c1-worker-0": None})
    messages = []
    on(fake, cd, messages=messages).deploy()
    assert sum("gives no console log" in m for m in messages) == 1, messages
    assert {n.state for n in on(fake, cd).cloud.nodes()} == {"ready"}
    with pytest.raises(CloudError, match="keeps no console log for server 'c1-worker-0'"):
        on(fake, cd).cloud.console_log("c1-worker-0")


def test_deploy_ends_at_the_api_servers_readyz_through_its_floating_ip(fake, tmp_path,
                                                                         monkeypatch):
    """Wiring only (the gate itself meets a TLS server in tests/ops/deploy/test_readyz.py):
    after etcd's gate, with an image that carries Kubernetes, the admin identity asks the API's
    floating IP; without Kubernetes in the image, nobody is asked."""
    from k8simg.ops import readyz

    asked = []
    monkeypatch.setattr(Deployment, "wait_healthy", lambda self: None)  # etcd's: elsewhere
    monkeypatch.setattr(readyz, "wait_ready", lambda url, ca, crt, key, **kw: asked.append(
        (url, ca.name, crt.name, kw["timeout"])) or 1.0)
    cd = cluster(tmp_path, masters=1, workers=1)
    d = on(fake, cd)
    d.health_timeout = 120
    d.deploy()
    assert asked == [(f"https://{cd.state.api_floating_ip}:6443", "ca.crt", "admin.crt", 120)]
    asked.clear()
    d = on(fake, cd)
    d.health_timeout, d.wait_api = 120, False  # --no-wait-api: etcd's gate alone
    d.deploy()
    assert asked == []
    fake.add_image("k8simg-no-kube", properties={"k8simg_kubernetes_binaries": "absent"})
    asked.clear()
    d = on(fake, edit(cd, image="k8simg-no-kube"))
    d.health_timeout = 120
    d.deploy()
    assert asked == []


def test_a_server_stuck_on_delete_fails_at_once(fake, tmp_path):
    cd = cluster(tmp_path, masters=1, workers=1)
    on(fake, cd).deploy()
    fake.stuck_on_delete.add("c1-worker-0")
    d = on(fake, cd)
    d.cloud.scope.timeout = 3600
    with pytest.raises(CloudError, match=r"server c1-worker-0 to go went to ERROR"):
        d.cloud.delete_node("c1-worker-0")


def test_a_server_in_error_is_replaced_though_nova_keeps_it_in_error_while_deleting(fake, tmp_path):
    """Nova keeps an ERROR server's status while its delete is under way (task_state says
    so): the next deploy waits for it to go, then boots the node again."""
    fake.fail_servers.add("c1-worker-1")
    cd = cluster(tmp_path)
    with pytest.raises(CloudError, match="went to ERROR"):
        on(fake, cd).deploy()
    fake.fail_servers.clear()
    fake.slow_deletes["c1-worker-1"] = 3  # three reads in ERROR, deleting
    result = on(fake, cd).deploy()
    assert ("replace", "server", "c1-worker-1") in {(c.action, c.kind, c.name)
                                                     for c in result.changes}
    assert {n.name: n.state for n in on(fake, cd).cloud.nodes()}["c1-worker-1"] == "ready"


def test_a_server_in_error_whose_delete_fails_is_said(fake, tmp_path, monkeypatch):
    from k8simg.clouds.openstack import compute

    monkeypatch.setattr(compute, "DELETE_GRACE_S", 0)
    cd = cluster(tmp_path, masters=1, workers=1)
    fake.fail_servers.add("c1-worker-0")
    with pytest.raises(CloudError, match="went to ERROR"):
        on(fake, cd).deploy()
    fake.stuck_on_delete.add("c1-worker-0")
    d = on(fake, cd)
    d.cloud.scope.timeout = 3600
    with pytest.raises(CloudError, match=r"server c1-worker-0 to go went to ERROR"):
        d.cloud.delete_node("c1-worker-0")


def owned(fake, uid) -> dict[str, set[str]]:
    """The IDs of everything that carries ``uid``, by kind."""
    tag = f"k8simg-uid-{uid}"
    out = {}
    for kind, objs in fake.objs.items():
        ids = {o.id for o in objs.values()
               if tag in (getattr(o, "tags", None) or [])
               or (getattr(o, "metadata", None) or {}).get("k8simg-uid") == uid
               or (getattr(o, "name", None) or "").endswith(uid)}
        if ids:
            out[kind] = ids
    return out


def test_two_clusters_of_one_name_keep_to_their_own(fake, tmp_path):
    """Two directories named ``twin`` in one project, one deployed with admin credentials
    (which list every project's Neutron and Octavia resources), next to a third ``twin`` in
    another project: each destroy takes exactly its own; a lost credential file replaces only
    its own cluster's credential."""
    a = cluster(tmp_path / "a", "twin", masters=1, workers=1)
    b = cluster(tmp_path / "b", "twin", masters=1, workers=1)
    c = cluster(tmp_path / "c", "twin", masters=1, workers=1)
    fake.add_image(IMAGE, properties={"k8simg_kubernetes_binaries": "included"}, owner="p2")
    on(fake, a, admin=True).deploy()
    on(fake, b).deploy()
    on(fake, c, project="p2").deploy()
    assert len({a.state.uid, b.state.uid, c.state.uid}) == 3
    of_a, of_b, of_c = (owned(fake, x.state.uid) for x in (a, b, c))
    assert of_a.keys() == of_b.keys() == of_c.keys() and not (set.union(*of_a.values())
                                                             & set.union(*of_b.values()))
    # a second run of each changes nothing: nothing of the other is taken for its own
    assert on(fake, a, admin=True).deploy().changes == []
    assert on(fake, b).deploy().changes == []

    b_cred = CloudCredential.load(b.path).application_credential_id
    CloudCredential.path(b.path).unlink()
    changes = on(fake, b).deploy().changes
    assert [(x.action, x.kind) for x in changes] == [("replace", "application credential")]
    creds = {o.id for o in fake.objs["application_credentials"].values()}
    assert CloudCredential.load(a.path).application_credential_id in creds
    assert b_cred not in creds and CloudCredential.load(b.path).application_credential_id in creds

    of_b, of_c = owned(fake, b.state.uid), owned(fake, c.state.uid)
    assert on(fake, a, admin=True).destroy().left == []
    assert owned(fake, a.state.uid) == {}
    assert owned(fake, b.state.uid) == of_b and owned(fake, c.state.uid) == of_c
    assert on(fake, b).destroy().left == []
    assert owned(fake, c.state.uid) == of_c


def legacy_cluster(fake, tmp_path):
    """A cluster as k8simg made them before UIDs (tagged k8simg-cluster-<name>, volumes
    marked in metadata, floating IPs by description, server groups by name, no UID)."""
    old = cluster(tmp_path / "x", "old", masters=1, workers=1)
    on(fake, old).deploy()
    uid = old.state.uid
    tag, legacy = f"k8simg-uid-{uid}", "k8simg-cluster-old"
    # Turn it into what an earlier k8simg left: the old tag, no UID anywhere.
    for kind in ("networks", "subnets", "routers", "ports", "security_groups", "floating_ips",
                 "servers", "load_balancers"):
        for o in fake.objs[kind].values():
            if tag in (o.tags or []):
                o.tags = [legacy if t == tag else t for t in o.tags]
                if kind == "floating_ips":
                    o.description = "old-" + o.description.split(": ")[1].split()[0]
                elif kind in ("networks", "subnets", "routers", "ports", "security_groups"):
                    o.description = ""
    for v in fake.objs["volumes"].values():
        v.metadata = {legacy: "true", "k8simg-node": v.metadata["k8simg-node"]}
    for g in fake.objs["server_groups"].values():
        g.name = g.name.removesuffix(f"-{uid}")
    old.state.path.write_text(old.state.path.read_text().replace(f'  "uid": "{uid}",\n', ""))
    assert old.state.uid is None
    return old, uid


def test_a_cluster_from_before_uids_is_adopted_and_nothing_else(fake, tmp_path):
    """Made as k8simg made clusters before UIDs (tagged k8simg-cluster-<name>, volumes marked
    in metadata, floating IPs by description): its next deploy adopts exactly what carries the
    old tag and no UID, creates nothing it already has, and destroy then takes it all."""
    old, uid = legacy_cluster(fake, tmp_path)
    legacy = "k8simg-cluster-old"
    # Another same-named cluster's network (it carries a UID) and an untagged look-alike.
    conn = fake.connect()
    theirs = conn.network.create_network(name="old-net")
    conn.network.set_tags(theirs, [legacy, "k8simg-uid-00000000000000ff"])
    stray = conn.network.create_security_group(name="old-masters")
    before = {k: {o.id for o in v.values()} for k, v in fake.objs.items()}

    with pytest.raises(CloudError, match="no UID yet"):
        on(fake, old).cloud.nodes()  # (destroy would adopt, then destroy)
    result = on(fake, old).deploy()
    new_uid = old.state.uid
    assert new_uid and new_uid != uid and not old.state.adopting
    adopted = {(c.kind, c.name) for c in result.changes if c.detail.startswith("adopted")}
    assert ("server", "old-master-0") in adopted and ("volume", "old-master-0-storage") in adopted
    assert ("load balancer", "old-api") in adopted and ("network", "old-net") in adopted
    made = [(c.action, c.kind, c.name) for c in result.changes if c.action == "create"]
    # nothing is made anew: the old server groups (no mark; they hold only its servers) are
    # kept, so anti-affinity spans the old members and new ones
    assert made == [], made
    new_tag = f"k8simg-uid-{new_uid}"
    assert new_tag not in fake.objs["networks"][theirs.id].tags
    assert new_tag not in (fake.objs["security_groups"][stray.id].tags or [])
    assert on(fake, old).deploy().changes == []

    assert on(fake, old).destroy().left == []
    left = fake.inventory("p1")
    left.pop("images")
    left.pop("security_group_rules")  # the stray group's default egress rules
    # what was the cluster's is gone, the old server groups (known by their members) too
    assert left == {"networks": ["old-net"], "security_groups": ["old-masters"]}
    assert theirs.id in fake.objs["networks"] and stray.id in fake.objs["security_groups"]
    assert before  # (the IDs before the adoption, for a failing assertion's context)


def test_a_role_the_token_lacks_is_refused_before_anything_is_made(fake, tmp_path):
    cd = cluster(tmp_path, masters=1, workers=0, topology="single",
                 openstack__credential_roles=["member", "admin"])
    fake.token_roles = {"member", "reader"}
    with pytest.raises(PreflightError, match="(?s)nothing was created.*openstack.credential_"
                                             "roles: role 'admin' is not one you hold .*you "
                                             "hold: member, reader"):
        on(fake, cd).deploy()
    assert fake.calls == []


def test_keystone_refusing_a_role_is_said_with_its_reason(fake, tmp_path, monkeypatch):
    """When the token does not say its roles, Keystone decides: its refusal (the one seen on a
    real cloud: "Could not find role assignment with role ...") ends in a message naming the
    field and the roles, not a traceback."""
    cd = cluster(tmp_path, masters=1, workers=0, topology="single",
                 openstack__credential_roles=["member", "admin"])
    monkeypatch.setattr(identity, "token_roles", lambda _s: None)
    with pytest.raises(CloudError, match="openstack.credential_roles: Keystone refused the "
                                         "application credential .* with roles member, admin"
                                         ".*Could not find role assignment with role: admin"):
        on(fake, cd).deploy()
    assert not CloudCredential.path(cd.path).exists()


def test_a_config_change_makes_exactly_the_nodes_it_touches_stale(fake, tmp_path):
    """Desired state is image + rendered config: each server keeps its config's digest, the
    state each file's; a plan names the nodes whose config would change, and which files."""
    from k8simg.model.credential import CloudCredential
    from k8simg.ops.upgrade import Upgrade
    from tests.conftest import edit_cluster

    cd = cluster(tmp_path)
    on(fake, cd).deploy()
    masters = [f"c1-master-{i}" for i in range(3)]

    def plan():
        return {s.old: s.why for s in Upgrade(on(fake, cd, dry_run=True)).plan()[1]}

    assert plan() == {}
    servers = {s.name: s for s in on(fake, cd).cloud.nodes()}
    assert all(len(s.config) == 64 for s in servers.values())  # each keeps its config's digest

    # An extra API name: the masters' serving certificate, and nothing on any other node. The
    # plan renews it only in a scratch copy: the cluster's PKI is as it was.
    pki_before = {p: p.read_bytes() for p in cd.pki_dir.rglob("*") if p.is_file()}
    edit_cluster(cd, api__extra_sans=["api.example.com"])
    why = plan()
    assert sorted(why) == masters
    assert all(w.image is None and "/etc/kubernetes/pki/apiserver.crt" in w.config
               for w in why.values()), why
    assert {p: p.read_bytes() for p in cd.pki_dir.rglob("*") if p.is_file()} == pki_before
    assert not list(cd.path.glob(".plan-*"))
    # deploy creates nothing and says which nodes are stale; `upgrade` is what replaces them
    result = on(fake, cd).deploy()
    assert [c for c in result.changes if c.action != "update"] == []
    assert [x.node for x in result.stale] == masters
    assert any("3 node(s) are stale" in w and "k8simg upgrade" in w for w in result.warnings)
    assert sorted(plan()) == masters  # the certificates are renewed now; still to roll
    d = on(fake, cd)  # what `k8simg nodes` shows
    shown = {n: x.reason() for n, x in d.desired_state(d.cloud.nodes()).items()}
    assert shown["c1-master-0"].startswith("stale (config: ") and "apiserver.crt" in \
        shown["c1-master-0"]
    assert shown["c1-worker-0"] == shown["c1-bastion"] == "current"
    expires = {n: x.expires for n, x in d.desired_state(d.cloud.nodes()).items()}
    assert expires["c1-bastion"] is None  # it carries no certificate
    assert expires["c1-master-0"] and expires["c1-worker-0"]  # the first leaf's, per node

    # The cluster's DNS domain reaches every kubelet: every node but the bastion.
    edit_cluster(cd, network__dns_domain="k8s.example")
    assert sorted(plan()) == masters + ["c1-worker-0", "c1-worker-1"]
    edit_cluster(cd, network__dns_domain="cluster.local")
    assert sorted(plan()) == masters

    # The cloud credential reaches only the add-on values the masters apply: no worker rolls.
    edit_cluster(cd, api__extra_sans=[])
    cred = CloudCredential.load(cd.path)
    CloudCredential(cred.auth_url, cred.application_credential_id, "another secret",
                    cred.region).save(cd.path)
    why = plan()
    assert sorted(why) == masters
    assert all(w.config == ("/etc/k8simg/addons.yaml", "/etc/kubernetes/pki/apiserver.crt")
               for w in why.values()), why


@pytest.mark.parametrize("image_version,running,wanted,allow,words", [
    ("1.34.5", None, "1.35.2", False,
     "image k8simg-1.35.2 carries Kubernetes 1.34.5, cluster.yaml's kubernetes_version is "
     "1.35.2"),
    ("1.35.2", "1.33.7", "1.35.2", False, "1.33.7 -> 1.35.2 skips a minor version"),
    ("1.34.5", "1.35.2", "1.34.5", False, "1.35.2 -> 1.34.5 is a downgrade: refused unless "
                                          "--allow-downgrade"),
    ("1.34.5", "1.35.2", "1.34.5", True, None),
    ("1.35.2", "1.34.5", "1.35.2", False, None),  # one minor up: the normal upgrade
])
def test_the_skew_policy_refuses_before_anything_changes(fake, tmp_path, image_version,
                                                        running, wanted, allow, words):
    from k8simg.ops.upgrade import Upgrade, UpgradeAborted

    cd = cluster(tmp_path, masters=1, workers=1, topology="one-master")
    on(fake, cd).deploy()
    assert cd.state.kubernetes_version == "1.35.2"  # what the deploy left running
    for img in fake.objs["images"].values():
        img.properties["k8simg_kubernetes_version"] = image_version
    if running:
        cd.state.set_kubernetes_version(running)
    from tests.conftest import edit_cluster

    edit_cluster(cd, kubernetes_version=wanted)
    calls = len(fake.calls)
    up = Upgrade(on(fake, cd), skip_unobservable=True, allow_downgrade=allow)
    if words is None:
        up.plan()  # allowed: planned
        return
    with pytest.raises(UpgradeAborted, match="version skew policy refuses") as e:
        up.run()
    assert words in str(e.value) and e.value.exit_code == 4
    assert fake.calls[calls:] == []  # nothing changed


def test_expiring_certificates_are_renewed_and_their_nodes_replaced(fake, tmp_path):
    """Made with 20-day leaves; then 365 asked for: `upgrade --renew-certs-within 30` renews
    exactly the expiring leaves and replaces every node carrying one; afterwards nothing
    expires within 30 days and nothing is stale."""
    from click.testing import CliRunner

    from k8simg.cli import cli
    from k8simg.ops.upgrade import Upgrade
    from tests.conftest import edit_cluster

    cd = cluster(tmp_path, masters=1, workers=1, topology="one-master",
                 pki={"key_algorithm": "ecdsa-p256", "ca_validity_days": 3650,
                      "cert_validity_days": 20})
    on(fake, cd).deploy()
    r = CliRunner().invoke(cli, ["pki", "check-expiration", str(cd.path), "--days", "30"])
    assert r.exit_code == 3, r.output
    import datetime as dt

    d = on(fake, cd)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=21)
    for x in d.desired_state(d.cloud.nodes()).values():  # each node's first expiry
        assert x.expires is None or dt.datetime.fromisoformat(x.expires) < soon, x
    # With 20-day leaves, renewing within 30 days would renew (and roll) them every run:
    # refused, naming the setting.
    from k8simg.errors import PkiError

    with pytest.raises(PkiError, match=r"pki.cert_validity_days: 20 days: a renewal within 30 "
                                       "days would leave every leaf expiring"):
        Upgrade(on(fake, cd, dry_run=True), renew_certs_within=30).plan()
    edit_cluster(cd, pki__cert_validity_days=365)
    planned = Upgrade(on(fake, cd, dry_run=True), renew_certs_within=30).plan()[1]
    assert [s.old for s in planned] == ["c1-master-0", "c1-worker-0"]  # the bastion has none
    assert CliRunner().invoke(cli, ["pki", "check-expiration", str(cd.path), "--days", "30"]
                              ).exit_code == 3  # the plan renewed nothing
    events = []
    result = Upgrade(on(fake, cd), renew_certs_within=30, skip_unobservable=True,
                     events=lambda e, d: events.append((e, d))).run()
    renewed = next(d for e, d in events if e == "certificates-renewed")["certificates"]
    assert "apiserver@c1-master-0" in renewed and not any("ca" == c for c in renewed)
    assert [old for old, _ in result.replaced] == ["c1-master-0", "c1-worker-0"]
    r = CliRunner().invoke(cli, ["pki", "check-expiration", str(cd.path), "--days", "30"])
    assert r.exit_code == 0, r.output
    assert Upgrade(on(fake, cd, dry_run=True), renew_certs_within=30).plan()[1] == []


def test_a_cluster_from_before_uids_is_destroyed_without_a_deploy(fake, tmp_path):
    """destroy gives it its UID and adopts what carries its old tag (and no other cluster's),
    then removes exactly that: no deploy needed first (it might not succeed any more)."""
    old, _ = legacy_cluster(fake, tmp_path)
    conn = fake.connect()
    theirs = conn.network.create_network(name="old-net")
    conn.network.set_tags(theirs, ["k8simg-cluster-old", "k8simg-uid-00000000000000ff"])
    calls = len(fake.calls)
    with pytest.raises(CloudError, match=r"no UID yet .* \(or `k8simg destroy`\) on it once, "
                                         "not as a plan"):
        on(fake, old, dry_run=True).destroy()
    assert len(fake.calls) == calls and old.state.uid is None  # the plan changed nothing
    assert on(fake, old).destroy().left == []
    assert old.state.uid and not old.state.adopting
    left = fake.inventory("p1")
    left.pop("images")
    assert left == {"networks": ["old-net"]} and theirs.id in fake.objs["networks"]
