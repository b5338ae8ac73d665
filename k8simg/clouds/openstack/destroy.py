"""Removing everything a cluster has on an OpenStack cloud, in dependency order, and nothing
that is not provably its own: what carries the cluster's UID (a tag, Cinder metadata, the
description of a Neutron resource a kill left untagged, the name of a server group or of the
application credential, the Swift container a restore stages its snapshot in), and what
Kubernetes made in the cloud under the name with its UID
(:mod:`k8simg.clouds.openstack.made`), in the cluster's project. A sweep then lists all of it
again: whatever is still there is reported, so "destroyed" means the project holds nothing of
the cluster."""

from k8simg.clouds.base import CloudError, DestroyResult
from k8simg.clouds.openstack import compute, identity, loadbalancer, made, objects
from k8simg.clouds.openstack.connect import Scope
from k8simg.model.credential import CloudCredential


def _by_id(get, ident):
    """``get(ident)``, or None once the resource is gone (Cinder's find by name is refused to
    project members, so a gone resource is looked for by its ID alone)."""
    from openstack import exceptions as osx

    try:
        return get(ident)
    except osx.ResourceNotFound:
        return None


def delete_snapshot(s: Scope, snap) -> None:
    """Delete ``snap`` and wait until it is gone (its volume cannot go before)."""
    bs = s.conn.block_storage
    bs.delete_snapshot(snap)
    s.wait(f"volume snapshot {snap.name} to go", lambda: _by_id(bs.get_snapshot, snap.id),
           ok={"GONE"}, failures={"error", "error_deleting"})


def delete_volume(s: Scope, volume) -> None:
    """Delete ``volume`` once detached, and wait until it is gone: the sweep after it must
    not find it still deleting."""
    compute.delete_volume(s, volume)
    bs = s.conn.block_storage
    s.wait(f"volume {volume.name} to go", lambda: _by_id(bs.get_volume, volume.id),
           ok={"GONE"}, failures={"error_deleting"})


def inventory(s: Scope) -> list[str]:
    """Everything of the cluster in its project, as "<kind> <name>", in the order destroy
    removes it (the sweep's listing)."""
    conn, tag, pid = s.conn, s.tag, s.project_id
    n = conn.network
    fixed = str(s.cfg.api.floating_ip) if s.cfg.api.floating_ip else None  # the operator's
    found = [f"load-balancer {lb.name}" for lb in
             list(conn.load_balancer.load_balancers(tags=tag, project_id=pid))
             + made.load_balancers(s)]
    found += [f"server {x.name}" for x in conn.compute.servers(tags=tag)]
    found += [f"volume-snapshot {x.name}" for x in made.snapshots(s)]
    found += [f"volume {v.name}" for v in s.volumes() + made.volumes(s)]
    found += [f"floating-ip {ip.floating_ip_address}" for ip in
              [ip for ip in n.ips(project_id=pid) if s.owns(ip)] + made.floating_ips(s)
              if ip.floating_ip_address != fixed]
    found += [f"router {r.name}" for r in n.routers(project_id=pid) if s.owns(r)]
    found += [f"port {p.name}" for p in n.ports(project_id=pid)
              if s.owns(p) and not p.device_owner]
    found += [f"subnet {x.name}" for x in n.subnets(project_id=pid) if s.owns(x)]
    found += [f"network {x.name}" for x in n.networks(project_id=pid) if s.owns(x)]
    found += [f"security-group {g.name}" for g in
              [g for g in n.security_groups(project_id=pid) if s.owns(g)]
              + made.security_groups(s)]
    found += [f"server-group {g.name}" for g in compute.server_groups_of(s, [])]
    name = objects.restore_container(s)
    try:
        found += [f"swift-object {name}/{o}" if o else f"swift-container {name}"
                  for o in objects.staged(s)]
    except CloudError:
        pass  # destroy reported it already: the listing failed there too
    return found


