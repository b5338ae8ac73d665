import click

from k8simg.cli.options import cluster_argument, cluster_dir, emit_json, output_option, progress
from k8simg.errors import K8simgError


def _deployer(cluster, cloud, plan, **kw):
    cd = cluster_dir(cluster)
    cfg = cd.load()
    if (cloud or cfg.cloud) == "local":
        raise K8simgError(f"{cd.config_path}: cloud: local — the local cloud is not available "
                          "yet; name an OpenStack cloud from clouds.yaml (cloud: or --cloud)")
    from k8simg.openstack.deploy import OpenStackDeployer

    return OpenStackDeployer(cd, cloud, dry_run=plan, progress=progress, **kw)


@click.command()
@cluster_argument
@click.option("--cloud", metavar="NAME", help="Override the cluster's cloud (clouds.yaml name).")
@click.option("--plan", is_flag=True, help="Print what would be created, changed or deleted; "
                                          "touch nothing.")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 64),
              help="Creations run at once.")
@output_option
def deploy(cluster, cloud, plan, concurrency, output):
    """Create (or reconcile) the cluster's infrastructure and boot its nodes."""
    result = _deployer(cluster, cloud, plan, concurrency=concurrency).deploy()
    changes = [c.__dict__ for c in result.changes]
    if output == "json":
        emit_json({"plan": plan, "changes": changes, "api_endpoint": result.api_endpoint,
                   "kubeconfig": result.kubeconfig, "warnings": result.warnings})
        return
    for c in result.changes:
        click.echo(str(c))
    progress(f"{'planned' if plan else 'made'} {len(changes)} change(s)")
    if result.api_endpoint:
        click.echo(f"api: {result.api_endpoint}")
        click.echo(f"kubeconfig: {result.kubeconfig}")


@click.command()
@cluster_argument
@click.option("--cloud", metavar="NAME", help="Override the cluster's cloud (clouds.yaml name).")
@click.option("--plan", is_flag=True, help="Print what would be deleted; touch nothing.")
@output_option
def destroy(cluster, cloud, plan, output):
    """Remove everything tagged with the cluster, in dependency order."""
    d = _deployer(cluster, cloud, plan)
    result = d.destroy()
    if output == "json":
        emit_json({"plan": plan, "deleted": [str(c) for c in d.ledger.changes],
                   "left": result.left})
    else:
        for c in d.ledger.changes:
            click.echo(str(c))
    if result.left:
        raise K8simgError("could not remove:\n" + "\n".join(f"  {x}" for x in result.left))
