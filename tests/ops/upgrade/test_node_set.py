"""The cluster's node set across replacements: indices only grow, the state records the set,
the PKI and deploy follow it, and deploy refuses while an upgrade is unfinished."""

import pytest

from k8simg.errors import K8simgError
from k8simg.model.plan import make_node, next_node, parse_node_key
from k8simg.ops.deploy import Deployment
from k8simg.pki import cluster_pki
from tests.conftest import write_cluster


def test_replacements_take_the_next_index_and_the_state_records_them(tmp_path):
    cd = write_cluster(tmp_path / "ns", workers={"count": 1, "flavor": "x",
                                                 "volume_size_gb": 10},
                       bastion={"enabled": False})
    cfg = cd.load()
    nodes = cd.nodes(cfg)
    assert [n.name for n in nodes] == ["ns-master-0", "ns-master-1", "ns-master-2",
                                       "ns-worker-0"]
    new = next_node(cfg, "master", nodes)
    assert (new.name, str(new.address)) == ("ns-master-3", "10.0.0.13")
    cd.save_nodes([n for n in nodes if n.name != "ns-master-0"] + [new])
    assert [n.name for n in cd.nodes(cfg)] == ["ns-master-1", "ns-master-2", "ns-worker-0",
                                               "ns-master-3"]
    # The PKI follows the set: the new master gets its certificates, the old one none.
    cluster_pki(cd, cfg).ensure()
    assert (cd.pki_dir / "nodes/ns-master-3/etcd/peer.crt").exists()
    assert not (cd.pki_dir / "nodes/ns-master-0").exists()
    assert parse_node_key(cfg, "worker-7") == make_node(cfg, "worker", 7)
    with pytest.raises(ValueError, match="'gpu-1' is not <role>-<index>"):
        parse_node_key(cfg, "gpu-1")


def test_deploy_refuses_while_an_upgrade_is_unfinished(tmp_path):
    cd = write_cluster(tmp_path / "busy")
    cd.state.begin_upgrade("k8simg-new")
    with pytest.raises(K8simgError, match="an upgrade to k8simg-new is in progress"):
        Deployment.for_cluster(cd).deploy()
