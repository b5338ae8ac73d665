"""Bytes of every role's Ignition config, raw and as base64, against Nova's user_data limit.

    python benchmarks/bench_ignition_sizes.py [--algorithms ecdsa-p256,rsa-2048]
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import report  # noqa: E402
from k8simg.ignition.document import dumps  # noqa: E402
from k8simg.ignition.render import NOVA_USER_DATA_BASE64_LIMIT, render_context, render_node  # noqa: E402
from k8simg.model.cluster import ClusterDir, init_cluster  # noqa: E402
from k8simg.pki import cluster_pki
from k8simg.pki.keys import ALGORITHMS  # noqa: E402

TOPOLOGIES = ("single", "1+2", "ha3+2", "ha5+2", "ha3+2 etcd3")


def cluster(root: Path, topology: str, algorithm: str, cloud: str) -> ClusterDir:
    cd = init_cluster(root / "c", cloud=cloud)
    text = cd.config_path.read_text().replace("key_algorithm: ecdsa-p256",
                                              f"key_algorithm: {algorithm}")
    if topology == "single":
        text = text.replace("topology: ha", "topology: single").replace(
            "masters:\n  count: 3", "masters:\n  count: 1").replace(
            "workers:\n  count: 2", "workers:\n  count: 0")
    elif topology == "1+2":
        text = text.replace("topology: ha", "topology: one-master").replace(
            "masters:\n  count: 3", "masters:\n  count: 1")
    elif topology == "ha5+2":
        text = text.replace("masters:\n  count: 3", "masters:\n  count: 5")
    elif topology == "ha3+2 etcd3":
        text = text.replace("placement: stacked", "placement: dedicated")
    cd.config_path.write_text(text)
    cluster_pki(cd).ensure()
    if cloud != "local":
        cred = cd.path / "openstack/application-credential.json"
        cred.parent.mkdir()
        cred.write_text(json.dumps({
            "auth_url": "https://keystone.example.com:5000/v3",
            "application_credential_id": "0" * 32,
            "application_credential_secret": "x" * 86, "region": "RegionOne"}))
    return cd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    args = ap.parse_args()
    rows = []
    for algorithm in args.algorithms.split(","):
        for cloud in ("openstack", "local"):
            for topology in TOPOLOGIES:
                with tempfile.TemporaryDirectory() as d:
                    cd = cluster(Path(d), topology, algorithm, cloud)
                    ctx = render_context(cd)
                    seen = set()
                    for node in ctx.nodes:
                        role = node.role
                        if role in seen:
                            continue
                        seen.add(role)
                        raw = len(dumps(render_node(ctx, node)))
                        b64 = -(-raw // 3) * 4
                        rows.append({
                            "algorithm": algorithm, "cloud": cloud, "topology": topology,
                            "role": role, "raw_bytes": raw, "base64_bytes": b64,
                            "of_limit": f"{100 * b64 / NOVA_USER_DATA_BASE64_LIMIT:.0f}%",
                            "fits": "yes" if b64 <= NOVA_USER_DATA_BASE64_LIMIT else "NO"})
    report("ignition_sizes", rows)


if __name__ == "__main__":
    main()
