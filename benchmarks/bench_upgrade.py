"""`k8simg upgrade`: time per master and per worker replacement, on the local cloud and on the
OpenStack test cloud, from the upgrade's own JSON events (``replace`` of a node until its
``deleted``), plus the whole roll.

    python benchmarks/bench_upgrade.py [--cloud local|test-cloud|both] [--image A.qcow2 --new-image B.qcow2]

local: an HA cluster (3 masters, 1 worker, 1.5 GiB and one vCPU each, TCG) deployed from
image A and rolled onto image B (default: the slow tier's image and its re-bake, in pytest's
cache). The test image's kubelet is a stand-in, so no API server runs: the Kubernetes gates are
skipped (named so) and the times are boot + etcd membership + VM removal.
test-cloud: an HA cluster (3 masters, 2 workers, bastion) on the test cloud (started here, or
``K8SIMG_TEST_CLOUD=<dir>``), rolled onto a second Glance image. Its computes run nothing, so
the times are the cloud's API work: port, volume, server, load balancer member, deletions.

Runs as root. Everything started is destroyed afterwards.
"""

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import report  # noqa: E402
from k8simg.ops.deploy import Deployment  # noqa: E402
from k8simg.pki import cluster_pki
from tests.conftest import edit_cluster, write_cluster  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def upgrade(cd: Path) -> tuple[list[dict], float]:
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "k8simg", "upgrade", str(cd), "-o", "json",
                        "--skip-unobservable"], capture_output=True, text=True)
    seconds = time.monotonic() - t
    if r.returncode != 0:
        sys.exit(f"upgrade exited {r.returncode}:\n{r.stderr[-3000:]}")
    return [json.loads(ln) for ln in r.stdout.splitlines()], seconds


def rows_from(cloud: str, events: list[dict], total: float) -> list[dict]:
    """Per replaced node: ``replace`` until the old node's ``deleted`` (a bastion, replaced in
    place: until the new one is up), and within it the boot (``replace`` to ``node-up``)."""
    begun = {e["node"]: (e["time"], e["role"], e["with"]) for e in events
             if e["event"] == "replace"}
    rows = []
    for e in events:
        if e["event"] == "deleted" and e["node"] in begun:
            t0, role, new = begun[e["node"]]
            up = next((x["time"] for x in events if x["event"] == "node-up"
                       and x["node"] == new and x["time"] >= t0), None)
            end = up if role == "bastion" else e["time"]
            rows.append({"cloud": cloud, "what": f"{role} replacement ({e['node']} -> {new})",
                         "seconds": round(end - t0, 1),
                         "boot_s": round(up - t0, 1) if up is not None else "-"})
    skipped = next(e for e in events if e["event"] == "done")["skipped_gates"]
    rows.append({"cloud": cloud, "what": f"whole upgrade (gates skipped: {', '.join(skipped)})",
                 "seconds": round(total, 1), "boot_s": "-"})
    return rows


def local(tmp: Path, image: Path, new_image: Path) -> list[dict]:
    from k8simg.clouds import open_cloud
    from k8simg.ops.etcd import Etcd, planned_endpoints
    from tests.clouds.local.conftest import PR_SET_CHILD_SUBREAPER, reap

    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # see tests/clouds/local/conftest.py
    cd = write_cluster(tmp / "roll", image=str(image), topology="ha",
                       workers={"count": 1, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": False},
                       local={"memory_mb": 1536, "cpus": 1, "boot_timeout_s": 3600})
    cluster_pki(cd).ensure()
    pids: set[int] = set()
    try:
        Deployment.for_cluster(cd, progress=lambda m: print(m, file=sys.stderr)).deploy()
        cloud = open_cloud(cd, cd.load())
        pids |= {r.pid for r in cloud.procs.all().values()}
        etcd = Etcd(cd.pki_dir, wrap=cloud.ns.exec)
        while not all(e.healthy for e in etcd.health(planned_endpoints(cd)) or [None]):
            time.sleep(5)
        edit_cluster(cd, image=str(new_image))  # (a long path is a folded YAML scalar)
        events, total = upgrade(cd.path)
        pids |= {r.pid for r in open_cloud(cd, cd.load()).procs.all().values()}
        return rows_from("local (TCG)", events, total)
    finally:
        left = Deployment.for_cluster(cd).destroy().left
        reap(pids)
        if left:
            print(f"destroy left: {left}", file=sys.stderr)


def test_cloud(tmp: Path) -> list[dict]:
    from tests.cloud.testcloud import TestCloud

    if os.environ.get("K8SIMG_TEST_CLOUD"):
        cloud = TestCloud.attach(Path(os.environ["K8SIMG_TEST_CLOUD"]))
    else:
        cloud = TestCloud(tmp / "cloud").start()
    try:
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(cloud.clouds_yaml(tmp / "clouds.yaml"))
        cloud.image("k8simg-bench-old", tmp)
        cloud.image("k8simg-bench-new", tmp, size="2G")
        cd = write_cluster(
            tmp / "roll", cloud="k8simg-test", image="k8simg-bench-old", topology="ha",
            masters={"count": 3, "flavor": "k8s.small", "volume_size_gb": 10},
            workers={"count": 2, "flavor": "k8s.small", "volume_size_gb": 10},
            bastion__flavor="k8s.tiny", openstack__external_network="public")
        cluster_pki(cd).ensure()
        Deployment.for_cluster(cd, None).deploy()
        try:
            edit_cluster(cd, image="k8simg-bench-new")
            events, total = upgrade(cd.path)
            return rows_from("OpenStack test cloud", events, total)
        finally:
            Deployment.for_cluster(cd, None).destroy()
    finally:
        cloud.stop()


def cached_images() -> tuple[Path, Path]:
    found = sorted(ROOT.glob(".pytest_cache/d/baked-image/*-rebake/k8simg-*.qcow2"))
    if not found:
        sys.exit("no re-baked image: run the slow test tier once, or pass --image/--new-image")
    again = found[-1]
    first = again.parent.with_name(again.parent.name.removesuffix("-rebake")) / again.name
    return first, again


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cloud", choices=["local", "test-cloud", "both"], default="both",
                    help="default: both (as benchmarks/run.py runs it; ~50 min)")
    ap.add_argument("--image", type=Path)
    ap.add_argument("--new-image", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="k8simg-bench-upgrade."))
    for part in ("local", "test-cloud"):
        (tmp / part).mkdir()
    if args.cloud in ("local", "both"):
        first, again = (args.image, args.new_image) if args.image else cached_images()
        report("upgrade-local", local(tmp / "local", first.resolve(), again.resolve()))
    if args.cloud in ("test-cloud", "both"):
        report("upgrade-test-cloud", test_cloud(tmp / "test-cloud"))


if __name__ == "__main__":
    main()
