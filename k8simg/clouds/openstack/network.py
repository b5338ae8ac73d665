"""Neutron: the cluster's network, subnet and router, the nodes' ports at their planned
addresses, and the floating IPs (the API's on its VIP port, the bastion's)."""

from dataclasses import dataclass

from k8simg.clouds.base import CloudError
from k8simg.clouds.openstack.connect import Scope
from k8simg.model.plan import api_vip, gateway


@dataclass(frozen=True)
class Subnet:
    """The cluster's subnet (None fields in a dry run, before it exists)."""

    id: str | None
    network_id: str | None


def find_subnet(s: Scope):
    """The cluster's subnet as deploy made it, or None (nothing is created)."""
    sname = f"{s.name}-subnet"
    return s.mine(s.conn.network.subnets(name=sname, project_id=s.project_id), "subnet", sname)


def ensure_network(s: Scope) -> Subnet:
    """The cluster's network and its subnet; planned nodes take fixed addresses low in the
    node CIDR, DHCP hands out the top fifth."""
    n = s.conn.network
    name = f"{s.name}-net"
    net = s.mine(n.networks(name=name, project_id=s.project_id), "network", name)
    if net is None:
        s.record("create", "network", name)
        if s.dry:
            s.record("create", "subnet", f"{s.name}-subnet", str(s.cfg.network.node_cidr))
            return Subnet(None, None)
        net = s.tagged(n.create_network(name=name, description=s.describe("network")),
                       record=False)
    else:
        s.tagged(net)
    sname = f"{s.name}-subnet"
    sub = s.mine(n.subnets(name=sname, network_id=net.id, project_id=s.project_id), "subnet",
                 sname)
    if sub is not None:
        s.tagged(sub)
    else:
        s.record("create", "subnet", sname, str(s.cfg.network.node_cidr))
        if s.dry:
            return Subnet(None, net.id)
        cidr = s.cfg.network.node_cidr
        hosts = cidr.num_addresses - 2  # counted, never enumerated
        first = cidr.network_address + 1
        sub = n.create_subnet(
            name=sname, network_id=net.id, ip_version=4, cidr=str(cidr),
            description=s.describe("node subnet"),
            gateway_ip=str(gateway(s.cfg)),
            dns_nameservers=[str(d) for d in s.cfg.network.dns_nameservers],
            allocation_pools=[{"start": str(first + hosts + (-hosts // 5)),
                               "end": str(first + hosts - 1)}])
        s.tagged(sub, record=False)
    return Subnet(sub.id, net.id)


def ensure_router(s: Scope, external_network_id: str | None, sub: Subnet) -> None:
    """The router to the external network, with an interface on the cluster's subnet."""
    n = s.conn.network
    name = f"{s.name}-router"
    router = s.mine(n.routers(name=name, project_id=s.project_id), "router", name)
    if router is not None:
        s.tagged(router)
    else:
        s.record("create", "router", name)
        if s.dry:
            s.record("create", "router interface", name)
            return
        router = n.create_router(name=name, description=s.describe("router"),
                                 external_gateway_info={"network_id": external_network_id})
        s.tagged(router, record=False)
    if sub.id is None:
        s.record("create", "router interface", name)
        return
    if not list(n.ports(device_id=router.id, network_id=sub.network_id)):
        s.record("create", "router interface", name, f"{s.name}-subnet")
        if not s.dry:
            n.add_interface_to_router(router, sub.id)  # subnet (positional: its keyword was renamed)


def ensure_port(s: Scope, sub: Subnet, name: str, address, **attrs):
    """The port ``name`` at the fixed ``address`` on the cluster's subnet.

    :returns: the port, or None in a dry run where it does not exist.
    """
    n = s.conn.network
    port = None
    if sub.id is not None:
        port = s.mine(n.ports(name=name, network_id=sub.network_id, project_id=s.project_id),
                      "port", name)
        if port is not None:
            s.tagged(port)
    if port is None:
        s.record("create", "port", name, str(address))
        if not s.dry:
            port = s.tagged(n.create_port(
                name=name, network_id=sub.network_id, description=s.describe(name),
                fixed_ips=[{"subnet_id": sub.id, "ip_address": str(address)}], **attrs),
                record=False)
    return port


def ensure_api_address(s: Scope, sub: Subnet, external_network_id: str | None
                       ) -> tuple[str | None, str | None]:
    """The API's VIP port (fixed at the planned VIP) and its floating IP: the operator's
    (``api.floating_ip``) or one allocated for the cluster.

    :returns: ``(VIP port ID, floating IP address)``; None for what a dry run would create.
    :raises CloudError: when ``api.floating_ip`` is not one of the project's floating IPs.
    """
    n = s.conn.network
    vip = ensure_port(s, sub, f"{s.name}-api-vip", api_vip(s.cfg))
    if s.cfg.api.floating_ip:
        fip = s.one(n.ips(floating_ip_address=str(s.cfg.api.floating_ip),
                          project_id=s.project_id), "floating IP", str(s.cfg.api.floating_ip))
        if fip is None:
            raise CloudError(f"api.floating_ip: {s.cfg.api.floating_ip} is not a floating IP "
                             f"of this project in {s.where}")
    else:
        fip = s.mine(n.ips(description=s.describe("api"), project_id=s.project_id),
                     "floating IP", f"{s.name}-api")
        if fip is not None and not s.dry:
            s.tagged(fip)
    if fip is None:
        s.record("create", "floating IP", f"{s.name}-api")
        if s.dry:
            return None, None
        fip = n.create_ip(floating_network_id=external_network_id, port_id=vip.id,
                          description=s.describe("api"))
        s.tagged(fip, record=False)
    elif vip is not None and fip.port_id != vip.id:
        s.record("update", "floating IP", fip.floating_ip_address, "-> API VIP")
        if not s.dry:
            n.update_ip(fip, port_id=vip.id)
    return (vip.id if vip is not None else None), fip.floating_ip_address


def ensure_bastion_address(s: Scope, port_id: str | None, external_network_id: str | None
                           ) -> str | None:
    """The bastion's floating IP, on ``port_id`` (moved there when the bastion was replaced:
    same address for the operators).

    :returns: its address, or None in a dry run where it does not exist.
    """
    n = s.conn.network
    name = f"{s.name}-bastion"
    fip = s.mine(n.ips(description=s.describe("bastion"), project_id=s.project_id),
                 "floating IP", name)
    if fip is None:
        s.record("create", "floating IP", name)
        if s.dry:
            return None
        fip = n.create_ip(floating_network_id=external_network_id, port_id=port_id,
                          description=s.describe("bastion"))
        s.tagged(fip, record=False)
    elif port_id is not None and fip.port_id != port_id:
        s.record("update", "floating IP", name, "to the new bastion")
        if not s.dry:
            fip = n.update_ip(fip, port_id=port_id)
    return fip.floating_ip_address
