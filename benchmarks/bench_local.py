"""The local cloud on this machine: time from `k8simg deploy` to a healthy 3-member etcd (HA, three
masters booted at once), each node's boot time (QEMU started -> login prompt with its own
hostname), the same for one node booting alone, a no-change re-deploy and destroy.

    python benchmarks/bench_local.py [--image PATH] [--memory-mb N] [--skip-single] [--demo]
                                     [--slice-ms MS] [--idle S]

--idle S keeps the cluster up once every etcd member answers and reports what each master costs
at rest over S seconds: its QEMU's CPU on the host a minute, and in the guest its busy time and
the units that used it (a bench-only unit on each master, bench_bake.py's --idle script, started
20 s after the node sees its whole etcd cluster healthy).

--demo deploys what `bash scripts/main` does instead of the bare three masters: three masters, a
worker and the bastion, five VMs at once (#18's "every node up <= 120 s").

The image defaults to the slow test tier's (pytest's cache); `k8simg bake` makes one too.
Runs as root (network namespace, taps). Everything started is destroyed afterwards, and the
clusters' folders are removed.
"""

import argparse
import ctypes
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_bake import IDLE  # noqa: E402
from benchmarks.common import baked_test_images, report  # noqa: E402
from k8simg.clouds import open_cloud  # noqa: E402
from k8simg.clouds.local import driver  # noqa: E402
from k8simg.clouds.local.process import cpu_seconds  # noqa: E402
from k8simg.ops.deploy import Deployment  # noqa: E402
from k8simg.ops.etcd import Etcd, planned_endpoints  # noqa: E402
from k8simg.pki import cluster_pki
from tests.clouds.local.conftest import PR_SET_CHILD_SUBREAPER, reap  # noqa: E402
from tests.conftest import write_cluster  # noqa: E402
from tests.ops.bake.test_boot import ETCD_HEALTH, add_script, add_script_unit  # noqa: E402

# On each master with --idle: once every member of its etcd cluster answers healthy (asked
# through its own member, as the node's own client), 20 s to settle, then the window on the
# serial console (bench_bake's IDLE marks and report lines).
AT_REST = r"""#!/bin/bash
pki=/etc/kubernetes/pki
ETCD_IP=$(ip -4 -o addr show scope global | awk '{ print $4 }' | cut -d/ -f1 | head -n 1)
until [ "$($ETCD_HEALTH --cluster 2>&1 | grep -c 'is healthy')" = "$MEMBERS" ]; do
    sleep 3
done
sleep 20
exec > /dev/ttyS0 2>&1
k8simg-bench-idle "$SECONDS_AT_REST"
""".replace("$ETCD_HEALTH", ETCD_HEALTH)


def with_rest_probe(render, members: int, seconds: int):
    """``render`` with the at-rest probe on every master's config."""
    def rendered():
        out = {}
        for name, data in render().items():
            doc = json.loads(data)
            if "-master-" in name:
                add_script(doc, "k8simg-bench-idle", IDLE)
                add_script_unit(doc, "k8simg-bench-at-rest", AT_REST.replace(
                    "$MEMBERS", str(members)).replace("$SECONDS_AT_REST", str(seconds)),
                    "After=multi-user.target k8simg-etcd.service\n")
            out[name] = json.dumps(doc).encode()
        return out
    return rendered


def at_rest(cd, procs: dict, seconds: int) -> list[dict]:
    """Rows for each master at rest: QEMU's CPU a minute between the window's two marks on its
    console (read as they show), and what the guest said it used."""
    nodes = cd.path / "local" / "nodes"
    pids = {key[5:]: r.pid for key, r in procs.items()
            if key.startswith("qemu:") and "-master-" in key}
    seen: dict[tuple[str, str], tuple[float, float | None]] = {}
    deadline = time.monotonic() + seconds + 600
    while time.monotonic() < deadline and len(seen) < 2 * len(pids):
        for name, pid in pids.items():
            text = (nodes / name / "console.log").read_text(errors="replace")
            for mark in ("IDLE-START", "IDLE-END"):
                if (name, mark) not in seen and f"K8SIMG-BENCH {mark}" in text:
                    seen[(name, mark)] = (time.monotonic(), cpu_seconds(pid))
        time.sleep(0.5)
    time.sleep(2)  # the report lines follow the last end mark
    rows = []
    for name in sorted(pids):
        (t0, c0), (t1, c1) = (seen.get((name, m), (0.0, None)) for m in ("IDLE-START", "IDLE-END"))
        if c0 is None or c1 is None:
            rows.append({"cluster": cd.path.name, "what": f"{name} at rest", "seconds": "no window seen"})
            continue
        rows.append({"cluster": cd.path.name, "what": f"{name} at rest: QEMU CPU-s a minute",
                     "seconds": round(60 * (c1 - c0) / (t1 - t0), 1)})
        text = (nodes / name / "console.log").read_text(errors="replace")
        said = [m.strip() for m in re.findall(r"K8SIMG-BENCH idle \d+ s: (.*)", text)]
        rows.append({"cluster": cd.path.name, "what": f"{name} at rest {seconds} s, guest "
                     "CPU-s (busy, then its units)", "seconds": "; ".join(said)})
    return rows


