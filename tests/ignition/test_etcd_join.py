"""A joining member booted before its turn: the image's etcd-join waits until the cluster
lists the member, then hands etcd the member list as the cluster has it. Real etcd members
from the rendered configs on a loopback range, the image's etcd unit and script as the node
runs them (paths rebased under a folder per node).

The scenario is an upgrade's boot-ahead: two replacements rendered side by side while the
three old members run, so both configs name a membership that will never exist (five members,
the first old one among them). The second replacement's join step starts first and must wait
out the whole first replacement; etcd started with its rendered list is refused (the control).
"""

import os
import subprocess
import time

import pytest

from k8simg.ignition.image import ETCD_ENV, ETCD_JOIN
from k8simg.ignition.render import render_context, render_node
from k8simg.model.plan import next_node, peer_url
from k8simg.model.versions import DEBIAN_ETCD
from k8simg.ops.etcd import Etcd, Member
from k8simg.pki import cluster_pki
from tests.ignition.support import env_values, etcd_command, materialise, node_view, parse_env, unit_text
from tests.support import etcd_available, processes, wait_until

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd-server/etcd-client missing")

NET = {"node_cidr": "127.78.0.0/24", "service_cidr": "10.96.0.0/12",
       "pod_cidr": "10.244.0.0/16", "dns_domain": "cluster.local", "dns_nameservers": []}


def etcd_args(doc: dict, root, node, version: str) -> list[str]:
    return etcd_command(doc, root, node, version, DEBIAN_ETCD)


def read_env(path) -> dict[str, str]:
    return parse_env(path.read_text())


