import json
import sys
import time

import click

from k8simg.cli.options import (
    cluster_argument,
    cluster_cloud_option,
    cluster_dir,
    emit_json,
    output_option,
    progress,
    ssh_key_option,
)


def _events(output: str):
    """Each step as one JSON object per line on stdout (``--output json``), else as progress."""
    def event(name: str, detail: dict) -> None:
        if output == "json":
            sys.stdout.write(json.dumps({"event": name, "time": round(time.time(), 3),
                                         **detail}) + "\n")
            sys.stdout.flush()
        else:
            progress(f"{name}: " + ", ".join(f"{k}={v}" for k, v in detail.items()))
    return event


@click.command()
@cluster_argument
@cluster_cloud_option
@click.option("--plan", is_flag=True, help="Show which nodes would be replaced, in order; "
                                          "change nothing.")
@click.option("--max-surge", default=1, show_default=True, type=click.IntRange(0, 50),
              help="Workers whose replacements boot before they go (capacity above normal).")
@click.option("--max-unavailable", default=0, show_default=True, type=click.IntRange(0, 50),
              help="Workers drained and deleted before their replacements exist (capacity "
                   "below normal).")
@click.option("--control-plane-surge", default=1, show_default=True, type=click.IntRange(1, 7),
              help="Masters (and etcd members) whose replacements boot at once, each joining "
                   "etcd in its turn: the membership changes stay one at a time, the boots "
                   "overlap. That many servers above the cluster's size at most.")
@click.option("--skip-unobservable", is_flag=True,
              help="Go on where a health gate cannot be observed (named as skipped), e.g. a "
                   "test cloud whose servers run nothing. Never on a real cluster.")
@click.option("--allow-downgrade", is_flag=True,
              help="Let kubernetes_version go back a release (refused by default).")
@click.option("--renew-certs-within", "renew_days", type=click.IntRange(min=0), metavar="DAYS",
              help="First reissue the leaf certificates that expire within DAYS, then replace "
                   "the nodes that carry them (a scheduled CI job's one command).")
@ssh_key_option
@output_option
def upgrade(cluster, cloud, plan, max_surge, max_unavailable, control_plane_surge,
            skip_unobservable, allow_downgrade, renew_days, ssh_keys, output):
    """Replace every stale node (another image than cluster.yaml names, or a config that is
    not what it renders now), one by one; Kubernetes' version skew policy is enforced.

    Exit codes: 0 done, 10 nothing to do, 4 aborted safely (a preflight refused; nothing
    changed), 1 failed (re-run to resume). With --output json, one JSON object per line and
    step on stdout.
    """
    from k8simg.ops.deploy import Deployment, image_warning
    from k8simg.ops.upgrade import EXIT_NOTHING, Upgrade

    event = _events(output)
    d = Deployment.for_cluster(cluster_dir(cluster), cloud, dry_run=plan, progress=progress,
                               ssh_keys=ssh_keys)
    warnings: list[str] = []

    def planning(name: str, detail: dict) -> None:
        warnings.append(detail.get("message", name))
        progress(f"{name}: {detail.get('message', detail)}")

    up = Upgrade(d, max_surge=max_surge, max_unavailable=max_unavailable,
                 control_plane_surge=control_plane_surge,
                 skip_unobservable=skip_unobservable, events=planning if plan else event,
                 allow_downgrade=allow_downgrade, renew_certs_within=renew_days)
    if plan:
        pre = up.prepare()
        if warning := image_warning(pre.image):
            planning("warning", {"message": warning})
        target, steps = up.plan(pre)
        rows = [{"order": i + 1, "node": s.old, "role": s.role, "from": s.image, "to": target,
                 "why": s.why.reason() if s.why else "stale",
                 "config_changes": list(s.why.config) if s.why and s.why.config else []}
                for i, s in enumerate(steps)]
        if output == "json":
            emit_json({"image": target, "replace": rows, "warnings": warnings})
        else:
            for r in rows:
                click.echo(f"{r['order']:3}  {r['node']}  ({r['role']}) {r['why']}")
        if not steps:
            progress("nothing to do: every node runs the target image and its config as "
                     "cluster.yaml gives it now")
            sys.exit(EXIT_NOTHING)
        return
    result = up.run()
    if output != "json":
        for old, new in result.replaced:
            click.echo(f"replaced {old} by {new}")
        for gate in result.skipped_gates:
            click.echo(f"skipped gate: {gate}")
    sys.exit(result.exit_code)


