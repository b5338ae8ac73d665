"""Adopting a cluster made before UIDs: on the deploy that gives it a UID, every resource in the
project that carries its old tag ``k8simg-cluster-<name>`` and no UID (so no other cluster has
claimed it) gets the cluster's UID; nothing else is touched. A second cluster directory of the
same name that is deployed later finds them claimed and leaves them alone.

Server groups (no tags) are not marked: destroy knows the old ones by their members (see
:func:`k8simg.clouds.openstack.compute.server_groups_of`); the application credential is known
by the ID the cluster directory holds.
"""

from k8simg.clouds.openstack.connect import TAG_PREFIX, UID_KEY, Scope, legacy_tag


def _unclaimed(s: Scope, res) -> bool:
    tags = res.tags or []
    return legacy_tag(s.name) in tags and not any(t.startswith(TAG_PREFIX) for t in tags)


def adopt(s: Scope) -> list[str]:
    """Give the cluster's UID to what carries its old tag and no UID.

    :returns: what was adopted (``kind name``), also recorded in the ledger.
    """
    n, pid, old = s.conn.network, s.project_id, legacy_tag(s.name)
    done = []

    def mark(kind, name, change) -> None:
        s.record("update", kind, name, f"adopted: {s.tag}")
        done.append(f"{kind} {name}")
        if not s.dry:
            change()

    for kind, listing in (("network", n.networks), ("subnet", n.subnets),
                          ("router", n.routers), ("port", n.ports),
                          ("security group", n.security_groups)):
        for res in [r for r in listing(project_id=pid, tags=old) if _unclaimed(s, r)]:
            mark(kind, res.name, lambda res=res: n.set_tags(res, [*res.tags, s.tag]))
    for ip in [i for i in n.ips(project_id=pid, tags=old) if _unclaimed(s, i)]:
        # found by description from now on
        role = "bastion" if (ip.description or "").endswith("-bastion") else "api"
        def fip(ip=ip, role=role):
            n.set_tags(ip, [*ip.tags, s.tag])
            n.update_ip(ip, description=s.describe(role))
        mark("floating IP", ip.floating_ip_address, fip)
    for srv in [x for x in s.conn.compute.servers(tags=old) if _unclaimed(s, x)]:
        def server(srv=srv):
            s.conn.compute.add_tag_to_server(srv, s.tag)
            s.conn.compute.set_server_metadata(srv, **{UID_KEY: s.uid})
        mark("server", srv.name, server)
    b = s.conn.block_storage
    for v in b.volumes():
        meta = v.metadata or {}
        if meta.get(old) == "true" and UID_KEY not in meta:
            mark("volume", v.name, lambda v=v: b.set_volume_metadata(v, **{UID_KEY: s.uid}))
    lbs = s.conn.load_balancer
    for lb in [x for x in lbs.load_balancers(tags=old, project_id=pid) if _unclaimed(s, x)]:
        mark("load balancer", lb.name,
             lambda lb=lb: lbs.update_load_balancer(lb, tags=[*lb.tags, s.tag]))
    return done
