"""The Kubernetes side of every rendered node, held against each pinned release's own sources
(tests/conformance: the facts, each file naming the repository, tag and commit it was read
from; tests/conformance/upstream.py: the checks). Every topology, both clouds, every release
k8simg pins; and each check shown red on the mistake it exists to catch."""

import json

import pytest
import yaml

from k8simg.ignition.render import render_node
from k8simg.model.versions import RELEASES
from tests.conformance.upstream import config_problems, corefile_problems, netconf_problems
from tests.ignition.conftest import TOPOLOGIES
from tests.ignition.support import files, kube_objects

CASES = [(v, t, c) for v in sorted(RELEASES) for t in TOPOLOGIES for c in ("local", "openstack")]


@pytest.fixture
def rendered(rendered_cluster):
    """Every node of a cluster of ``topology`` on ``cloud`` for ``version``, rendered:
    ``[(node, Ignition config)]``."""
    def render(version, topology, cloud):
        _, ctx = rendered_cluster(topology, cloud=cloud, kubernetes_version=version,
                                  name=f"{topology.replace('-', '')}{cloud[0]}")
        return ctx, [(n, render_node(ctx, n)) for n in ctx.nodes if n.role != "bastion"]
    return render


def objects_of(doc, version, kind, name):
    return [o for _, o in kube_objects(doc, version)
            if o["kind"] == kind and o["metadata"]["name"] == name]


@pytest.mark.parametrize("version,topology,cloud", CASES)
def test_corefile_and_net_conf_use_only_what_their_pinned_versions_know(rendered, version,
                                                                       topology, cloud):
    release = RELEASES[version]
    _, nodes = rendered(version, topology, cloud)
    masters = [doc for n, doc in nodes if n.role == "master"]
    assert masters
    for doc in masters:
        (coredns,) = objects_of(doc, version, "ConfigMap", "coredns")
        assert corefile_problems(coredns["data"]["Corefile"], release.coredns) == []
        (flannel,) = objects_of(doc, version, "ConfigMap", "kube-flannel-cfg")
        assert netconf_problems(json.loads(flannel["data"]["net-conf.json"]),
                                release.flannel) == []


COREFILE = """\
.:53 {
    errors
    health {
       lameduck 5s
    }
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
    }
    forward . /etc/resolv.conf
}
"""


def test_an_unknown_corefile_directive_or_option_is_named():
    assert corefile_problems(COREFILE, "1.12.4") == []
    bad = COREFILE.replace("errors", "erors").replace("pods insecure", "pod insecure")
    assert corefile_problems(bad, "1.12.4") == [
        "CoreDNS 1.12.4 has no plugin 'erors'",
        "CoreDNS 1.12.4: plugin 'kubernetes' has no option 'pod' (it has: endpoint_pod_names, "
        "pods, namespaces, endpoint, tls, labels, namespace_labels, fallthrough, ttl, "
        "noendpoints, ignore, kubeconfig, multicluster, startup_timeout)"]
    # an option newer than a pinned version: kubernetes' startup_timeout is not in 1.12.1
    newer = COREFILE.replace("pods insecure", "startup_timeout 10s")
    assert corefile_problems(newer, "1.12.4") == []
    assert corefile_problems(newer, "1.12.1") == [
        "CoreDNS 1.12.1: plugin 'kubernetes' has no option 'startup_timeout' (it has: "
        "endpoint_pod_names, pods, namespaces, endpoint, tls, labels, namespace_labels, "
        "fallthrough, ttl, noendpoints, ignore, kubeconfig)"]


def test_an_unknown_net_conf_key_is_named():
    good = {"Network": "10.244.0.0/16", "EnableNFTables": False,
            "Backend": {"Type": "vxlan", "Port": 8472}}
    assert netconf_problems(good, "0.27.4") == []
    bad = {**good, "SubnetLenght": 24, "Backend": {"Type": "vxlan", "MacPrefix": "0E-2A"}}
    assert netconf_problems(bad, "0.27.4") == [
        "flannel 0.27.4: net-conf.json has no key 'SubnetLenght'",
        "flannel 0.27.4: the vxlan backend has no key 'MacPrefix'"]  # Windows' only


@pytest.mark.parametrize("version,topology,cloud", CASES)
def test_kubelet_and_kube_proxy_configs_use_only_fields_their_release_defines(
        rendered, version, topology, cloud):
    _, nodes = rendered(version, topology, cloud)
    kubelets = 0
    for node, doc in nodes:
        if node.role == "etcd":  # a dedicated etcd member runs no kubelet
            assert "/var/lib/kubelet/config.yaml" not in files(doc)
            continue
        kubelets += 1
        kubelet = yaml.safe_load(files(doc)["/var/lib/kubelet/config.yaml"][1])
        assert config_problems(kubelet, version, "KubeletConfiguration") == [], node.name
        if node.role == "master":
            (proxy,) = objects_of(doc, version, "ConfigMap", "kube-proxy")
            conf = yaml.safe_load(proxy["data"]["config.conf"])
            assert config_problems(conf, version, "KubeProxyConfiguration") == []
    assert kubelets


KUBELET = {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
           "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True}},
           "authorization": {"mode": "Webhook"}, "cgroupDriver": "systemd",
           "clusterDNS": ["10.96.0.10"], "syncFrequency": "1m0s", "maxPods": 110}


def test_a_misspelt_mistyped_or_unknown_kubelet_setting_is_named():
    assert config_problems(KUBELET, "1.35.2", "KubeletConfiguration") == []
    bad = {**KUBELET, "cgroupsDriver": "systemd", "maxPods": "110",
           "authorization": {"mode": "RBAC"}, "syncFrequency": "1 minute",
           "authentication": {"webhook": {"enabled": True, "cacheTTl": "2m"}},
           "streamingConnectionIdleTimeout": "4h"}
    assert config_problems(bad, "1.35.2", "KubeletConfiguration") == [
        "KubeletConfiguration 1.35.2 has no field 'authentication.webhook.cacheTTl'",
        "KubeletConfiguration 1.35.2: authorization.mode is 'RBAC', one of AlwaysAllow, "
        "Webhook expected",
        "KubeletConfiguration 1.35.2: syncFrequency is str '1 minute', the field is duration",
        "KubeletConfiguration 1.35.2: maxPods is str '110', the field is int32",
        "KubeletConfiguration 1.35.2 has no field 'cgroupsDriver'",
        "KubeletConfiguration 1.35.2: streamingConnectionIdleTimeout is deprecated (no longer "
        "has any effect.)"]
