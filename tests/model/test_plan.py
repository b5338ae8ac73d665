"""Node names: one parser (``parse_node_name``) for every place a name is read back, exact to
the cluster (``prod``'s parser does not take ``prod-eu``'s nodes), round-tripping every role."""

import pytest

from k8simg.model.plan import make_node, node_key, parse_node_key, parse_node_name
from tests.conftest import write_cluster


@pytest.mark.parametrize("cluster", ["prod", "db-worker", "a-master-1"])
def test_every_role_round_trips(tmp_path, cluster):
    cfg = write_cluster(tmp_path / cluster, name=cluster).load()
    for role, index in (("master", 0), ("master", 41), ("worker", 7), ("etcd", 2),
                        ("bastion", 0)):
        node = make_node(cfg, role, index)
        assert parse_node_name(cluster, node.name) == (role, index)
        assert parse_node_key(cfg, node_key(node)) == node


def test_names_of_other_clusters_and_strangers_are_not_nodes():
    assert parse_node_name("prod", "prod-eu-master-0") is None
    assert parse_node_name("prod", "prod-eu-bastion") is None
    assert parse_node_name("prod", "prod-master-x") is None
    assert parse_node_name("prod", "prod-gpu-1") is None
    assert parse_node_name("prod", "staging-master-0") is None
    assert parse_node_name("prod-eu", "prod-eu-master-0") == ("master", 0)
