"""The Kubernetes side of every rendered node, held against each pinned release's own sources
(tests/conformance: the facts, each file naming the repository, tag and commit it was read
from; tests/conformance/upstream.py: the checks). Every topology, both clouds, every release
k8simg pins; and each check shown red on the mistake it exists to catch."""

import json

import pytest
import yaml

from k8simg.ignition.image import etcd_line
from k8simg.ignition.render import render_node
from k8simg.model.versions import DEBIAN_ETCD, RELEASES
from tests.conformance.differences import HELP_DEPRECATED_KEPT, KUBEADM_DIFFERENCES
from tests.conformance.upstream import (
    config_problems,
    controller_problems,
    corefile_problems,
    etcd_flag_problems,
    facts,
    flag_problems,
    flags_of,
    kubeadm_gaps,
    netconf_problems,
)
from tests.ignition.conftest import TOPOLOGIES
from tests.ignition.support import env_values, exec_start, files, kube_objects, node_view

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


CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")


def commands(doc, version, role) -> dict[str, list[str]]:
    """What each Kubernetes component and etcd on the node is started with: the static pods'
    commands, kubelet's drop-in ExecStart with $KUBELET_ARGS, etcd's unit with its
    ETCD_<FLAG> variables."""
    out = {}
    for name in CONTROL_PLANE:
        pods = [o for p, o in kube_objects(doc) if p == f"/etc/kubernetes/manifests/{name}.yaml"]
        if pods:
            out[name] = pods[0]["spec"]["containers"][0]["command"][1:]
    view = node_view(doc, version)
    if "/etc/k8simg/kubelet.env" in files(doc):
        dropin = view["/etc/systemd/system/kubelet.service.d/10-k8simg.conf"][1].decode()
        args = env_values(doc, "/etc/k8simg/kubelet.env")["KUBELET_ARGS"].split()
        out["kubelet"] = [a for a in exec_start(dropin)[1:] if a != "$KUBELET_ARGS"] + args
    if "/etc/k8simg/etcd.env" in files(doc):
        argv = exec_start(view["/etc/systemd/system/k8simg-etcd.service"][1].decode())[1:]
        argv += [f"--{k.removeprefix('ETCD_').lower().replace('_', '-')}={v}"
                 for k, v in env_values(doc, "/etc/k8simg/etcd.env").items() if k]
        out["etcd"] = argv
    return out


@pytest.mark.parametrize("version,topology,cloud", CASES)
def test_every_flag_exists_in_its_release_and_kubeadms_are_set_or_explained(
        rendered, version, topology, cloud):
    _, nodes = rendered(version, topology, cloud)
    seen = set()
    for node, doc in nodes:
        for component, argv in commands(doc, version, node.role).items():
            seen.add(component)
            where = f"{node.name} {component}"
            if component == "etcd":  # the image's etcd: the one kubeadm pins for the release
                assert etcd_flag_problems(argv, etcd_line(RELEASES[version].etcd)) == [], where
            else:
                assert flag_problems(component, argv, version,
                                     HELP_DEPRECATED_KEPT.get(component, {})) == [], where
            if component != "kubelet":
                assert kubeadm_gaps(component, argv, version,
                                    KUBEADM_DIFFERENCES[component]) == [], where
            if component == "kube-controller-manager":
                assert controller_problems(flags_of(argv)["controllers"], version) == []
    assert seen == {*CONTROL_PLANE, "kubelet", "etcd"}


def test_a_removed_deprecated_or_unknown_flag_is_named():
    argv = ["--node-ip=10.0.0.11", "--cloud-provider=external"]
    assert flag_problems("kubelet", argv, "1.35.2", {}) == []
    # kubelet's --pod-infra-container-image: deprecated in 1.34, gone in 1.35
    pause = ["--pod-infra-container-image=registry.k8s.io/pause:3.10.1"]
    assert flag_problems("kubelet", argv + pause, "1.35.2", {}) == [
        "kubelet 1.35.2 has no flag --pod-infra-container-image"]
    (deprecated,) = flag_problems("kubelet", argv + pause, "1.34.5", {})
    assert deprecated.startswith("kubelet 1.34.5: --pod-infra-container-image is deprecated: ")
    assert flag_problems("kube-apiserver", ["--insecure-port=0", "--apiserver-count=3"],
                         "1.35.2", {}) == [
        "kube-apiserver 1.35.2 has no flag --insecure-port",
        "kube-apiserver 1.35.2: --apiserver-count is deprecated: "
        + flag_spec("kube-apiserver", "1.35.2", "apiserver-count")["deprecated"]]
    # a flag whose help says DEPRECATED is kept only with a reason in the table
    (soft,) = flag_problems("kube-scheduler", ["--kubeconfig=/x"], "1.35.2", {})
    assert soft.startswith("kube-scheduler 1.35.2: --kubeconfig's help says 'DEPRECATED: ")
    assert flag_problems("kube-scheduler", ["--kubeconfig=/x"], "1.35.2",
                         HELP_DEPRECATED_KEPT["kube-scheduler"]) == []