def default_image() -> Path:
    found = baked_test_images()
    if not found:
        sys.exit("no baked image: run the slow test tier once, or pass --image")
    return found[-1]


def run(tmp: Path, image: Path, name: str, topology: str, memory: int, workers: int = 0,
        bastion: bool = False, idle: int = 0) -> list[dict]:
    masters = 3 if topology == "ha" else 1
    cd = write_cluster(tmp / name, image=str(image), topology=topology,
                       masters={"count": masters, "flavor": "x", "volume_size_gb": 10},
                       workers={"count": workers, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": bastion},
                       local={"memory_mb": memory, "cpus": 1, "boot_timeout_s": 3600})
    cluster_pki(cd).ensure()  # key generation is bench_pki's
    rows = []
    pids = []
    try:
        t0 = time.monotonic()
        d = Deployment.for_cluster(cd, progress=lambda m: print(m, file=sys.stderr))
        if idle:
            d.render = with_rest_probe(d.render, masters, idle)
        d.deploy()
        deployed = time.monotonic() - t0
        cloud = open_cloud(cd, cd.load())
        procs = cloud.procs.all()
        pids = [r.pid for r in procs.values()]
        # What each guest's boot cost the host: against one node booting alone, the price of
        # booting them together (the two cores shared by every guest at once).
        for key, r in sorted(procs.items()):
            if key.startswith("qemu:") and (cpu := cpu_seconds(r.pid)) is not None:
                rows.append({"cluster": name, "what": f"{key[5:]} QEMU CPU-s at deploy's return",
                             "seconds": round(cpu, 1)})
        etcd = Etcd(cd.pki_dir, wrap=cloud.ns.exec)
        while True:
            eps = etcd.health(planned_endpoints(cd))
            if eps and all(e.healthy for e in eps):
                break
            time.sleep(2)
        healthy = time.monotonic() - t0
        for d in sorted((cd.path / "local" / "nodes").iterdir()):
            rec = json.loads((d / "node.json").read_text())
            rows.append({"cluster": name, "what": f"{rec['name']} boot (QEMU -> login prompt)",
                         "seconds": round(rec["ready_at"] - rec["started_at"], 1)})
        rows.append({"cluster": name, "what": "deploy (to every login prompt)",
                     "seconds": round(deployed, 1)})
        rows.append({"cluster": name, "what": f"deploy -> {len(eps)}-member etcd healthy",
                     "seconds": round(healthy, 1)})
        if idle:
            rows += at_rest(cd, procs, idle)
        t = time.monotonic()
        again = Deployment.for_cluster(cd)
        if idle:  # the same configs, or the re-deploy would replace the nodes
            again.render = with_rest_probe(again.render, masters, idle)
        again = again.deploy()
        assert again.changes == [], again.changes
        rows.append({"cluster": name, "what": "re-deploy, no change",
                     "seconds": round(time.monotonic() - t, 1)})
    finally:
        t = time.monotonic()
        left = Deployment.for_cluster(cd).destroy().left
        rows.append({"cluster": name, "what": "destroy", "seconds": round(time.monotonic() - t, 1)})
        reap(pids)
        if left:
            sys.exit(f"destroy left: {left}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", type=Path)
    ap.add_argument("--memory-mb", type=int, default=1536)
    ap.add_argument("--skip-single", action="store_true")
    ap.add_argument("--demo", action="store_true",
                    help="the HA cluster as `bash scripts/main` deploys it: three masters, one "
                         "worker and the bastion (five 1-vCPU VMs booted at once), 2048 MB each")
    ap.add_argument("--slice-ms", type=float, metavar="MS",
                    help="the time slice the guests' QEMUs ask for (0: the kernel's own); "
                         "default: the local cloud's (k8simg.clouds.local.driver.QEMU_SLICE_MS)")
    ap.add_argument("--idle", type=int, default=0, metavar="S",
                    help="once etcd is whole, what each master costs at rest over S seconds")
    args = ap.parse_args()
    if args.slice_ms is not None:
        driver.QEMU_SLICE_MS = args.slice_ms
    image = (args.image or default_image()).resolve()
    # The daemons outlive deploy and are re-parented to us, so we can reap them (see
    # tests/clouds/local/conftest.py).
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # The clusters' folders (their keys among them) go with the run, as their VMs do.
    with tempfile.TemporaryDirectory(prefix="k8simg-bench-local.") as d:
        tmp = Path(d)
        if args.demo:
            rows = run(tmp, image, "demo", "ha", 2048, workers=1, bastion=True, idle=args.idle)
        else:
            rows = run(tmp, image, "ha", "ha", args.memory_mb, idle=args.idle)
        if not args.skip_single:
            rows += run(tmp, image, "solo", "single", args.memory_mb, idle=args.idle)
    report("local", rows)


if __name__ == "__main__":
    main()
