from pathlib import Path

import click

from k8simg.cli.options import cluster_argument, cluster_dir, emit_json, output_option, progress
from k8simg.errors import K8simgError
from k8simg.ignition.render import USER_DATA_LIMIT, render_context, render_user_data, write_all


@click.command()
@cluster_argument
@click.option("--node", "node_name", help="Render this node's config.")
@click.option("--all", "all_nodes", is_flag=True, help="Render every node into --out-dir.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False),
              help="With --node: the file to write (it holds keys; written 0600).")
@click.option("--out-dir", type=click.Path(file_okay=False),
              help="With --all: the folder for <node>.ign files (default CLUSTER/ignition).")
@output_option
def render(cluster, node_name, all_nodes, out_file, out_dir, output):
    """Render Ignition configs: one node (--node) or every node (--all).

    Configs hold private keys, so they are only ever written to files, never to the terminal.
    """
    if bool(node_name) == bool(all_nodes):
        raise click.UsageError("give exactly one of --node NAME and --all")
    if all_nodes and out_file:
        raise click.UsageError("--out goes with --node; --all writes into --out-dir")
    if node_name and out_dir:
        raise click.UsageError("--out-dir goes with --all; --node writes to --out FILE")
    cd = cluster_dir(cluster)
    ctx = render_context(cd)
    if all_nodes:
        dest = Path(out_dir) if out_dir else cd.path / "ignition"
        sizes = write_all(ctx, dest)
        result = {"dir": str(dest), "limit": USER_DATA_LIMIT,
                  "nodes": {n: {"bytes": s, "file": str(dest / f"{n}.ign")}
                            for n, s in sizes.items()}}
    else:
        node = next((n for n in ctx.nodes if n.name == node_name), None)
        if node is None:
            raise K8simgError(f"no node {node_name!r} in {cd.config_path}; nodes: "
                              + ", ".join(n.name for n in ctx.nodes))
        if not out_file:
            raise click.UsageError("--node needs --out FILE (the config holds private keys)")
        from k8simg.fsutil import atomic_write
        data = render_user_data(ctx, node)
        atomic_write(Path(out_file), data, 0o600)
        result = {"limit": USER_DATA_LIMIT,
                  "nodes": {node.name: {"bytes": len(data), "file": out_file}}}
    for name, info in result["nodes"].items():
        progress(f"{name}: {info['bytes']} bytes ({100 * info['bytes'] // USER_DATA_LIMIT}% "
                 "of Nova's user_data limit)")
    if output == "json":
        emit_json(result)
    else:
        for info in result["nodes"].values():
            click.echo(info["file"])
