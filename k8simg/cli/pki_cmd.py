import click

from k8simg.cli.options import cluster_argument, cluster_dir, emit_json, output_option, progress
from k8simg.errors import K8simgError, PkiError
from k8simg.pki import cluster_pki, report
from k8simg.pki.manager import utcnow


class ExpiringError(K8simgError):
    exit_code = 3


def node_expiry(cd) -> dict:
    """Each node's first leaf certificate expiry, from its config as rendered now; empty
    when the configs cannot be rendered yet (e.g. no cloud credential before deploy)."""
    from k8simg.ignition.digest import earliest_leaf_expiry
    from k8simg.ignition.render import render_context, render_user_data

    try:
        ctx = render_context(cd)
        return {n.name: earliest_leaf_expiry(render_user_data(ctx, n)) for n in ctx.nodes}
    except K8simgError as e:
        progress(f"per-node expiry not shown: {e}")
        return {}


@click.group()
def pki():
    """The cluster's certificates, keys and kubeconfigs."""


@pki.command("init")
@cluster_argument
@output_option
def init(cluster, output):
    """Generate every missing key, certificate and kubeconfig; never overwrite one."""
    cd = cluster_dir(cluster)
    p = cluster_pki(cd, progress=progress)
    result = p.ensure()
    kubeconfigs = p.write_kubeconfigs(cd.kubeconfig_dir)
    for ident in result.stale:
        progress(f"warning: {ident} lacks SANs the cluster now needs; "
                 f"run `k8simg pki renew {cluster} {ident}`")
    if output == "json":
        emit_json({"pki": str(cd.pki_dir), "created": result.created,
                   "existing": result.existing, "stale": result.stale,
                   "kubeconfigs": [str(k) for k in kubeconfigs]})
    else:
        click.echo(f"{len(result.created)} created, {len(result.existing)} existing, "
                   f"{len(result.stale)} stale in {cd.pki_dir}")


@pki.command()
@cluster_argument
@output_option
def show(cluster, output):
    """List every certificate with subject, SANs, issuer and expiry."""
    p = cluster_pki(cluster_dir(cluster))
    now = utcnow()
    records = p.records()
    if output == "json":
        emit_json({"certificates": report.as_json(records, now), "missing": p.missing(),
                   "problems": [{"file": f, "problem": m} for f, m in p.verify()]})
        return
    for r in records:
        click.echo(f"{r.instance.display}\n  file:    {r.file}\n  subject: {r.subject}\n"
                   f"  issuer:  {r.issuer}\n  expires: {r.not_after.isoformat()}")
        if r.sans:
            click.echo(f"  SANs:    {', '.join(r.sans)}")
    for ident in p.missing():
        click.echo(f"{ident}: missing")
    for f, m in p.verify():
        click.echo(f"problem: {f}: {m}")


@pki.command("check-expiration")
@cluster_argument
@click.option("--days", type=click.IntRange(min=0), default=30, show_default=True,
              help="Fail when anything expires within this many days.")
@output_option
def check_expiration(cluster, days, output):
    """Print the expiry table; exit 3 when anything expires within --days."""
    p = cluster_pki(cluster_dir(cluster))
    now = utcnow()
    problems = p.verify()
    if problems:
        raise PkiError(problems)
    records = p.records()
    soon = report.expiring(records, now, days)
    per_node = node_expiry(cluster_dir(cluster)) if not p.missing() else {}
    if output == "json":
        emit_json({"days": days, "certificates": report.as_json(records, now),
                   "expiring": [r.instance.id for r in soon], "missing": p.missing(),
                   "nodes": {n: (t.isoformat(timespec="seconds") if t else None)
                             for n, t in per_node.items()}})
    else:
        click.echo(report.expiration_table(records, now))
        if per_node:
            click.echo("\nNODE" + " " * 36 + "FIRST LEAF EXPIRES (what its config carries)")
            for n, t in per_node.items():
                click.echo(f"{n:<40}{t:%Y-%m-%d %H:%M} UTC" if t else f"{n:<40}-")
    if p.missing():
        raise K8simgError(f"missing: {', '.join(p.missing())}; run `k8simg pki init`")
    if soon:
        raise ExpiringError(f"{len(soon)} certificate(s) expire within {days} days: "
                            + ", ".join(r.instance.id for r in soon))


CA_ROTATION = ("rotating a CA is not done by k8simg yet: it means a new CA trusted beside the "
               "old one by every node, every leaf reissued and rolled out, then the old CA "
               "dropped, all by replacement; plan it before the CA expires")


@pki.command()
@cluster_argument
@click.argument("names", nargs=-1)
@click.option("--expiring-within", "days", type=click.IntRange(min=0), metavar="DAYS",
              help="Exactly the leaf certificates that expire within DAYS (instead of NAMES).")
@output_option
def renew(cluster, names, days, output):
    """Reissue leaf certificates (all, NAMES, or those expiring within DAYS) from the existing
    CAs, keeping their keys. The nodes carrying them are then stale: `k8simg upgrade` rolls
    them (or `k8simg upgrade --renew-certs-within DAYS` does both)."""
    cd = cluster_dir(cluster)
    p = cluster_pki(cd, progress=progress)
    cas = []
    if days is not None:
        if names:
            raise click.UsageError("give NAMES or --expiring-within, not both")
        leaves, cas = p.expiring(days)
        for ca in cas:
            progress(f"warning: CA {ca} expires within {days} days; {CA_ROTATION}")
        renewed = p.renew(leaves, kubeconfig_dir=cd.kubeconfig_dir) if leaves else []
    else:
        renewed = p.renew(list(names) or None, kubeconfig_dir=cd.kubeconfig_dir)
    if output == "json":
        emit_json({"renewed": renewed, "cas_expiring": cas})
    else:
        click.echo(f"renewed {len(renewed)} certificate(s)")
