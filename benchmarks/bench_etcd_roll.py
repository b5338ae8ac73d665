"""Rolling three etcd members (Debian's etcd 3.4, on loopback, run from the rendered master
configs) onto three new ones while a writer writes a key every 5 ms: the longest gap between two
acknowledged writes, the writes that failed, and the roll's duration. Once with k8simg's
choreography (learner, promote, leadership moved off the leaving member, remove) and once the
textbook way with plain membership changes (add a voter, start it, remove the old member,
whoever leads).

Each roll is measured with two writers, since a gap is the cluster's and the client's together:
"pinned" keeps writing to the member that answered last and moves on only when it fails (as
etcd's own client pins an endpoint), "in order" tries the new members first on every write, so
it also pays its first contact with a member that has only just started (a TLS handshake with
an etcd still starting up: up to ~90 ms here, seen on the first replacement's learner).

    python benchmarks/bench_etcd_roll.py [--runs N]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import report  # noqa: E402
from k8simg.model.plan import client_url, peer_url  # noqa: E402
from k8simg.ops.etcd import Etcd  # noqa: E402
from k8simg.ops.membership import replace_member, wait_healthy  # noqa: E402
from tests.conftest import write_cluster  # noqa: E402
from tests.ops.upgrade.test_etcd_roll import NET, Members, Writer  # noqa: E402
from tests.support import processes, wait_until  # noqa: E402


def textbook(etcd: Etcd, members: Members, old, new, live) -> None:
    """etcdctl member add (a voter at once), start, member remove: no learner, no transfer."""
    etcd.change(["member", "add", new.name, f"--peer-urls={peer_url(new)}"], live(),
                f"add {new.name}", ok=lambda e: "Peer URLs already exists" in e)
    ms = etcd.members(live())
    members.start(new, [(m.name or new.name, m.peer_urls[0]) for m in ms])
    wait_healthy(etcd, client_url(new), 120)
    gone = next(m for m in etcd.members(live()) if m.name == old.name)
    etcd.change(["member", "remove", gone.hex], [client_url(new)], f"remove {old.name}")
    members.stop(old)


def one_roll(tmp: Path, how: str, writer_mode: str) -> dict:
    cd = write_cluster(tmp / how, topology="ha",
                       workers={"count": 0, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": False}, network=NET, name="roll")
    with processes() as start:
        members = Members(cd, start, tmp / f"{how}-nodes")
        n = members.nodes
        first = [(n[f"roll-master-{i}"].name, peer_url(n[f"roll-master-{i}"])) for i in range(3)]
        for i in range(3):
            members.start(n[f"roll-master-{i}"], first, joining=False)
        etcd = Etcd(cd.pki_dir, identity="apiserver-etcd-client")
        eps = [client_url(n[f"roll-master-{i}"]) for i in range(3)]
        wait_until(lambda: sum(e.healthy for e in etcd.health(eps)) == 3, 60, "three members")

        def live():
            return [client_url(x) for x in n.values()
                    if x.name in members.procs and members.procs[x.name].poll() is None]

        writer = Writer(cd.pki_dir, [client_url(n[f"roll-master-{i}"]) for i in (3, 4, 5, 2, 1, 0)],
                        sticky=writer_mode == "pinned")
        writer.start()
        time.sleep(2)
        t = time.monotonic()
        marks: list[tuple[float, str]] = []
        try:
            for o, w in ((0, 3), (1, 4), (2, 5)):
                old, new = n[f"roll-master-{o}"], n[f"roll-master-{w}"]
                if how == "k8simg":
                    replace_member(etcd, old, new, voters=3, start=members.start,
                                   stop=members.stop, endpoints=live, timeout=120,
                                   hook=lambda step, o=old: marks.append(
                                       (time.monotonic(), f"{o.name} {step}")))
                else:
                    textbook(etcd, members, old, new, live)
            seconds = time.monotonic() - t
            time.sleep(2)
        finally:
            writer.stop()
    times = [s for _, s in writer.acked]
    pairs = list(zip(times, times[1:], strict=False))

    def step_before(t: float) -> str:
        return ([m for at, m in marks if at <= t][-1:] or ["-"])[0]

    top = sorted(pairs, key=lambda p: p[0] - p[1])[:5]  # the five longest gaps, longest first
    top_after = [f"{round((b - a) * 1000)} ms after {step_before(b)}" for a, b in top]
    gaps = sorted(b - a for a, b in pairs)
    no_leader = [e for e in writer.errors if "leader" in e]
    return {"how": how, "writer": writer_mode, "roll_s": round(seconds, 1),
            "writes_acked": len(writer.acked),
            "longest_gap_ms": round(gaps[-1] * 1000), "p99_gap_ms": round(
                gaps[int(len(gaps) * 0.99)] * 1000), "median_gap_ms": round(
                statistics.median(gaps) * 1000, 1), "failed_no_leader": len(no_leader),
            "failed_other": len(writer.errors) - len(no_leader),
            "failures": sorted({e.split(": ", 1)[-1][:60] for e in writer.errors}),
            "longest_gap_after": step_before(top[0][1]) if how == "k8simg" and top else "-",
            "top_gaps": top_after if how == "k8simg" else []}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="k8simg-bench-etcd."))
    rows = []
    for run in range(args.runs):
        for how, mode in (("k8simg", "pinned"), ("k8simg", "in order"),
                          ("textbook", "pinned"), ("textbook", "in order")):
            row = one_roll(tmp / str(run) / mode.replace(" ", "-"), how, mode)
            print(row, file=sys.stderr)
            rows.append(row)
    report("etcd_roll", rows)


if __name__ == "__main__":
    main()
