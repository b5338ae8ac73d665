import time

import click

from k8simg.cli.options import (
    cluster_argument,
    cluster_cloud_option,
    cluster_dir,
    emit_json,
    output_option,
    progress,
    progress_shares_the_terminal,
    ssh_key_option,
)
from k8simg.errors import K8simgError


def _deployment(cluster, cloud, plan=False, **kw):
    from k8simg.ops.deploy import Deployment

    return Deployment.for_cluster(cluster_dir(cluster), cloud, dry_run=plan, progress=progress,
                                  **kw)


@click.command()
@cluster_argument
@cluster_cloud_option
@click.option("--plan", is_flag=True, help="Print what would be created, changed or deleted; "
                                          "touch nothing.")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 64),
              help="Creations run at once.")
@click.option("--skip-unobservable", is_flag=True,
              help="Delete workers beyond workers.count undrained (said in the warnings) when "
                   "the Kubernetes API cannot be asked to drain them, e.g. a test cloud whose "
                   "servers run nothing. Never on a real cluster.")
@click.option("--health-timeout", default=900, show_default=True, metavar="SECONDS",
              type=click.IntRange(1),
              help="How long to wait, once the nodes are up, for every etcd member to answer "
                   "healthy, and then (where the image carries Kubernetes) for the API "
                   "server's /readyz (exit 1 naming what did not).")
@click.option("--no-wait-api", is_flag=True,
              help="Return once etcd is healthy, without waiting for the API server (e.g. an "
                   "image whose Kubernetes binaries are test stand-ins).")
@click.option("--no-wait", is_flag=True,
              help="Return once the nodes are up, without waiting for etcd or the API server "
                   "(e.g. a test cloud whose servers run nothing).")
@ssh_key_option
@output_option
def deploy(cluster, cloud, plan, concurrency, skip_unobservable, health_timeout, no_wait_api,
           no_wait, ssh_keys, output):
    """Create (or reconcile) the cluster's infrastructure, boot its nodes (each first boot
    read from its console) and wait for the control plane: every etcd member healthy (on
    OpenStack asked through the bastion), then the API server's /readyz through its load
    balancer where the image carries Kubernetes. Workers beyond workers.count are drained
    (disruption budgets honoured), then deleted."""
    from k8simg.clouds.base import NodeFailed

    d = _deployment(cluster, cloud, plan, concurrency=concurrency,
                    skip_unobservable=skip_unobservable, ssh_keys=ssh_keys,
                    health_timeout=0 if no_wait else health_timeout,
                    wait_api=not no_wait_api)
    try:
        result = d.deploy()
    except NodeFailed as e:
        if output == "json":
            emit_json({"plan": plan, "changes": [c.__dict__ for c in d.ledger.changes],
                       "failed": [{"node": n, "detail": why} for n, why in e.failures]})
        raise
    changes = [c.__dict__ for c in result.changes]
    if output == "json":
        emit_json({"plan": plan, "changes": changes, "api_endpoint": result.api_endpoint,
                   "kubeconfig": result.kubeconfig, "ingress": result.ingress,
                   "warnings": result.warnings,
                   "stale": [x.as_dict() for x in result.stale]})
        return
    if not progress_shares_the_terminal():  # else each was shown once, as it was made
        for c in result.changes:
            click.echo(str(c))
    progress(f"{'planned' if plan else 'made'} {len(changes)} change(s)")
    if result.api_endpoint:
        click.echo(f"api: {result.api_endpoint}")
        click.echo(f"kubeconfig: {result.kubeconfig}")
    if result.ingress:
        click.echo(f"ingress: {result.ingress}")


@click.command()
@cluster_argument
@cluster_cloud_option
@click.option("--plan", is_flag=True, help="Print what would be deleted; touch nothing.")
@output_option
def destroy(cluster, cloud, plan, output):
    """Remove everything the cluster has in its cloud, in dependency order."""
    d = _deployment(cluster, cloud, plan)
    result = d.destroy()
    if output == "json":
        emit_json({"plan": plan, "deleted": [str(c) for c in d.ledger.changes],
                   "left": result.left})
    elif not progress_shares_the_terminal():
        for c in d.ledger.changes:
            click.echo(str(c))
    if result.left:
        raise K8simgError("could not remove:\n" + "\n".join(f"  {x}" for x in result.left))


