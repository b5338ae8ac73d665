"""Removing everything a cluster has on an OpenStack cloud, in dependency order, and nothing
that is not provably its own: tagged with the cluster's tag, or (Neutron resources a kill left
untagged) named exactly as this cluster names them; server groups and the credential, which
carry no tags, by their exact names."""

from k8simg.clouds.base import DestroyResult
from k8simg.clouds.openstack import compute, identity, loadbalancer, security
from k8simg.clouds.openstack.connect import Scope
from k8simg.model.credential import CloudCredential


def own_names(s: Scope, node_names: list[str]) -> set[str]:
    """The names of the Neutron resources this cluster makes (its nodes' ports included)."""
    names = {f"{s.name}-{x}" for x in ("net", "subnet", "router", "api-vip")}
    names |= {security.group_name(s.name, g) for g in security.GROUPS}
    return names | {f"{n}-port" for n in node_names}


def destroy(s: Scope, parallel, *, node_names: list[str], cluster_path) -> DestroyResult:
    """Remove the cluster's resources: load balancer, servers, volumes, floating IPs (the
    operator's ``api.floating_ip`` only detached), router, ports, subnet, network, security
    groups, server groups, the application credential. Every failure is reported in
    :attr:`DestroyResult.left` and destroy goes on with the rest; in a dry run it only
    records what it would remove.

    :param node_names: the cluster's nodes as planned (their ports' names).
    """
    conn, tag = s.conn, s.tag
    n, c = conn.network, conn.compute
    removed, left = [], []

    def attempt(what: str, fn) -> None:
        s.record("delete", *what.split(" ", 1))
        if s.dry:
            return
        try:
            fn()
            removed.append(what)
        except Exception as e:  # reported, and destroy goes on with the rest
            left.append(f"{what}: {e}")

    for lb in conn.load_balancer.load_balancers(tags=tag):
        attempt(f"load-balancer {lb.name}", lambda lb=lb: loadbalancer.delete_load_balancer(s, lb))
    parallel([lambda srv=srv: attempt(f"server {srv.name}", lambda: compute.delete_server(s, srv))
              for srv in c.servers(tags=tag)])
    for v in s.volumes():
        attempt(f"volume {v.name}", lambda v=v: compute.delete_volume(s, v))
    pid = n.get_project_id()
    names = own_names(s, node_names)
    fixed = str(s.cfg.api.floating_ip) if s.cfg.api.floating_ip else None
    for ip in [ip for ip in n.ips(project_id=pid) if tag in (ip.tags or []) or
               ip.description in (f"{s.name}-api", f"{s.name}-bastion")]:
        if ip.floating_ip_address == fixed:
            continue  # the operator's own address: only detached
        attempt(f"floating-ip {ip.floating_ip_address}", lambda ip=ip: n.delete_ip(ip))
    if fixed:
        for ip in n.ips(floating_ip_address=fixed):
            if ip.port_id:
                s.record("update", "floating IP", fixed, "detached (api.floating_ip is kept)")
                if not s.dry:
                    n.update_ip(ip, port_id=None)
    for r in [r for r in n.routers(project_id=pid) if s.owns(r, names)]:
        def drop_router(r=r):
            for p in n.ports(device_id=r.id, device_owner="network:router_interface"):
                n.remove_interface_from_router(r, port=p.id)
            n.delete_router(r)
        attempt(f"router {r.name}", drop_router)
    for p in [p for p in n.ports(project_id=pid) if s.owns(p, names) and not p.device_owner]:
        attempt(f"port {p.name}", lambda p=p: n.delete_port(p))
    for sub in [x for x in n.subnets(project_id=pid) if s.owns(x, names)]:
        attempt(f"subnet {sub.name}", lambda sub=sub: n.delete_subnet(sub))
    for net in [x for x in n.networks(project_id=pid) if s.owns(x, names)]:
        attempt(f"network {net.name}", lambda net=net: n.delete_network(net))
    for sg in [g for g in n.security_groups(project_id=pid) if s.owns(g, names)]:
        attempt(f"security-group {sg.name}", lambda sg=sg: n.delete_security_group(sg))
    for g in c.server_groups():
        if g.name in compute.server_group_names(s.name):
            attempt(f"server-group {g.name}", lambda g=g: c.delete_server_group(g))
    user = conn.current_user_id
    for cred in conn.identity.application_credentials(
            user, name=identity.credential_name(s.name)):
        attempt(f"application-credential {cred.name}",
                lambda cred=cred: conn.identity.delete_application_credential(user, cred))
    if not s.dry and not left:
        CloudCredential.forget(cluster_path)
    return DestroyResult(removed, left)
