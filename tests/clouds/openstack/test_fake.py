"""The OpenStack fake behaves like the cloud where k8simg depends on it: status transitions
across reads, refusals as the services make them, quotas that follow what exists."""

import base64
import threading

import pytest
from openstack import exceptions as osx

from tests.clouds.openstack.fake import FakeCloud, FakeConnection

TAG = "k8simg-cluster-demo"


@pytest.fixture
def fake():
    conn = FakeConnection()
    conn.add_flavor("k8s.small", vcpus=2, ram=4096)
    conn.add_external_network("public")
    conn.add_image("node-image", properties={"k8simg_image_sha256": "ab" * 32})
    conn.compute.default_microversion = "2.67"
    return conn


def network(conn, name="demo", cidr="10.0.0.0/24", router=True):
    n = conn.network
    net = n.create_network(name=f"{name}-net")
    sub = n.create_subnet(name=f"{name}-subnet", network_id=net.id, ip_version=4, cidr=cidr,
                          gateway_ip=cidr.replace("0/24", "1"), dns_nameservers=["9.9.9.9"],
                          allocation_pools=[{"start": cidr.replace("0/24", "200"),
                                             "end": cidr.replace("0/24", "254")}])
    if router:
        ext = n.find_network("public")
        r = n.create_router(name=f"{name}-router", external_gateway_info={"network_id": ext.id})
        n.add_interface_to_router(r, sub.id)
    return net, sub


def port(conn, sub, name, address):
    return conn.network.create_port(name=name, network_id=sub.network_id,
                                    fixed_ips=[{"subnet_id": sub.id, "ip_address": address}])


def server(conn, name, p, volume=None):
    image = conn.image.find_image("node-image")
    flavor = conn.compute.find_flavor("k8s.small")
    bdm = [{"boot_index": 0, "uuid": image.id, "source_type": "image",
            "destination_type": "local", "delete_on_termination": True}]
    if volume is not None:
        bdm.append({"boot_index": -1, "uuid": volume.id, "source_type": "volume",
                    "destination_type": "volume", "delete_on_termination": False})
    return conn.compute.create_server(
        name=name, image_id=image.id, flavor_id=flavor.id, networks=[{"port": p.id}],
        config_drive=True, user_data=base64.b64encode(b"{}").decode(),
        block_device_mapping_v2=bdm, scheduler_hints={}, tags=[TAG],
        metadata={"k8simg-role": "master"})


def test_server_goes_from_build_to_active_across_reads(fake):
    _net, sub = network(fake)
    p = port(fake, sub, "m0-port", "10.0.0.10")
    s = server(fake, "m0", p)
    assert s.status == "BUILD"
    assert fake.compute.get_server(s.id).status == "BUILD"
    active = fake.compute.get_server(s.id)
    assert active.status == "ACTIVE"
    assert active.addresses == {"demo-net": [{"version": 4, "addr": "10.0.0.10",
                                              "OS-EXT-IPS:type": "fixed",
                                              "OS-EXT-IPS-MAC:mac_addr": p.mac_address}]}
    assert s.status == "BUILD"  # what the caller holds is a copy
    assert [x.name for x in fake.compute.servers(name="^m0$", tags=TAG)] == ["m0"]
    assert list(fake.compute.servers(name="^m$")) == []
    bound = next(fake.network.ports(name="m0-port"))
    assert (bound.device_id, bound.device_owner) == (s.id, "compute:nova")


def test_failed_server_goes_to_error_with_its_fault(fake):
    _net, sub = network(fake)
    fake.fail_servers.add("m0")
    s = server(fake, "m0", port(fake, sub, "m0-port", "10.0.0.10"))
    states = [fake.compute.get_server(s.id) for _ in range(3)]
    assert [x.status for x in states] == ["BUILD", "ERROR", "ERROR"]
    assert "No valid host" in states[-1].fault["message"]


def test_deleted_server_goes_at_the_next_read_and_releases_port_and_volume(fake):
    _net, sub = network(fake)
    b = fake.block_storage
    vol = b.create_volume(name="m0-storage", size=10, metadata={TAG: "true"})
    assert vol.status == "creating"
    assert b.get_volume(vol.id).status == "available"
    s = server(fake, "m0", port(fake, sub, "m0-port", "10.0.0.10"), volume=vol)
    assert b.get_volume(vol.id).status == "in-use"
    fake.compute.delete_server(s)
    with pytest.raises(osx.BadRequestException):  # the server still has it: not gone yet
        b.delete_volume(vol)
    assert fake.compute.find_server(s.id, ignore_missing=True) is None
    with pytest.raises(osx.NotFoundException):
        fake.compute.get_server(s.id)
    assert b.get_volume(vol.id).status == "available"
    assert next(fake.network.ports(name="m0-port")).device_id == ""
    b.delete_volume(vol)
    assert list(b.volumes()) == []


