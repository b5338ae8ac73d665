"""Octavia: the API's load balancer on the VIP port, a TCP listener on the API port, a pool
with exactly the masters as members and a health monitor. Every change waits out the load
balancer's PENDING states (Octavia refuses the next change until then)."""

from k8simg.clouds.openstack.connect import Scope
from k8simg.model.plan import Node, api_vip


def lb_name(cluster: str) -> str:
    """The name of cluster ``cluster``'s API load balancer."""
    return f"{cluster}-api"


def wait_active(s: Scope, lb_id: str) -> None:
    """:raises CloudError: when the load balancer goes to ERROR."""
    lbs = s.conn.load_balancer
    s.wait(f"load balancer {lb_name(s.name)}", lambda: lbs.get_load_balancer(lb_id),
             attribute="provisioning_status", ok={"ACTIVE"}, failures={"ERROR"})


def provider_problems(s: Scope) -> list[tuple[str, str]]:
    """Octavia answers, and has the provider ``openstack.lb_provider`` names (the cloud
    controller makes the Services' load balancers with it)."""
    from openstack import exceptions as osx

    want = s.cfg.openstack.lb_provider
    try:
        have = sorted(p.name for p in s.conn.load_balancer.providers())
    except (osx.EndpointNotFound, osx.SDKException) as e:
        return [("openstack", f"no load-balancer service (Octavia) in {s.where}: the API's "
                              f"load balancer and the Services' need one ({e})")]
    if want not in have:
        return [("openstack.lb_provider", f"Octavia in {s.where} has no provider {want!r} "
                                          f"(it has: {', '.join(have) or 'none'})")]
    return []


def delete_load_balancer(s: Scope, lb) -> None:
    """Delete ``lb`` with everything under it and wait until it is gone."""
    lbs = s.conn.load_balancer
    lbs.delete_load_balancer(lb, cascade=True)
    s.wait(f"load balancer {lb.name} to go",
             lambda: lbs.find_load_balancer(lb.id, ignore_missing=True),
             attribute="provisioning_status", ok={"DELETED", "GONE"}, failures={"ERROR"})


def ensure_load_balancer(s: Scope, *, subnet_id: str | None, vip_port_id: str | None,
                         masters: list[Node]) -> None:
    """The API load balancer with exactly ``masters`` as its pool's members."""
    lbs = s.conn.load_balancer
    port = s.cfg.api.port
    name = lb_name(s.name)
    lb = s.one(lbs.load_balancers(name=name, tags=s.tag, project_id=s.project_id),
               "load balancer", name)
    if lb is None:
        s.record("create", "load balancer", name, str(api_vip(s.cfg)))
        if s.dry:
            for kind, what in (("listener", f"{name}-{port}"), ("pool", f"{name}-masters"),
                               ("health monitor", f"{name}-hm")):
                s.record("create", kind, what)
            for m in masters:
                s.record("create", "pool member", m.name)
            return
        lb = lbs.create_load_balancer(
            name=name, vip_port_id=vip_port_id, vip_subnet_id=subnet_id,
            vip_address=str(api_vip(s.cfg)), tags=[s.tag],
            description=f"k8simg cluster {s.name}: Kubernetes API")
    if not s.dry:
        wait_active(s, lb.id)
    lname = f"{name}-{port}"
    listener = s.one(lbs.listeners(name=lname, load_balancer_id=lb.id), "listener", lname)
    if listener is None:
        s.record("create", "listener", lname, f"TCP {port}")
        if s.dry:
            return
        listener = lbs.create_listener(name=lname, load_balancer_id=lb.id, protocol="TCP",
                                       protocol_port=port, tags=[s.tag])
        wait_active(s, lb.id)
    pname = f"{name}-masters"
    pool = s.one(lbs.pools(name=pname, loadbalancer_id=lb.id), "pool", pname)
    if pool is None:
        s.record("create", "pool", pname, "TCP, round robin")
        if s.dry:
            return
        pool = lbs.create_pool(name=pname, listener_id=listener.id, protocol="TCP",
                               lb_algorithm="ROUND_ROBIN", tags=[s.tag])
        wait_active(s, lb.id)
    have = {m.name: m for m in lbs.members(pool)}
    want = {m.name: m for m in masters}
    for mname in sorted(set(want) - set(have)):
        s.record("create", "pool member", mname, str(want[mname].address))
        if not s.dry:
            lbs.create_member(pool, name=mname, address=str(want[mname].address),
                              protocol_port=port, subnet_id=subnet_id, tags=[s.tag])
            wait_active(s, lb.id)
    for mname in sorted(set(have) - set(want)):
        s.record("delete", "pool member", mname)
        if not s.dry:
            lbs.delete_member(have[mname], pool)
            wait_active(s, lb.id)
    if pool.health_monitor_id is None:
        s.record("create", "health monitor", f"{name}-hm", "TCP")
        if not s.dry:
            lbs.create_health_monitor(pool_id=pool.id, name=f"{name}-hm", type="TCP",
                                      delay=5, timeout=5, max_retries=3, tags=[s.tag])
            wait_active(s, lb.id)
