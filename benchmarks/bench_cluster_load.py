"""What an HA cluster of emulated masters costs the host at rest and under the roll test's
writer: the QEMU processes' CPU (cores) over windows of the cluster idle and of a writer
putting keys through etcd's JSON gateway at a fixed interval, with the writes acknowledged.

    python benchmarks/bench_cluster_load.py [--image PATH] [--intervals 0.02,0.5,1] [--window 60]

Three masters, 1.5 GiB and one vCPU each (TCG), as the local lifecycle test deploys them; the
writer is the test's (tests/ops/upgrade/test_etcd_roll.py Writer), from inside the cluster's
network namespace. Each writer window is followed by an idle one, so a window's extra CPU is
read against the idle window after it, of the same length. Runs as root. Everything started
is destroyed afterwards.
"""

import argparse
import ctypes
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import baked_test_images, report  # noqa: E402
from k8simg.clouds import open_cloud  # noqa: E402
from k8simg.clouds.local.process import cpu_seconds  # noqa: E402
from k8simg.ops.deploy import Deployment  # noqa: E402
from k8simg.pki import cluster_pki  # noqa: E402
from tests.clouds.local.conftest import PR_SET_CHILD_SUBREAPER, reap  # noqa: E402
from tests.conftest import write_cluster  # noqa: E402
from tests.ops.upgrade.test_etcd_roll import Writer  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def host_busy() -> float:
    user, nice, system, _idle, _iowait, irq, softirq = (
        int(x) for x in Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / TICK  # not steal: another tenant's time


def window(cd, pids: dict[str, int], seconds: float, interval: float | None) -> dict:
    """The guests' CPU (cores) and the host's over ``seconds``, with a writer every
    ``interval`` s when given."""
    writer = None
    if interval is not None:
        writer = Writer(cd.pki_dir, [f"https://10.0.0.1{i}:2379" for i in range(3)],
                        interval=interval, netns=open_cloud(cd, cd.load()).ns.name, sticky=True,
                        prefix=f"/bench-{interval}/")
        writer.start()
    guests0, host0, t0 = sum(cpu_seconds(p) for p in pids.values()), host_busy(), time.monotonic()
    time.sleep(seconds)
    guests1, host1, t1 = sum(cpu_seconds(p) for p in pids.values()), host_busy(), time.monotonic()
    if writer:
        writer.stop()
    took = t1 - t0
    out = {"guests": (guests1 - guests0) / took, "host": (host1 - host0) / took}
    if writer:
        inside = sum(t0 <= t <= t1 for _, t in writer.acked)
        out.update(writes=inside / took, errors=len(writer.errors), gap=writer.longest_gap)
    return out


def row(what: str, w: dict, rest: dict | None = None) -> dict:
    extra = w["guests"] - rest["guests"] if rest else None
    return {"what": what, "guests_cores": round(w["guests"], 2),
            "host_busy_cores": round(w["host"], 2),
            "extra_cores": None if extra is None else round(extra, 2),
            "writes_per_s": round(w["writes"], 1) if "writes" in w else None,
            "cpu_s_per_write": round(extra / w["writes"], 2) if rest and w["writes"] else None,
            "longest_gap_s": round(w["gap"], 2) if "gap" in w else None,
            "errors": w.get("errors")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", type=Path)
    ap.add_argument("--intervals", default="0.02,0.5,1",
                    help="seconds between the starts of writes, comma-separated (the roll "
                         "test's: 0.5)")
    ap.add_argument("--window", type=float, default=60, help="seconds per window")
    ap.add_argument("--settle", type=float, default=150,
                    help="seconds after deploy before the first window (the boots' tail: "
                         "image import, the rest of first boot)")
    args = ap.parse_args()
    found = baked_test_images()
    if not args.image and not found:
        sys.exit("no baked image: run the slow test tier once, or pass --image")
    image = (args.image or found[-1]).resolve()
    intervals = [float(x) for x in args.intervals.split(",")]
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # see bench_local
    cd = write_cluster(Path(tempfile.mkdtemp(prefix="k8simg-bench-load.")) / "ha",
                       image=str(image), topology="ha",
                       workers={"count": 0, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": False},
                       local={"memory_mb": 1536, "cpus": 1, "boot_timeout_s": 3600})
    cluster_pki(cd).ensure()  # key generation is bench_pki's
    rows, pids, daemons = [], {}, []
    try:
        t = time.monotonic()
        Deployment.for_cluster(cd, progress=lambda m: print(m, file=sys.stderr),
                               health_timeout=1800, wait_api=False).deploy()
        deployed = time.monotonic() - t
        print(f"deployed in {deployed:.0f} s; settling for {args.settle:.0f} s", file=sys.stderr)
        procs = open_cloud(cd, cd.load()).procs.all()
        daemons = [p.pid for p in procs.values()]
        pids = {k: p.pid for k, p in procs.items() if k.startswith("qemu:")}
        time.sleep(args.settle)
        rows.append(row(f"3 masters at rest (deployed in {deployed:.0f} s)",
                        window(cd, pids, args.window, None)))
        for interval in intervals:
            print(f"writer every {interval} s", file=sys.stderr)
            w = window(cd, pids, args.window, interval)
            rows.append(row(f"writer every {interval} s (extra: against the rest after it)", w,
                            window(cd, pids, args.window, None)))
    finally:
        left = Deployment.for_cluster(cd).destroy().left
        reap(daemons)
        if left:
            sys.exit(f"destroy left: {left}")
    report("cluster_load", rows)


if __name__ == "__main__":
    main()
