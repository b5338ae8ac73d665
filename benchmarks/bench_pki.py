"""PKI generation time for an HA cluster of 3 masters + 100 workers, per key algorithm.

    python benchmarks/bench_pki.py [--repeat N]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import report  # noqa: E402
from k8simg.model.cluster import ClusterDir, init_cluster  # noqa: E402
from k8simg.pki import cluster_pki
from k8simg.pki.keys import ALGORITHMS  # noqa: E402


def run(algorithm: str, workdir: Path) -> tuple[float, int]:
    cd = init_cluster(workdir / algorithm)
    text = cd.config_path.read_text()
    text = text.replace("workers:\n  count: 2", "workers:\n  count: 100")
    text = text.replace("node_cidr: 10.0.0.0/24", "node_cidr: 10.0.0.0/23")
    text = text.replace("key_algorithm: ecdsa-p256", f"key_algorithm: {algorithm}")
    cd.config_path.write_text(text)
    cd = ClusterDir(cd.path)
    start = time.perf_counter()
    p = cluster_pki(cd)
    result = p.ensure()
    p.write_kubeconfigs(cd.kubeconfig_dir)
    return time.perf_counter() - start, len(result.created)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for algorithm in ALGORITHMS:
        times = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as d:
                t, created = run(algorithm, Path(d))
                times.append(t)
        rows.append({"algorithm": algorithm, "nodes": "3 masters + 100 workers",
                     "keys": created, "median_s": round(statistics.median(times), 3),
                     "min_s": round(min(times), 3), "max_s": round(max(times), 3),
                     "runs": args.repeat})
    report("pki", rows)


if __name__ == "__main__":
    main()
