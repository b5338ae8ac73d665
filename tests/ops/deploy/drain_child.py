"""Run as a child process by tests/ops/deploy/test_killed_drain.py, which SIGKILLs it in the
middle of a drain: ``python -m tests.ops.deploy.drain_child CLUSTER_DIR pki|kubeconfig``.

A deploy that scales the workers down, with the Kubernetes API double served over HTTPS and
requiring a client certificate of the cluster's CA, as kube-apiserver does. ``pki`` reaches it
the way deploy does (:func:`k8simg.ops.drain.api_access`); ``kubeconfig`` the way k8simg did
before, loading ``admin.conf`` (the test's control: that writes the key to the temporary
folder). A disruption budget that never allows an eviction keeps the drain going until the
kill; ``DRAINING`` on stdout says it has started.
"""

import sys
import threading
import time
from pathlib import Path

from k8simg.model.cluster import ClusterDir
from k8simg.ops.deploy import Deployment
from k8simg.pki import certs as table
from k8simg.pki import cluster_pki
from tests.conftest import edit_cluster
from tests.ops.upgrade.cloud_double import CloudDouble
from tests.ops.upgrade.kubeapi import KubeApiDouble


def main(path: str, how: str) -> None:
    cd = ClusterDir(Path(path))
    pki = cluster_pki(cd)
    server = next(i for i in table.instances(pki.ctx) if i.id.startswith("apiserver@"))
    api = KubeApiDouble()
    api.serve_tls(*pki.paths(server), cd.pki_dir / "ca.crt")
    edit_cluster(cd, api__port=api.server.server_address[1])
    cluster_pki(cd).write_kubeconfigs(cd.kubeconfig_dir)
    with api:
        cloud = CloudDouble(cd, api, "img")
        for node in cd.nodes(cd.load()):
            cloud.place(node, "img")
        workers = [n.name for n in cd.nodes(cd.load()) if n.role == "worker"]
        api.add_replicaset("default", "web", {"app": "web"}, workers)
        api.add_pdb("default", "web", {"app": "web"}, min_available=len(workers))
        edit_cluster(cd, workers__count=1)
        cloud.cfg = cd.load()

        def said_when_draining():
            while not api.evictions:
                time.sleep(0.05)
            print("DRAINING", flush=True)

        threading.Thread(target=said_when_draining, daemon=True).start()
        kube = None
        if how == "kubeconfig":
            from kubernetes import client, config

            def kube():
                conf = client.Configuration()
                config.load_kube_config(str(cd.kubeconfig_dir / "admin.conf"),
                                        client_configuration=conf)
                return client.ApiClient(conf)
        Deployment(cd, cloud, kube=kube, drain_timeout=600).deploy()


if __name__ == "__main__":
    main(*sys.argv[1:])
