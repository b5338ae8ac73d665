"""Deploy on the OpenStack test cloud: wall time and API requests of an HA deploy (3 masters,
2 workers, bastion), with concurrent creation and with the one-at-a-time baseline, plus the
test cloud's own start-up time.

    python benchmarks/bench_deploy.py [--runs N]

Starts its own test cloud (tests/cloud), or uses one left running with
``K8SIMG_TEST_CLOUD=<dir>``. Every run deploys from nothing and is destroyed afterwards.
"""

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keystoneauth1.session as ks  # noqa: E402

from benchmarks.common import report  # noqa: E402
from k8simg.ops.deploy import Deployment  # noqa: E402
from k8simg.pki import cluster_pki
from tests.cloud.testcloud import TestCloud  # noqa: E402
from tests.conftest import write_cluster  # noqa: E402

IMAGE = "k8simg-bench"
_requests = itertools.count()
_original = ks.Session.request


def _counting(self, *args, **kwargs):
    next(_requests)
    return _original(self, *args, **kwargs)


ks.Session.request = _counting


def counted(fn):
    before = next(_requests)
    t = time.monotonic()
    result = fn()
    seconds = time.monotonic() - t
    after = next(_requests)
    return result, seconds, after - before - 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="k8simg-bench-deploy."))
    if os.environ.get("K8SIMG_TEST_CLOUD"):
        cloud = TestCloud.attach(Path(os.environ["K8SIMG_TEST_CLOUD"]))
    else:
        cloud = TestCloud(tmp / "cloud")
        t = time.monotonic()
        cloud.start()
        rows.append({"what": "test cloud cold start", "concurrency": "-",
                     "seconds": round(time.monotonic() - t, 1), "api_requests": "-"})
    try:
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(cloud.clouds_yaml(tmp / "clouds.yaml"))
        cloud.image(IMAGE, tmp)
        for run, concurrency in itertools.product(range(args.runs), (8, 1)):
            name = f"bench{run}c{concurrency}"
            cd = write_cluster(
                tmp / name, cloud="k8simg-test", image=IMAGE, topology="ha",
                masters={"count": 3, "flavor": "k8s.small", "volume_size_gb": 10},
                workers={"count": 2, "flavor": "k8s.small", "volume_size_gb": 10},
                bastion__flavor="k8s.tiny", openstack__external_network="public")
            cluster_pki(cd).ensure()  # key generation is measured by bench_pki, not here
            d = Deployment.for_cluster(cd, None, concurrency=concurrency)
            result, seconds, reqs = counted(d.deploy)
            rows.append({"what": "HA deploy 3+2+bastion", "concurrency": concurrency,
                         "seconds": round(seconds, 1), "api_requests": reqs,
                         "changes": len(result.changes)})
            _, seconds, reqs = counted(Deployment.for_cluster(cd, None).deploy)
            rows.append({"what": "  re-deploy (no change)", "concurrency": 8,
                         "seconds": round(seconds, 1), "api_requests": reqs, "changes": 0})
            _, seconds, reqs = counted(Deployment.for_cluster(cd, None).destroy)
            rows.append({"what": "  destroy", "concurrency": 8, "seconds": round(seconds, 1),
                         "api_requests": reqs, "changes": "-"})
    finally:
        cloud.stop()
    for r in rows:
        r.setdefault("changes", "-")
    report("deploy", rows)


if __name__ == "__main__":
    main()