@click.command()
@cluster_argument
@cluster_cloud_option
@output_option
def nodes(cluster, cloud, output):
    """The cluster's nodes as its cloud has them: state, address, image, whether each is
    current (its image and config what cluster.yaml gives it now) or stale, and why; then
    the ingress's address, once the cloud controller has given it one (OpenStack)."""
    d = _deployment(cluster, cloud, plan=True)  # it looks; it changes nothing
    found = d.cloud.nodes()
    try:
        desired = d.desired_state(found)
    except K8simgError as e:  # e.g. the image or the PKI is not there: said, not guessed
        progress(f"warning: cannot tell whether the nodes are current: {e}")
        desired = {}
    if output == "json":
        emit_json([{**n.__dict__, "console_file": str(n.console_file) if n.console_file
                    else None,
                    "desired": desired[n.name].as_dict() if n.name in desired else None}
                   for n in found])
        return
    rows = [("NAME", "ROLE", "STATE", "ADDRESS", "IMAGE", "GEN", "CERTS EXPIRE", "DESIRED",
             "CONSOLE")]
    rows += [(n.name, n.role, n.state, n.address or "-", n.image, str(n.generation),
              (desired[n.name].expires or "-")[:10] if n.name in desired else "?",
              desired[n.name].reason() if n.name in desired else "?",
              str(n.console_file) if n.console_file else f"k8simg console {cluster} {n.name}")
             for n in found]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    if ingress := d.cloud.ingress_address():
        click.echo(f"ingress: {ingress} (ingress-nginx's load balancer)")


@click.command()
@cluster_argument
@click.argument("node")
@click.option("--follow/--no-follow", "-f", default=True, show_default=True,
              help="Keep printing new lines as the node writes them.")
@click.option("--lines", "-n", default=50, show_default=True, type=click.IntRange(0),
              help="How many earlier lines to print first (0: all).")
def console(cluster, node, follow, lines):
    """A node's serial console log, followed like ``tail -f`` (on OpenStack, Nova's console
    log, asked again every few seconds)."""
    cloud = _deployment(cluster, None).cloud
    known = {n.name for n in cloud.nodes()}
    if node not in known:
        raise K8simgError(f"no node {node!r} in cluster {cloud.name} "
                          f"(nodes: {', '.join(sorted(known)) or 'none'})")
    text = cloud.console_log(node)
    shown = text.splitlines(keepends=True)
    click.echo("".join(shown[-lines:] if lines else shown), nl=False)
    while follow:
        time.sleep(1 if cloud.cfg.is_local else 5)
        now = cloud.console_log(node)
        # The log grows at its end; one that does not continue what was printed (a cloud
        # that keeps only a tail) is printed whole again.
        new = now[len(text):] if now.startswith(text) else now
        if new:
            click.echo(new, nl=False)
        text = now


@click.group()
def etcd():
    """The cluster's etcd, asked from this machine with the cluster's healthcheck client."""


@etcd.command()
@cluster_argument
@cluster_cloud_option
@click.option("--wait", default=0, show_default=True, type=click.IntRange(0),
              help="Seconds to keep asking until every member is healthy.")
@ssh_key_option
@output_option
def health(cluster, cloud, wait, ssh_keys, output):
    """Every member's health and the member list; exit 1 when a member is unhealthy.

    On OpenStack through an SSH tunnel to the bastion; on the local cloud from its namespace.
    """
    from k8simg.ops.etcd import etcd_client

    d = _deployment(cluster, cloud, ssh_keys=ssh_keys)
    with etcd_client(d.cloud) as etcd:
        _health(d, etcd, wait, output)


@etcd.command()
@cluster_argument
@cluster_cloud_option
@click.option("--to", "dest", type=click.Path(file_okay=False), default=None,
              metavar="DIR|swift:CONTAINER",
              help="The folder to keep it in (default: the cluster's backups/), or a Swift "
                   "container of the cluster's cloud (made when missing; sealed here, then "
                   "uploaded).")