def test_server_stuck_on_delete_goes_to_error_and_stays(fake):
    _net, sub = network(fake)
    fake.stuck_on_delete.add("m0")
    s = server(fake, "m0", port(fake, sub, "m0-port", "10.0.0.10"))
    fake.compute.delete_server(s)
    assert fake.compute.find_server(s.id).status == "ERROR"
    assert fake.inventory()["servers"] == ["m0"]


def test_unknown_method_and_unknown_keyword_both_raise(fake):
    with pytest.raises(NotImplementedError, match=r"fake openstack: compute\.rebuild_server "):
        fake.compute.rebuild_server("x")
    with pytest.raises(NotImplementedError, match="fake openstack: connection.orchestration"):
        fake.orchestration  # noqa: B018
    with pytest.raises(NotImplementedError, match=r"fake openstack: object_store\.upload_object"):
        fake.object_store.upload_object("c", "o")
    with pytest.raises(TypeError):
        fake.network.create_network(name="n", tags=[TAG])  # Neutron takes no tags in a POST
    with pytest.raises(TypeError):
        fake.compute.servers(status="ACTIVE")  # a filter the fake does not model
    with pytest.raises(TypeError):
        fake.network.ports(fixed_ip="10.0.0.1")
    assert fake.calls == []  # refused before anything was recorded
    p = port(fake, network(fake)[1], "m0-port", "10.0.0.10")
    fake.compute.default_microversion = "2.1"  # server tags need 2.52, as in Nova
    with pytest.raises(osx.BadRequestException, match="tags"):
        server(fake, "m0", p)
    assert "servers" not in fake.inventory()


def test_neutron_refuses_to_delete_what_is_in_use(fake):
    n = fake.network
    net, sub = network(fake, router=False)
    p = port(fake, sub, "m0-port", "10.0.0.10")
    sg = n.create_security_group(name="demo-nodes", description="nodes")
    other = n.create_port(name="other", network_id=net.id, security_group_ids=[sg.id])
    assert other.fixed_ips == [{"subnet_id": sub.id, "ip_address": "10.0.0.200"}]  # the pool
    with pytest.raises(osx.ConflictException):
        n.delete_network(net)
    with pytest.raises(osx.ConflictException):
        n.delete_subnet(sub)
    with pytest.raises(osx.ConflictException):
        n.delete_security_group(sg)
    with pytest.raises(osx.ConflictException):  # the address is taken
        port(fake, sub, "again", "10.0.0.10")
    n.delete_port(p)
    n.delete_port(other)
    n.delete_security_group(sg)
    n.delete_network(net)  # its unused subnet goes with it, as in Neutron
    assert set(fake.inventory()) == {"flavors", "images", "networks", "subnets"}
    assert fake.inventory()["networks"] == ["public"]


def test_router_interface_and_floating_ip_ordering(fake):
    n = fake.network
    net, sub = network(fake, router=False)
    ext = n.find_network("public")
    vip = port(fake, sub, "demo-api-vip", "10.0.0.5")
    with pytest.raises(osx.NotFoundException, match="not reachable"):
        n.create_ip(floating_network_id=ext.id, port_id=vip.id, description="demo-api")
    r = n.create_router(name="demo-router", external_gateway_info={"network_id": ext.id})
    n.add_interface_to_router(r, sub.id)
    fip = n.create_ip(floating_network_id=ext.id, port_id=vip.id, description="demo-api")
    assert (fip.port_id, fip.fixed_ip_address, fip.floating_ip_address) == \
        (vip.id, "10.0.0.5", "203.0.113.3")  # .1 gateway, .2 the router's
    iface = next(n.ports(device_id=r.id, device_owner="network:router_interface"))
    with pytest.raises(osx.ConflictException):
        n.delete_port(iface)
    with pytest.raises(osx.ConflictException):
        n.remove_interface_from_router(r, port=iface.id)
    with pytest.raises(TypeError):  # openstacksdk 4 calls it port, not port_id
        n.remove_interface_from_router(r, port_id=iface.id)
    with pytest.raises(osx.ConflictException):
        n.delete_router(r)
    assert n.update_ip(fip, port_id=None).port_id is None
    n.remove_interface_from_router(r, port=iface.id)
    n.delete_router(r)
    assert [x.description for x in n.ips(project_id="p1")] == ["demo-api"]


