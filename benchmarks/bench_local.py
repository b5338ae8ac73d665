"""The local cloud on this machine: time from `k8simg deploy` to a healthy 3-member etcd (HA, three
masters booted at once), each node's boot time (QEMU started -> login prompt with its own
hostname), the same for one node booting alone, a no-change re-deploy and destroy.

    python benchmarks/bench_local.py [--image PATH] [--memory-mb N] [--skip-single] [--demo]
                                     [--slice-ms MS]

--demo deploys what `bash scripts/main` does instead of the bare three masters: three masters, a
worker and the bastion, five VMs at once (#18's "every node up <= 120 s").

The image defaults to the slow test tier's (pytest's cache); `k8simg bake` makes one too.
Runs as root (network namespace, taps). Everything started is destroyed afterwards.
"""

import argparse
import ctypes
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import baked_test_images, report  # noqa: E402
from k8simg.clouds import open_cloud  # noqa: E402
from k8simg.clouds.local import driver  # noqa: E402
from k8simg.clouds.local.process import cpu_seconds  # noqa: E402
from k8simg.ops.deploy import Deployment  # noqa: E402
from k8simg.ops.etcd import Etcd, planned_endpoints  # noqa: E402
from k8simg.pki import cluster_pki
from tests.clouds.local.conftest import PR_SET_CHILD_SUBREAPER, reap  # noqa: E402
from tests.conftest import write_cluster  # noqa: E402


def default_image() -> Path:
    found = baked_test_images()
    if not found:
        sys.exit("no baked image: run the slow test tier once, or pass --image")
    return found[-1]


def run(tmp: Path, image: Path, name: str, topology: str, memory: int, workers: int = 0,
        bastion: bool = False) -> list[dict]:
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
        Deployment.for_cluster(cd, progress=lambda m: print(m, file=sys.stderr)).deploy()
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
        t = time.monotonic()
        again = Deployment.for_cluster(cd).deploy()
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
    args = ap.parse_args()
    if args.slice_ms is not None:
        driver.QEMU_SLICE_MS = args.slice_ms
    image = (args.image or default_image()).resolve()
    # The daemons outlive deploy and are re-parented to us, so we can reap them (see
    # tests/clouds/local/conftest.py).
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    tmp = Path(tempfile.mkdtemp(prefix="k8simg-bench-local."))
    if args.demo:
        rows = run(tmp, image, "demo", "ha", 2048, workers=1, bastion=True)
    else:
        rows = run(tmp, image, "ha", "ha", args.memory_mb)
    if not args.skip_single:
        rows += run(tmp, image, "solo", "single", args.memory_mb)
    report("local", rows)


if __name__ == "__main__":
    main()