@click.option("--keep", type=click.IntRange(1), default=None, metavar="N",
              help="Then remove all but the N newest of the cluster's snapshots there.")
@ssh_key_option
@output_option
def snapshot(cluster, cloud, dest, keep, ssh_keys, output):
    """Take a snapshot of etcd from a healthy member, check it (revision, keys, etcd's hash)
    and keep it encrypted with the cluster's snapshot key (pki/etcd-snapshot.key): the
    plaintext, which holds every Secret of the cluster, never stays on disk.

    On OpenStack through an SSH tunnel to the bastion; on the local cloud from its namespace.
    """
    from k8simg.ops.snapshot import snapshot_cluster

    d = _deployment(cluster, cloud, ssh_keys=ssh_keys)
    sealed, removed = snapshot_cluster(d.cluster, d.cloud, dest, keep, progress)
    h = sealed.header
    if output == "json":
        emit_json({**_where(sealed), **_snapshot_facts(h), "removed": removed})
    else:
        click.echo(f"{sealed.ref}  revision {h.revision}  {h.total_keys} keys  "
                   f"{h.size} bytes  from {h.member}")


def _where(sealed) -> dict:
    """``ref`` (what ``restore --snapshot`` takes), and ``path`` for a file."""
    return {"ref": sealed.ref, **({} if sealed.where else {"path": str(sealed.path)})}


def _snapshot_facts(h) -> dict:
    return {"taken_at": h.taken_at, "revision": h.revision, "keys": h.total_keys,
            "bytes": h.size, "member": h.member, "etcd_hash": f"{h.etcd_hash:08x}",
            "sha512": h.sha512}


@etcd.command()
@cluster_argument
@click.option("--in", "folder", type=click.Path(file_okay=False), default=None,
              metavar="DIR|swift:CONTAINER",
              help="The folder to list (default: the cluster's backups/), or a Swift "
                   "container of the cluster's cloud.")
@cluster_cloud_option
@output_option
def snapshots(cluster, folder, cloud, output):
    """The cluster's etcd snapshots, oldest first, from their headers (no key needed):
    when, revision, keys, size. Another cluster's in the same place are not listed."""
    from pathlib import Path

    from k8simg.ops.snapshot import listing, stored_listing, swift_ref

    cd = cluster_dir(cluster)
    cd.load()
    uid = cd.state.uid
    swift = swift_ref(folder)
    if swift and uid:
        found = stored_listing(_deployment(cluster, cloud).cloud.object_container(swift[0]), uid)
    else:
        found = listing(Path(folder) if folder else cd.backups_dir, uid) if uid else []
    if output == "json":
        emit_json([{**_where(s), **_snapshot_facts(s.header)} for s in found])
        return
    for s in found:
        age = s.header.age
        click.echo(f"{s.ref}  {s.header.taken_at}  ({age.days} d "
                   f"{age.seconds // 3600} h ago)  revision {s.header.revision}  "
                   f"{s.header.total_keys} keys  {s.header.size} bytes")
    if not found:
        click.echo("no snapshots", err=True)


def _health(d, etcd, wait, output):
    from k8simg.ops.etcd import planned_endpoints, wait_healthy

    endpoints = planned_endpoints(d.cluster)
    eps = wait_healthy(etcd, endpoints, wait, progress)
    members = etcd.members(endpoints) if any(e.healthy for e in eps) else []
    if output == "json":
        emit_json({"endpoints": [e.__dict__ for e in eps],
                   "members": [{"id": m.hex, "name": m.name, "peer_urls": list(m.peer_urls),
                                "client_urls": list(m.client_urls), "learner": m.learner}
                               for m in members]})
    else:
        for e in eps:
            click.echo(f"{e.endpoint}  {'healthy' if e.healthy else 'UNHEALTHY'}  {e.detail}")
        for m in members:
            click.echo(f"member {m.hex}  {m.name}  {','.join(m.peer_urls)}"
                       + ("  (learner)" if m.learner else ""))
    if not eps or not all(e.healthy for e in eps):
        raise K8simgError("etcd is not healthy")