def test_neutron_resources_start_untagged_and_set_tags_tags_them(fake):
    n = fake.network
    net, sub = network(fake, router=False)
    assert net.tags == [] and sub.tags == []
    assert list(n.networks(tags=[TAG])) == []
    tagged = n.set_tags(net, [*net.tags, TAG])
    assert tagged.tags == [TAG] and net.tags == [TAG]
    assert [x.name for x in n.networks(tags=[TAG])] == ["demo-net"]
    assert [x.name for x in n.networks(tags=TAG, project_id="p1")] == ["demo-net"]
    assert list(n.subnets(tags=[TAG])) == []


def test_security_group_rules_defaults_and_duplicates(fake):
    n = fake.network
    sg = n.create_security_group(name="demo-masters", description="masters")
    assert sorted(r.ether_type for r in n.security_group_rules(security_group_id=sg.id,
                                                              direction="egress")) == ["IPv4", "IPv6"]
    rule = dict(security_group_id=sg.id, direction="ingress", ethertype="IPv4", protocol="tcp",
                port_range_min=6443, port_range_max=6443, remote_ip_prefix="0.0.0.0/0",
                remote_group_id=None)
    r = n.create_security_group_rule(**rule)
    with pytest.raises(osx.ConflictException, match="already exists"):
        n.create_security_group_rule(**rule)
    with pytest.raises(osx.BadRequestException):
        n.create_security_group_rule(**{**rule, "remote_group_id": sg.id})
    assert [x.id for x in n.security_group_rules(security_group_id=sg.id,
                                                 direction="ingress")] == [r.id]
    n.delete_security_group_rule(r, ignore_missing=True)
    n.delete_security_group_rule(r, ignore_missing=True)  # gone already: no error
    assert list(n.security_group_rules(security_group_id=sg.id, direction="ingress")) == []


def test_load_balancer_children_are_refused_while_it_is_pending(fake):
    lbs = fake.load_balancer
    _net, sub = network(fake)
    vip = port(fake, sub, "demo-api-vip", "10.0.0.5")
    lb = lbs.create_load_balancer(name="demo-api", vip_port_id=vip.id, vip_subnet_id=sub.id,
                                  vip_address="10.0.0.5", tags=[TAG], description="api")
    assert lb.provisioning_status == "PENDING_CREATE"
    with pytest.raises(osx.ConflictException, match="immutable"):
        lbs.create_listener(name="l", load_balancer_id=lb.id, protocol="TCP",
                            protocol_port=6443, tags=[TAG])
    assert lbs.get_load_balancer(lb.id).provisioning_status == "ACTIVE"
    listener = lbs.create_listener(name="l", load_balancer_id=lb.id, protocol="TCP",
                                   protocol_port=6443, tags=[TAG])
    with pytest.raises(osx.ConflictException, match="immutable"):
        lbs.create_pool(name="p", listener_id=listener.id, protocol="TCP",
                        lb_algorithm="ROUND_ROBIN", tags=[TAG])
    assert lbs.get_load_balancer(lb.id).provisioning_status == "ACTIVE"
    pool = lbs.create_pool(name="p", listener_id=listener.id, protocol="TCP",
                           lb_algorithm="ROUND_ROBIN", tags=[TAG])
    assert pool.health_monitor_id is None
    lbs.get_load_balancer(lb.id)
    lbs.create_member(pool, name="m0", address="10.0.0.10", protocol_port=6443,
                      subnet_id=sub.id, tags=[TAG])
    assert lbs.get_load_balancer(lb.id).provisioning_status == "ACTIVE"
    hm = lbs.create_health_monitor(pool_id=pool.id, name="hm", type="TCP", delay=5, timeout=5,
                                   max_retries=3, tags=[TAG])
    lbs.get_load_balancer(lb.id)
    assert next(lbs.pools(name="p", loadbalancer_id=lb.id)).health_monitor_id == hm.id
    assert [m.name for m in lbs.members(pool)] == ["m0"]
    lbs.delete_member(next(lbs.members(pool)), pool)
    assert lbs.find_load_balancer(lb.id).provisioning_status == "ACTIVE"
    assert list(lbs.members(pool)) == []
    lbs.delete_load_balancer(lb, cascade=True)
    assert fake.inventory()["load_balancers"] == ["demo-api"]  # PENDING_DELETE
    assert lbs.find_load_balancer(lb.id, ignore_missing=True) is None
    assert not {"load_balancers", "listeners", "pools", "health_monitors"} & set(fake.inventory())


