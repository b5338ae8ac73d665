import click
import yaml

from k8simg.cli.options import (
    cluster_argument,
    cluster_dir,
    emit_json,
    output_option,
    progress,
)
from k8simg.model.plan import api_vip, initial_nodes


@click.group()
def config():
    """Check and inspect the cluster definition."""


@config.command()
@cluster_argument
@output_option
def validate(cluster, output):
    """Validate CLUSTER's cluster.yaml, reporting every problem at once."""
    cfg = cluster_dir(cluster).load()
    nodes = initial_nodes(cfg)
    if output == "json":
        emit_json({"valid": True, "name": cfg.name, "topology": cfg.topology,
                   "api_vip": str(api_vip(cfg)),
                   "nodes": [{"name": n.name, "role": n.role, "address": str(n.address)}
                             for n in nodes]})
    else:
        click.echo(f"{cfg.name}: valid ({cfg.topology}, {len(nodes)} nodes, "
                   f"Kubernetes {cfg.kubernetes_version})")


@config.command()
@cluster_argument
@output_option
def show(cluster, output):
    """Print CLUSTER's effective configuration (every default filled in) with its UID."""
    cd = cluster_dir(cluster)
    cfg = cd.load()
    effective = {"uid": cd.state.uid, **cfg.model_dump(mode="json")}
    if output == "json":
        emit_json(effective)
    else:
        click.echo(yaml.safe_dump(effective, sort_keys=False), nl=False)


@config.command("set")
@cluster_argument
@click.argument("dotted", metavar="PATH")
@click.argument("value")
@output_option
def set_(cluster, dotted, value, output):
    """Set PATH (dotted: workers.count, api.extra_sans) in CLUSTER's cluster.yaml to VALUE
    (YAML: 3, true, "[a, b]"). Comments and layout are kept; nothing is written unless the
    result validates. It changes the definition only: `k8simg upgrade` rolls the nodes."""
    from k8simg.model.edit import set_value

    cd = cluster_dir(cluster)
    cfg = set_value(cd.config_path, dotted, value)
    if output == "json":
        emit_json({"cluster": cfg.name, "path": dotted,
                   "value": _at(cfg.model_dump(mode="json"), dotted)})
    else:
        progress(f"{cd.config_path}: {dotted} set")


def _at(doc, dotted: str):
    for part in dotted.split("."):
        doc = doc[int(part)] if isinstance(doc, list) else doc.get(part)
    return doc