def etcd_unit_argv(version, etcd_version=None):
    from k8simg.ignition.image import image_files
    unit = image_files(version, etcd_version)["/etc/systemd/system/k8simg-etcd.service"][1]
    return exec_start(unit)[1:]


@pytest.mark.parametrize("version", sorted(RELEASES))
def test_the_offline_images_etcd_gets_kubeadms_flags_by_their_names_before_3_6(version):
    """The image baked without Kubernetes carries Debian's etcd 3.4: its unit names what
    kubeadm sets as kubeadm names it for an etcd before 3.6."""
    argv = etcd_unit_argv(version, DEBIAN_ETCD)
    kubeadm = facts(f"k8s-{version}-kubeadm")["etcd"]
    for flag in ("feature-gates", "watch-progress-notify-interval"):
        # kubeadm's own words for an etcd before 3.6, e.g. "... writes
        # --experimental-initial-corrupt-check=true instead"
        old = next(w for w in kubeadm[flag]["when"].split() if w.startswith("--experimental-"))
        assert old.rstrip(")") in argv, (flag, argv)
    assert etcd_flag_problems(argv, etcd_line(DEBIAN_ETCD)) == []
    # and the release image's unit gives the same settings by etcd 3.6's names
    release_argv = etcd_unit_argv(version)
    assert flags_of(release_argv)["feature-gates"] == kubeadm["feature-gates"]["value"]
    assert flags_of(release_argv)["watch-progress-notify-interval"] == \
        kubeadm["watch-progress-notify-interval"]["value"]


def test_an_etcd_flag_by_the_wrong_lines_name_is_named():
    old = ["--experimental-initial-corrupt-check=true",
           "--experimental-watch-progress-notify-interval=5s"]
    new = ["--feature-gates=InitialCorruptCheck=true", "--watch-progress-notify-interval=5s"]
    assert etcd_flag_problems(new, (3, 6)) == []
    assert etcd_flag_problems(old, (3, 4)) == []
    assert etcd_flag_problems(old + ["--enable-v2=true", "--max-snapshots=5"], (3, 6)) == [
        "etcd 3.6: --experimental-initial-corrupt-check is the feature gate "
        "InitialCorruptCheck now",
        "etcd 3.6: --experimental-watch-progress-notify-interval is renamed "
        "--watch-progress-notify-interval (the old name goes in 3.7)",
        "etcd 3.6: --enable-v2 is removed", "etcd 3.6: --max-snapshots is deprecated"]
    assert etcd_flag_problems(["--feature-gates=InitialCorruptChek=true"], (3, 6)) == [
        "etcd 3.6: no feature gate 'InitialCorruptChek' known here"]
    assert etcd_flag_problems(new, (3, 5)) == [
        "etcd 3.5 has no flag --feature-gates (etcd 3.6's name)",
        "etcd 3.5 has no flag --watch-progress-notify-interval (etcd 3.6's name)"]


def test_controller_names_are_the_releases_own():
    assert controller_problems("*,-node-ipam-controller", "1.35.2") == []
    assert controller_problems("*,bootstrapsigner,tokencleaner,tokencleanr", "1.35.2") == [
        "kube-controller-manager 1.35.2: 'bootstrapsigner' is an alias of "
        "'bootstrap-signer-controller'",
        "kube-controller-manager 1.35.2: 'tokencleaner' is an alias of "
        "'token-cleaner-controller'",
        "kube-controller-manager 1.35.2: no controller 'tokencleanr'"]


def test_a_flag_kubeadm_sets_dropped_without_a_reason_is_named(rendered):
    _, nodes = rendered("1.35.2", "single", "local")
    argv = commands(nodes[0][1], "1.35.2", "master")["kube-apiserver"]
    table = KUBEADM_DIFFERENCES["kube-apiserver"]
    assert kubeadm_gaps("kube-apiserver", argv, "1.35.2", table) == []
    dropped = [a for a in argv if not a.startswith("--enable-admission-plugins=")]
    assert kubeadm_gaps("kube-apiserver", dropped, "1.35.2", table) == [
        "kubeadm 1.35.2 sets --enable-admission-plugins on kube-apiserver; k8simg does not, "
        "and the table of deliberate differences does not say why"]
    # the table says only what is true: an entry for a flag k8simg sets, or kubeadm does not
    stale = {**table, "allow-privileged": "x", "no-such-flag": "y"}
    assert kubeadm_gaps("kube-apiserver", argv, "1.35.2", stale) == [
        "the table of differences lists kube-apiserver --allow-privileged, which k8simg sets",
        "the table of differences lists kube-apiserver --no-such-flag, which kubeadm 1.35.2 "
        "does not set"]


def flag_spec(component, version, name):
    from tests.conformance.upstream import component_flags
    return component_flags(component, version)[name]