def test_quota_usage_follows_what_exists_and_limits_are_enforced(fake):
    _net, sub = network(fake)
    fake.quota["instances"] = 2
    pid = fake.current_project_id
    assert fake.compute.get_quota_set(pid, usage=True).usage == {"instances": 0, "cores": 0, "ram": 0}
    s0 = server(fake, "m0", port(fake, sub, "m0-port", "10.0.0.10"))
    server(fake, "m1", port(fake, sub, "m1-port", "10.0.0.11"))
    qs = fake.compute.get_quota_set(pid, usage=True)
    assert (qs.instances, qs.usage) == (2, {"instances": 2, "cores": 4, "ram": 8192})
    with pytest.raises(osx.ForbiddenException, match="instances"):
        server(fake, "m2", port(fake, sub, "m2-port", "10.0.0.12"))
    fake.block_storage.create_volume(name="v", size=7, metadata={})
    vq = fake.block_storage.get_quota_set(pid, usage=True)
    assert (vq.volumes, vq.gigabytes, vq.usage) == (10, 1000, {"volumes": 1, "gigabytes": 7})
    fake.network.create_ip(floating_network_id=fake.network.find_network("public").id,
                           description="demo-bastion")
    nq = fake.network.get_quota(pid, details=True)
    assert nq.floating_ips == {"limit": 50, "used": 1, "reserved": 0}
    assert nq.ports["used"] == 4  # three nodes' ports and the router interface
    fake.compute.delete_server(s0)
    assert fake.compute.find_server(s0.id) is None
    assert fake.compute.get_quota_set(pid, usage=True).usage["instances"] == 1


def test_images_find_duplicates_and_upload_properties(fake, tmp_path):
    qcow2 = tmp_path / "node.qcow2"
    qcow2.write_bytes(b"QFI\xfb" + b"\0" * 60)
    img = fake.image.create_image("node-image", filename=str(qcow2), disk_format="qcow2",
                                  container_format="bare", tags=["k8simg"],
                                  meta={"k8simg_image_sha256": "cd" * 32, "os_distro": "debian"},
                                  sha256="cd" * 32, allow_duplicates=True, wait=True, timeout=60)
    assert fake.image.get_image(img.id).status == "active"
    assert img.properties["k8simg_image_sha256"] == "cd" * 32 and img.os_distro == "debian"
    assert [i.id for i in fake.image.images(tag="k8simg", owner="p1")] == [img.id]
    with pytest.raises(osx.DuplicateResource):
        fake.image.find_image("node-image", ignore_missing=True)
    fake.image.delete_image(img, ignore_missing=True)
    assert fake.image.find_image("node-image").properties == {"k8simg_image_sha256": "ab" * 32}


def test_application_credential_secret_is_shown_once(fake):
    ident = fake.identity
    cred = ident.create_application_credential("u1", name="demo-k8simg", unrestricted=False,
                                               description="ccm")
    assert len(cred.id) == 32 and len(cred.secret) == 86
    assert [(c.name, c.secret) for c in ident.application_credentials("u1", name="demo-k8simg")] \
        == [("demo-k8simg", None)]
    with pytest.raises(osx.ConflictException):
        ident.create_application_credential("u1", name="demo-k8simg")
    ident.delete_application_credential("u1", cred)
    assert list(ident.application_credentials("u1")) == []
    assert fake.config.get_auth_args()["auth_url"] == "http://keystone.example/v3"
    assert fake.config.get_region_name() == "RegionOne"


def test_projects_share_a_cloud_and_only_an_admin_lists_the_other(fake):
    other = fake.cloud.connect(project_id="p2", user_id="u2")
    network(other, name="theirs", router=False)
    network(fake, name="ours", router=False)
    assert [x.name for x in fake.network.networks()] == ["public", "ours-net"]
    admin = fake.cloud.connect(project_id="p1", admin=True)
    assert sorted(x.name for x in admin.network.networks(project_id="p2")) == ["theirs-net"]
    with pytest.raises(osx.NotFoundException):
        fake.network.delete_network(next(admin.network.networks(project_id="p2")),
                                    ignore_missing=False)
    assert fake.inventory(project_id="p2") == {"networks": ["theirs-net"],
                                               "subnets": ["theirs-subnet"]}


def test_only_mutating_calls_are_recorded(fake):
    list(fake.network.networks(name="x"))
    fake.compute.find_flavor("k8s.small")
    fake.network.get_quota("p1", details=True)
    assert fake.calls == []
    network(fake, router=False)
    assert fake.calls == [("network", "create_network"), ("network", "create_subnet")]


def test_concurrent_callers_get_distinct_addresses(fake):
    _net, sub = network(fake)
    errors, made = [], []

    def create(i):
        try:
            made.append(fake.network.create_port(name=f"p{i}", network_id=sub.network_id))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({p.fixed_ips[0]["ip_address"] for p in made}) == 20


def test_a_cloud_can_be_built_without_a_connection():
    cloud = FakeCloud()
    cloud.add_image("shared", owner="admin", visibility="public")
    assert cloud.connect(project_id="p9").image.find_image("shared").visibility == "public"
    assert cloud.inventory() == {"images": ["shared"]}