@pytest.mark.slow  # five real members, two joins: about 30 s
def test_a_member_booted_ahead_waits_for_its_turn_and_joins_with_the_list_as_it_is(
        rendered_cluster, tmp_path):
    cd, ctx = rendered_cluster("ha3", network=NET)
    cfg = ctx.config
    version = cfg.kubernetes_version
    olds = [n for n in ctx.nodes if n.role == "master"]
    # Two replacements chosen at once, each rendered joining the node set as it is then
    docs = {n.name: render_node(ctx, n) for n in olds}  # the cluster as deployed
    new1 = next_node(cfg, "master", ctx.nodes)
    new2 = next_node(cfg, "master", [*ctx.nodes, new1])
    nodes = [*ctx.nodes, new1, new2]
    cd.save_nodes(nodes)
    cluster_pki(cd).ensure()
    ahead = render_context(cd, nodes=nodes, joining=frozenset({new1.name, new2.name}))
    docs.update({n.name: render_node(ahead, n) for n in (new1, new2)})
    env2 = env_values(docs[new2.name], ETCD_ENV)
    assert env2["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
    assert env2["ETCD_INITIAL_CLUSTER"].count("=") == 5  # a membership that will not exist
    assert env2["K8SIMG_ETCD_JOIN_ENDPOINTS"].split(",") == [
        f"https://{n.address}:2379" for n in [*olds, new1]]
    # systemd runs the join step between the address wait and etcd, and etcd reads its output
    unit = unit_text(docs[new2.name], "k8simg-etcd.service", version, DEBIAN_ETCD)
    assert unit.index(f"ExecStartPre={ETCD_JOIN}\n") < unit.index("ExecStart=")
    assert "EnvironmentFile=-/run/k8simg/etcd-join.env\n" in unit
    script = node_view(docs[new2.name], version, DEBIAN_ETCD)[ETCD_JOIN][1]

    roots = {}
    for name, doc in docs.items():
        roots[name] = tmp_path / name
        materialise(doc, roots[name])
        (roots[name] / "var/lib/etcd").mkdir(parents=True)  # the volume's bind mount
        (roots[name] / "etcd-join").write_bytes(script)
    pki = cd.pki_dir

    etcd = Etcd(pki)  # the project's client: its membership changes retried as the roll's

    def member(ep: str, name: str) -> Member:
        return next(m for m in etcd.members([ep])
                    if m.name == name or peer_url(node_of[name]) in m.peer_urls)

    node_of = {n.name: n for n in nodes}

    def join_env(name: str) -> dict[str, str]:
        root = roots[name]
        return {**env_values(docs[name], ETCD_ENV), "PATH": os.environ["PATH"],
                "K8SIMG_ETCD_JOIN_ENV": str(root / "run/k8simg/etcd-join.env"),
                "K8SIMG_ETCD_DATA_DIR": str(root / "var/lib/etcd"),
                "K8SIMG_PKI": str(root / "etc/kubernetes/pki")}

    def start_etcd(start, name: str, env: dict, log: str) -> subprocess.Popen:
        return start(etcd_args(docs[name], roots[name], node_of[name], version),
                     stdout=open(tmp_path / log, "w"), stderr=subprocess.STDOUT, env=env)

    def promote(name: str, ep: str) -> None:
        etcd.change(["member", "promote", member(ep, name).hex], [ep], f"promote {name}")

    def add(node, ep: list[str]) -> None:
        etcd.change(["member", "add", node.name, f"--peer-urls={peer_url(node)}", "--learner"],
                    ep, f"add {node.name}", ok=lambda e: "Peer URLs already exists" in e)

    with processes(kill=True) as start:
        for n in olds:
            start_etcd(start, n.name, env_values(docs[n.name], ETCD_ENV), f"{n.name}.log")
        old_eps = [f"https://{n.address}:2379" for n in olds]
        wait_until(lambda: sum(e.healthy for e in etcd.health(old_eps)) == 3, 60,
                   "three old members")

        # new2 boots ahead: its join step waits, and writes nothing, while it is not listed
        waiting = start(["sh", str(roots[new2.name] / "etcd-join")], env=join_env(new2.name),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out2 = roots[new2.name] / "run/k8simg/etcd-join.env"

        # new1's turn: added as a learner, its join step finds it at once
        add(new1, old_eps)
        j1 = subprocess.run(["sh", str(roots[new1.name] / "etcd-join")], env=join_env(new1.name),
                            capture_output=True, text=True, timeout=60)
        assert j1.returncode == 0, j1.stdout + j1.stderr
        listed1 = read_env(roots[new1.name] / "run/k8simg/etcd-join.env")
        assert sorted(listed1["ETCD_INITIAL_CLUSTER"].split(",")) == sorted(
            f"{n.name}={peer_url(n)}" for n in [*olds, new1])
        start_etcd(start, new1.name, {**env_values(docs[new1.name], ETCD_ENV), **listed1},
                   "new1.log")
        ep1 = f"https://{new1.address}:2379"
        promote(new1.name, old_eps[1])
        wait_until(lambda: any(e.healthy for e in etcd.health([ep1])), 60, f"{new1.name} healthy")
        etcd.change(["member", "remove", member(ep1, olds[0].name).hex], [ep1],
                    f"remove {olds[0].name}", ok=lambda e: "member not found" in e)
        assert waiting.poll() is None and not out2.exists()  # still not its turn

        # The control: new2's etcd started with the list its config was rendered with (as
        # it would be without the join step) is refused, and leaves member/ behind without a
        # write-ahead log; the join step run again (systemd's restart) still waits its turn
        control = {**env_values(docs[new2.name], ETCD_ENV)}
        refused = subprocess.run(etcd_args(docs[new2.name], roots[new2.name], new2, version),
                                 env=control, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        assert "member count is unequal" in refused.stderr, refused.stderr[-2000:]
        member_dir = roots[new2.name] / "var/lib/etcd/member"
        assert member_dir.is_dir() and not list(member_dir.glob("wal/*.wal"))
        restarted = start(["sh", str(roots[new2.name] / "etcd-join")], env=join_env(new2.name),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(4)
        assert restarted.poll() is None and not out2.exists()

        # new2's turn: added, its waiting join step hands etcd the list as it is now
        add(new2, [ep1])
        said, _ = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, said
        again_said, _ = restarted.communicate(timeout=60)
        assert restarted.returncode == 0, again_said
        assert f"the cluster lists {new2.name}" in again_said
        assert f"waiting for the cluster ({env2['K8SIMG_ETCD_JOIN_ENDPOINTS']}) to add " \
               f"{new2.name}" in said
        listed2 = read_env(out2)
        assert sorted(listed2["ETCD_INITIAL_CLUSTER"].split(",")) == sorted(
            f"{n.name}={peer_url(n)}" for n in [new1, *olds[1:], new2])
        start_etcd(start, new2.name, {**env_values(docs[new2.name], ETCD_ENV), **listed2},
                   "new2.log")
        promote(new2.name, ep1)
        ep2 = f"https://{new2.address}:2379"
        assert etcd.ctl(["put", "/joined", "ahead"], [ep1]).returncode == 0
        wait_until(lambda: etcd.ctl(["get", "/joined", "--print-value-only",
                                     "--consistency=s"], [ep2]).stdout.strip() == "ahead", 30,
                   f"{new2.name} serving the cluster's data")
        assert {n.name: member(ep2, n.name).learner for n in [new1, new2]} == {
            new1.name: False, new2.name: False}

        # A member that has data never waits: the step is a no-op on its restarts
        t = time.monotonic()
        again = subprocess.run(["sh", str(roots[new1.name] / "etcd-join")],
                               env=join_env(new1.name), capture_output=True, text=True,
                               timeout=30)
        assert again.returncode == 0 and again.stdout == "" and time.monotonic() - t < 10
        assert not (roots[new1.name] / "run/k8simg/etcd-join.env").exists()