@click.command()
@cluster_argument
@cluster_cloud_option
@click.option("--snapshot", "snapshot", required=True, metavar="FILE|swift:CONTAINER/NAME",
              help="The sealed snapshot to restore (k8simg etcd snapshot; k8simg etcd "
                   "snapshots lists them); one in Swift is downloaded into the cluster's "
                   "backups/ first.")
@click.option("--plan", is_flag=True, help="Say what is lost and what would be replaced, and "
                                          "the snapshot's revision and age; change nothing.")
@click.option("--force", is_flag=True,
              help="Restore even though etcd still has a healthy quorum (every write since "
                   "the snapshot is lost).")
@click.option("--timeout", default=1800, show_default=True, type=click.IntRange(1),
              metavar="SECONDS", help="How long the new masters' boot, and then each one's "
                   "etcd, may take.")
@click.option("--skip-unobservable", is_flag=True,
              help="Where etcd cannot be asked at all (a test cloud whose servers run "
                   "nothing), with --force: go on as if no member were healthy and boot the "
                   "new masters without waiting on etcd (said as a skipped gate). Never on a "
                   "real cluster.")
@ssh_key_option
@output_option
def restore(cluster, cloud, snapshot, plan, force, timeout, skip_unobservable, ssh_keys,
            output):
    """Bring back a control plane that lost its etcd quorum from a sealed snapshot: new
    masters (the next indices), booted side by side, each restoring the snapshot at its first
    boot as a member of their new cluster; the API load balancer moved to them, the old
    masters removed. Workers keep running. Refused while etcd has a healthy quorum (that is
    an upgrade's job).

    Exit codes: 0 done, 4 refused (nothing changed), 1 failed (re-run to resume). With
    --output json, one JSON object per line and step on stdout.
    """
    from pathlib import Path

    from k8simg.ops.deploy import Deployment
    from k8simg.ops.restore import Restore
    from k8simg.ops.snapshot import SnapshotError, fetch_stored, swift_ref

    event = _events(output)
    d = Deployment.for_cluster(cluster_dir(cluster), cloud, dry_run=plan, progress=progress,
                               ssh_keys=ssh_keys)
    swift = swift_ref(snapshot)
    if swift:
        if not swift[1]:
            raise SnapshotError(f"{snapshot}: name the snapshot (swift:CONTAINER/NAME; k8simg "
                                f"etcd snapshots {cluster} --in {snapshot} lists them)")
        if d.cluster.state.uid is None:
            raise SnapshotError(f"{cluster}: never deployed: no snapshot is its")
        progress(f"downloading {snapshot} into {d.cluster.backups_dir}")
        snapshot = fetch_stored(d.cloud.object_container(swift[0]), swift[1],
                                d.cluster.backups_dir, d.cluster.state.uid).path
    elif not Path(snapshot).is_file():
        raise click.BadParameter(f"{snapshot}: no such file", param_hint="--snapshot")
    r = Restore(d, Path(snapshot), force=force, skip_unobservable=skip_unobservable,
                timeout=timeout, events=event)
    if plan:
        p = r.plan()
        if output == "json":
            emit_json(p.to_json())
        else:
            h = p.header
            click.echo(f"snapshot {p.snapshot.name}: revision {h.revision}, {h.total_keys} "
                       f"keys, taken {h.taken_at} ({int(h.age.total_seconds()) // 60} min ago)")
            click.echo(f"healthy etcd members now: {len(p.healthy)}")
            for old, new in p.replace:
                click.echo(f"replace {old} by {new}")
            if len(p.replace) == 1:
                click.echo("single master: the Kubernetes API is down until the new one is up")
        return
    r.run()