def destroy(s: Scope, parallel, *, cluster_path) -> DestroyResult:
    """Remove the cluster's resources: load balancers (the API's and the Services'), servers,
    snapshots and volumes, floating IPs (the operator's ``api.floating_ip`` only detached),
    router, ports, subnet, network, security groups, server groups, the application
    credential. Only what carries the cluster's UID (:meth:`Scope.owns`) or what Kubernetes
    made under its name and UID (:mod:`made`), in the cluster's project. Every failure is
    reported in :attr:`DestroyResult.left` and destroy goes on with the rest, then the sweep
    adds whatever is still there; in a dry run it only records what it would remove.
    """
    conn, tag = s.conn, s.tag
    n, c = conn.network, conn.compute
    pid = s.project_id
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

    # The API's and the Services' load balancers (the cloud controller's, in cascade: their
    # listeners, pools, members and monitors) before the servers they point at.
    lbs = list(conn.load_balancer.load_balancers(tags=tag, project_id=pid)) \
        + made.load_balancers(s)
    parallel([lambda lb=lb: attempt(f"load-balancer {lb.name}",
                                    lambda: loadbalancer.delete_load_balancer(s, lb))
              for lb in lbs])
    servers = list(c.servers(tags=tag))
    server_groups = compute.server_groups_of(s, servers)  # a legacy group: by its members
    parallel([lambda srv=srv: attempt(f"server {srv.name}", lambda: compute.delete_server(s, srv))
              for srv in servers])
    # Cinder CSI's snapshots before its volumes (a volume with snapshots cannot go), then
    # every volume, detached now that the servers are gone.
    for snap in made.snapshots(s):
        attempt(f"volume-snapshot {snap.name}", lambda snap=snap: delete_snapshot(s, snap))
    for v in s.volumes() + made.volumes(s):
        attempt(f"volume {v.name}", lambda v=v: delete_volume(s, v))
    fixed = str(s.cfg.api.floating_ip) if s.cfg.api.floating_ip else None
    for ip in [ip for ip in n.ips(project_id=pid) if s.owns(ip)] + made.floating_ips(s):
        if ip.floating_ip_address == fixed:
            continue  # the operator's own address: only detached
        attempt(f"floating-ip {ip.floating_ip_address}", lambda ip=ip: n.delete_ip(ip))
    if fixed:
        for ip in n.ips(floating_ip_address=fixed, project_id=pid):
            if ip.port_id:
                s.record("update", "floating IP", fixed, "detached (api.floating_ip is kept)")
                if not s.dry:
                    n.update_ip(ip, port_id=None)
    for r in [r for r in n.routers(project_id=pid) if s.owns(r)]:
        def drop_router(r=r):
            for p in n.ports(device_id=r.id, device_owner="network:router_interface"):
                n.remove_interface_from_router(r, port=p.id)
            n.delete_router(r)
        attempt(f"router {r.name}", drop_router)
    for p in [p for p in n.ports(project_id=pid) if s.owns(p) and not p.device_owner]:
        attempt(f"port {p.name}", lambda p=p: n.delete_port(p))
    for sub in [x for x in n.subnets(project_id=pid) if s.owns(x)]:
        attempt(f"subnet {sub.name}", lambda sub=sub: n.delete_subnet(sub))
    for net in [x for x in n.networks(project_id=pid) if s.owns(x)]:
        attempt(f"network {net.name}", lambda net=net: n.delete_network(net))
    for sg in [g for g in n.security_groups(project_id=pid) if s.owns(g)] \
            + made.security_groups(s):
        attempt(f"security-group {sg.name}", lambda sg=sg: n.delete_security_group(sg))
    for g in server_groups:
        attempt(f"server-group {g.name}", lambda g=g: c.delete_server_group(g))
    # A restore's staged snapshot (left by a restore killed before its first member was
    # healthy), then its container.
    name = objects.restore_container(s)
    try:
        staged = objects.staged(s)
    except CloudError as e:
        left.append(f"swift-container {name}: {e}")
        staged = []
    for o in staged:
        if o:
            attempt(f"swift-object {name}/{o}", lambda o=o: conn.object_store.delete_object(
                o, container=name, ignore_missing=True))
        else:
            attempt(f"swift-container {name}", lambda: conn.object_store.delete_container(
                name, ignore_missing=True))
    user = conn.current_user_id
    creds = identity.credentials_of(s, cluster_path)
    saved = identity.saved_credential_id(cluster_path)

    def drop_credential(cred) -> None:
        conn.identity.delete_application_credential(user, cred)
        if cred.id == saved:  # gone from Keystone: its secret goes now, whatever else is left
            CloudCredential.forget(cluster_path)

    for cred in creds:
        attempt(f"application-credential {cred.name}", lambda cred=cred: drop_credential(cred))
    if saved and saved not in {c.id for c in creds}:
        # Keystone shows a user only their own: another user's deploy made it.
        left.append(f"application-credential {saved}: not one of your application credentials "
                    f"in {s.where}; delete it as the user who deployed the cluster (or, if it "
                    f"is gone, remove {CloudCredential.path(cluster_path)})")
    if not s.dry:
        # The sweep: whatever of the cluster the project still holds, each named once.
        said = {x.split(":", 1)[0] for x in left}
        left += [f"{what}: still in {s.where} after destroy" for what in inventory(s)
                 if what not in said]
    if not s.dry and not left:
        CloudCredential.forget(cluster_path)
    return DestroyResult(removed, left)
