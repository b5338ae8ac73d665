import json
import re
import stat
import subprocess

import pytest
from click.testing import CliRunner

from k8simg.cli import cli
from k8simg.errors import RenderError
from k8simg.ignition.document import dumps
from k8simg.ignition.image import (
    ADDONS_APPLIER,
    ADDONS_ENV,
    DEVICE_WAITS,
    STORAGE_BINDS,
    STORAGE_ROOT,
    image_files,
    image_units,
    path_unit_name,
)
from k8simg.ignition.render import USER_DATA_LIMIT, render_node, render_user_data, write_all
from k8simg.model.versions import DEFAULT_KUBERNETES_VERSION
from tests.ignition.conftest import CREDENTIAL, ED25519
from tests.ignition.support import enabled_units, env_values, files, kube_objects, unit_text

MASTER_TARGET, WORKER_TARGET = 24 * 1024, 8 * 1024


def validate(path):
    r = subprocess.run(["ignition-validate", str(path)], capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize("topology", ["single", "one-master", "ha3", "ha5", "ha3-etcd3"])
@pytest.mark.parametrize("algorithm", ["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072",
                                       "rsa-4096"])
@pytest.mark.parametrize("cloud", ["local", "openstack"])
def test_every_config_passes_ignition_validate(rendered_cluster, tmp_path, topology, algorithm,
                                               cloud):
    cd, ctx = rendered_cluster(topology, algorithm, cloud)
    roles = {n.role for n in ctx.nodes}
    for node in ctx.nodes:
        try:
            data = render_user_data(ctx, node)
        except RenderError as e:
            # Only masters with RSA keys over 2048 bits may be refused (size, named).
            assert node.role == "master" and algorithm in ("rsa-3072", "rsa-4096"), str(e)
            assert str(e).startswith(f"{node.name}: Ignition config is ")
            continue
        path = tmp_path / f"{node.name}.ign"
        path.write_bytes(data)
        code, out = validate(path)
        assert code == 0 and out.strip() == "", f"{node.name}: {out}"
    assert roles == ({"master", "bastion"} | ({"worker"} if topology != "single" else set())
                     | ({"etcd"} if topology == "ha3-etcd3" else set()))


def test_ignition_validate_catches_a_broken_config(rendered_cluster, tmp_path):
    """The validator is really looking: a relative path and a bad mode are refused."""
    _, ctx = rendered_cluster()
    doc = render_node(ctx, ctx.nodes[0])
    doc["storage"]["files"][0]["path"] = "etc/relative"
    (tmp_path / "bad.ign").write_bytes(dumps(doc))
    code, out = validate(tmp_path / "bad.ign")
    assert code != 0 and "path not absolute" in out


def test_master_has_the_control_plane(rendered_cluster):
    _, ctx = rendered_cluster("ha3", cloud="openstack")
    version = ctx.config.kubernetes_version
    master = ctx.nodes[1]
    doc = render_node(ctx, master)
    f = files(doc)
    for path in ["/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/pki/ca.key",
                 "/etc/kubernetes/pki/apiserver.crt", "/etc/kubernetes/pki/sa.key",
                 "/etc/kubernetes/pki/etcd/server.key", "/etc/kubernetes/pki/etcd/peer.crt",
                 "/etc/kubernetes/manifests/kube-apiserver.yaml",
                 "/etc/kubernetes/controller-manager.conf", "/etc/kubernetes/super-admin.conf",
                 "/var/lib/kubelet/config.yaml", "/etc/k8simg/etcd.env"]:
        assert path in f, path
    # This master's own certificates, not another's.
    api = f["/etc/kubernetes/pki/apiserver.crt"][1]
    assert api == (ctx.pki.root / f"nodes/{master.name}/apiserver.crt").read_bytes()
    # Keys 0600; kubeconfigs reference the files instead of embedding them.
    for path, (mode, data) in f.items():
        if b"PRIVATE KEY" in data or path.endswith(".conf") and b"client-key" in data:
            assert mode == 0o600, path
    kc = f["/etc/kubernetes/controller-manager.conf"][1].decode()
    assert "client-certificate: /etc/kubernetes/pki/kubeconfig/controller-manager.crt" in kc
    assert "-data" not in kc
    etcd = env_values(doc, "/etc/k8simg/etcd.env")
    assert etcd["ETCD_NAME"] == master.name and etcd["ETCD_INITIAL_CLUSTER_STATE"] == "new"
    assert etcd["ETCD_INITIAL_CLUSTER"] == (
        "ha3-master-0=https://10.0.0.10:2380,ha3-master-1=https://10.0.0.11:2380,"
        "ha3-master-2=https://10.0.0.12:2380")
    assert etcd["ETCD_LISTEN_CLIENT_URLS"] == "https://10.0.0.11:2379"
    unit = unit_text(doc, "k8simg-etcd.service", version)
    assert "--client-cert-auth=true" in unit and "--peer-client-cert-auth=true" in unit
    pods = {o["metadata"]["name"]: o for p, o in kube_objects(doc) if o["kind"] == "Pod"}
    cmd = pods["kube-apiserver"]["spec"]["containers"][0]["command"]
    assert "--etcd-servers=https://10.0.0.10:2379,https://10.0.0.11:2379,https://10.0.0.12:2379" in cmd
    assert f"--advertise-address={master.address}" in cmd
    assert pods["kube-apiserver"]["spec"]["containers"][0]["image"] == \
        "registry.k8s.io/kube-apiserver:v1.35.2"
    kcm = pods["kube-controller-manager"]["spec"]["containers"][0]["command"]
    assert "--cloud-provider=external" in kcm and "--allocate-node-cidrs=true" in kcm
    assert "--cluster-cidr=10.244.0.0/16" in kcm
    kubelet = env_values(doc, "/etc/k8simg/kubelet.env")["KUBELET_ARGS"]
    assert kubelet == ("--node-ip=10.0.0.11 --hostname-override=ha3-master-1 "
                       "--node-labels=k8simg.io/role=master --cloud-provider=external")
    # The container-storage volume: formatted by Ignition, mounted before the runtimes.
    assert doc["storage"]["filesystems"] == [{"device": "/dev/vdb", "format": "ext4",
                                              "label": "k8s-storage", "wipeFilesystem": False,
                                              "path": "/var/lib/k8simg"}]
    assert set(enabled_units(doc)) == {
        "var-lib-k8simg.mount", "var-lib-containerd.mount", "var-lib-docker.mount",
        "containerd.service", "kubelet.service", "k8simg-addons.service", "k8simg-etcd.service"}
    mount = unit_text(doc, "var-lib-containerd.mount", version)
    assert "What=/var/lib/k8simg/containerd" in mount and "Before=containerd.service" in mount
    assert "RequiresMountsFor=/var/lib/containerd" in unit_text(
        doc, "containerd.service.d/10-k8simg-storage.conf", version)
    addons = {(o["kind"], o["metadata"]["name"]) for p, o in kube_objects(doc, version)
              if "addons" in p}
    for obj in [("DaemonSet", "kube-proxy"), ("Deployment", "coredns"),
                ("DaemonSet", "kube-flannel-ds"), ("DaemonSet", "ingress-nginx-controller"),
                ("DaemonSet", "openstack-cloud-controller-manager"),
                ("Deployment", "csi-cinder-controllerplugin"), ("Secret", "cloud-config"),
                ("ConfigMap", "kube-proxy"), ("Service", "kube-dns"),
                ("ClusterRoleBinding", "kubeadm:cluster-admins"),
                ("ClusterRoleBinding", "kubeadm:node-autoapprove-certificate-rotation")]:
        assert obj in addons, obj
    conf = next(o for p, o in kube_objects(doc, version)
                if o["kind"] == "Secret" and o["metadata"]["name"] == "cloud-config")
    # the cloud controller and Cinder CSI read instance data from the config drive only
    assert "[Metadata]\n# Instance data from the config drive only: the nodes block the " \
           "metadata service.\nsearch-order=configDrive\n" in conf["stringData"]["cloud.conf"]
    assert env_values(doc, "/etc/k8simg/addons.env")["ADDONS"] == (
        "-f /usr/share/k8simg/addons/core -f /usr/share/k8simg/addons/openstack "
        "-f /etc/k8simg/addons.yaml")
    applier = unit_text(doc, "k8simg-addons.service", version)
    assert f"ExecStart={ADDONS_APPLIER}\n" in applier  # run: test_addons_applier.py
    assert f"EnvironmentFile={ADDONS_ENV}\n" in applier


def test_the_default_storage_class_keeps_to_the_clusters_availability_zone(rendered_cluster):
    """Cinder CSI's default StorageClass: expandable, bound where the pod lands. With
    openstack.availability_zone, volumes are made in that zone only (Cinder's ``availability``
    and the topology the CSI node plugin reports), by a class of the zone's own: a class's
    parameters and topologies cannot change once made, so csi-cinder stays as it was."""
    def storage_classes(**extra):
        _, ctx = rendered_cluster("one-master", cloud="openstack", **extra)
        master = next(n for n in ctx.nodes if n.role == "master")
        version = ctx.config.kubernetes_version
        return {o["metadata"]["name"]: o for _, o in kube_objects(render_node(ctx, master),
                                                                     version)
                if o["kind"] == "StorageClass"}

    classes = storage_classes()
    assert list(classes) == ["csi-cinder"]
    sc = classes["csi-cinder"]
    assert sc["metadata"]["annotations"] == {"storageclass.kubernetes.io/is-default-class": "true"}
    assert (sc["provisioner"], sc["allowVolumeExpansion"], sc["volumeBindingMode"]) == \
        ("cinder.csi.openstack.org", True, "WaitForFirstConsumer")
    assert "parameters" not in sc and "allowedTopologies" not in sc
    zoned = storage_classes(name="zoned", openstack={"availability_zone": "AZ_2"})
    assert sorted(zoned) == ["csi-cinder", "csi-cinder-az-2"]
    # csi-cinder's immutable fields as before; only its (mutable) default mark moved
    assert {k: v for k, v in zoned["csi-cinder"].items() if k != "metadata"} == \
        {k: v for k, v in sc.items() if k != "metadata"}
    assert zoned["csi-cinder"]["metadata"]["annotations"] == {
        "storageclass.kubernetes.io/is-default-class": "false"}
    z = zoned["csi-cinder-az-2"]
    assert z["metadata"]["annotations"] == {"storageclass.kubernetes.io/is-default-class": "true"}
    assert z["parameters"] == {"availability": "AZ_2"}
    assert z["allowedTopologies"] == [{"matchLabelExpressions": [
        {"key": "topology.cinder.csi.openstack.org/zone", "values": ["AZ_2"]}]}]


def test_every_enabled_unit_exists(rendered_cluster):
    """A config may only enable units that it carries or that the image provides."""
    _, ctx = rendered_cluster("ha3-etcd3", cloud="openstack")
    provided = image_units(ctx.config.kubernetes_version) | {"containerd.service"}  # Debian
    for node in ctx.nodes:
        doc = render_node(ctx, node)
        inline = {u["name"] for u in doc.get("systemd", {}).get("units", []) if "contents" in u}
        for name in enabled_units(doc):
            assert name in provided | inline, f"{node.name} enables unknown {name}"


def test_units_named_after_paths_are_named_as_systemd_names_them():
    """A mount unit or a device drop-in whose name is escaped differently from systemd's own
    escaping is never applied (a volume left unmounted, a device wait left at 90 s)."""
    image = image_files(DEFAULT_KUBERNETES_VERSION)
    wanted = [(STORAGE_ROOT, "mount"), *((w, "mount") for w in STORAGE_BINDS),
              *((d, "device") for d in DEVICE_WAITS)]
    for path, suffix in wanted:
        systemds = subprocess.run(["systemd-escape", "--path", f"--suffix={suffix}", path],
                                  capture_output=True, text=True, check=True).stdout.strip()
        assert path_unit_name(path, suffix) == systemds
        unit = f"/etc/systemd/system/{systemds}"
        assert unit in image or any(f.startswith(unit + ".d/") for f in image), unit


def test_local_cloud_has_no_cloud_provider(rendered_cluster):
    _, ctx = rendered_cluster("ha3")
    doc = render_node(ctx, ctx.nodes[0])
    names = {o["metadata"]["name"] for _, o in kube_objects(doc)}
    assert "cloud-config" not in names and "kube-proxy" in names
    ingress = next(o for _, o in kube_objects(doc) if o["kind"] == "Service"
                   and o["metadata"]["name"] == "ingress-nginx-controller")
    assert ingress["spec"]["type"] == "NodePort"  # no cloud controller to make a load balancer
    assert "--cloud-provider" not in json.dumps(doc)
    assert env_values(doc, "/etc/k8simg/addons.env")["ADDONS"] == (
        "-f /usr/share/k8simg/addons/core -f /etc/k8simg/addons.yaml")


def test_worker_gets_only_what_it_needs(rendered_cluster):
    _, ctx = rendered_cluster("ha3", cloud="openstack")
    worker = next(n for n in ctx.nodes if n.role == "worker")
    doc = render_node(ctx, worker)
    assert set(files(doc)) == {
        "/etc/hostname", "/etc/kubernetes/pki/ca.crt", "/etc/k8simg/kubelet.env",
        "/var/lib/kubelet/pki/kubelet-client-current.pem", "/etc/kubernetes/kubelet.conf",
        "/var/lib/kubelet/config.yaml"}
    kc = files(doc)["/etc/kubernetes/kubelet.conf"][1].decode()
    assert "server: https://10.0.0.5:6443" in kc  # through the load balancer
    assert CREDENTIAL["application_credential_secret"] not in json.dumps(doc)
    assert "--node-labels=k8simg.io/role=worker" in env_values(
        doc, "/etc/k8simg/kubelet.env")["KUBELET_ARGS"]
    assert "k8simg-etcd.service" not in enabled_units(doc)


def test_dedicated_etcd_nodes(rendered_cluster):
    _, ctx = rendered_cluster("ha3-etcd3")
    etcd0 = next(n for n in ctx.nodes if n.role == "etcd")
    doc = render_node(ctx, etcd0)
    f = files(doc)
    assert not any("kubelet" in p or "manifests" in p for p in f)
    assert {p for p in f if p.endswith(".key")} == {"/etc/kubernetes/pki/etcd/server.key",
                                                     "/etc/kubernetes/pki/etcd/peer.key"}
    assert env_values(doc, "/etc/k8simg/etcd.env")["ETCD_INITIAL_CLUSTER"].startswith(
        "ha3etcd3-etcd-0=https://10.0.0.50:2380,")
    assert set(enabled_units(doc)) == {"var-lib-k8simg.mount", "var-lib-etcd.mount",
                                       "k8simg-etcd.service"}
    master = render_node(ctx, ctx.nodes[0])
    assert "k8simg-etcd.service" not in enabled_units(master)
    assert "/etc/kubernetes/pki/etcd/server.key" not in files(master)
    pod = next(o for _, o in kube_objects(master) if o["metadata"]["name"] == "kube-apiserver")
    assert ("--etcd-servers=https://10.0.0.50:2379,https://10.0.0.51:2379,https://10.0.0.52:2379"
            in pod["spec"]["containers"][0]["command"])
    assert doc["storage"]["directories"] == [{"path": "/var/lib/k8simg/etcd", "mode": 0o711}]


def test_bastion_has_keys_and_no_secrets(rendered_cluster):
    _, ctx = rendered_cluster("ha3", cloud="openstack")
    bastion = next(n for n in ctx.nodes if n.role == "bastion")
    doc = render_node(ctx, bastion)
    assert doc["passwd"]["users"] == [{"name": "k8simg", "sshAuthorizedKeys": [ED25519],
                                       "groups": ["sudo"]}]
    got = files(doc)
    assert set(got) == {"/etc/hostname", "/etc/ssh/ssh_host_ed25519_key",
                        "/etc/ssh/ssh_host_ed25519_key.pub"}
    # The host key the operator's known_hosts pins (pki), given to the bastion alone, 0600.
    assert got["/etc/ssh/ssh_host_ed25519_key"][0] == 0o600
    assert got["/etc/ssh/ssh_host_ed25519_key"][1] == ctx.pki.bastion_host_key_path.read_bytes()
    pub = got["/etc/ssh/ssh_host_ed25519_key.pub"][1].decode()
    assert pub.startswith("ssh-ed25519 ") and pub.strip() == ctx.pki.bastion_host_public_key()
    for node in ctx.nodes:
        if node.role != "bastion":
            assert "/etc/ssh/ssh_host_ed25519_key" not in files(render_node(ctx, node))


def test_replacement_joins_the_existing_cluster(rendered_cluster):
    from k8simg.ignition.render import RenderContext
    from k8simg.model.plan import make_node
    from k8simg.pki import Pki, PkiContext
    cd, ctx = rendered_cluster("ha3")
    new = make_node(ctx.config, "master", 3)
    nodes = [n for n in ctx.nodes if n.name != "ha3-master-0"] + [new]
    pki = Pki(cd.pki_dir, PkiContext(ctx.config, tuple(nodes)))
    pki.ensure()
    rctx = RenderContext(ctx.config, pki, nodes, None, frozenset({new.name}))
    etcd = env_values(render_node(rctx, new), "/etc/k8simg/etcd.env")
    assert str(new.address) == "10.0.0.13"
    assert etcd["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
    assert "ha3-master-3=https://10.0.0.13:2380" in etcd["ETCD_INITIAL_CLUSTER"]
    assert "ha3-master-0=" not in etcd["ETCD_INITIAL_CLUSTER"]


def test_private_keys_only_where_they_belong(rendered_cluster):
    """No worker or bastion config carries any private key but its own: a worker its
    kubelet key, the bastion its SSH host key."""
    _, ctx = rendered_cluster("ha3", cloud="openstack")
    all_keys = {p.read_bytes().strip(): str(p.relative_to(ctx.pki.root))
                for p in ctx.pki.root.rglob("*.key")}
    scanned = 0
    for node in ctx.nodes:
        if node.role not in ("worker", "bastion"):
            continue
        blob = json.dumps(render_node(ctx, node)).encode()
        contents = b"".join(data for _, data in files(render_node(ctx, node)).values())
        found = re.findall(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\n.*?-----END [A-Z ]*PRIVATE KEY-----",
                           contents, re.S)
        own_file = (ctx.pki.root / f"nodes/{node.name}/kubelet-client.key"
                    if node.role == "worker" else ctx.pki.bastion_host_key_path)
        own = own_file.read_bytes().strip()
        for key in found:
            assert key.strip() == own, f"{node.name} carries {all_keys.get(key.strip(), 'a key')}"
        assert len(found) == 1
        assert b"PRIVATE KEY" not in blob  # nothing unencoded either
        scanned += 1
    assert scanned == 3


def test_the_scan_would_catch_a_leak(rendered_cluster, monkeypatch):
    """Guard for the test above: a worker given the CA key is caught by the same logic."""
    from k8simg.ignition import render as r
    _, ctx = rendered_cluster("ha3")
    monkeypatch.setitem(r.ROLES, "worker", r.ROLES["worker"] + [
        lambda ign, ctx, node: ign.file("/etc/kubernetes/pki/ca.key",
                                        (ctx.pki.root / "ca.key").read_bytes(), 0o600)])
    worker = next(n for n in ctx.nodes if n.role == "worker")
    keys = [d for d in files(render_node(ctx, worker)).values() if b"PRIVATE KEY" in d[1]]
    assert len(keys) == 2


@pytest.mark.parametrize("cloud", ["local", "openstack"])
def test_ecdsa_sizes_meet_the_targets(rendered_cluster, cloud):
    _, ctx = rendered_cluster("ha5", cloud=cloud)
    for node in ctx.nodes:
        size = len(render_user_data(ctx, node))
        target = {"master": MASTER_TARGET, "worker": WORKER_TARGET}.get(node.role, 1024)
        assert size <= target, (node.name, size)


def test_rsa_2048_fits_even_with_the_longest_names(rendered_cluster):
    """RSA-2048 must fit Nova: a 40-character cluster name (the most the schema allows) and
    an OpenStack cluster, whose masters carry the cloud credential too."""
    name = "a" * 38 + "zz"
    _, ctx = rendered_cluster("ha5", algorithm="rsa-2048", cloud="openstack", name=name)
    sizes = {n.role: len(render_user_data(ctx, n)) for n in ctx.nodes}
    assert sizes["master"] <= USER_DATA_LIMIT
    assert sizes["worker"] <= WORKER_TARGET + 4096


def test_oversized_config_is_refused_before_anything_is_written(rendered_cluster, tmp_path):
    _, ctx = rendered_cluster("ha3", algorithm="rsa-4096")
    with pytest.raises(RenderError) as e:
        write_all(ctx, tmp_path / "out")
    assert re.search(r"ha3-master-0: Ignition config is \d{5} bytes \(\d{5,6} as base64\); "
                     r"Nova accepts at most 49149 \(65535 as base64\)", str(e.value))
    assert not (tmp_path / "out").exists()


def test_openstack_without_credential_is_a_clear_error(rendered_cluster):
    cd, _ = rendered_cluster("ha3", cloud="openstack")
    (cd.path / "openstack/application-credential.json").unlink()
    from k8simg.ignition.render import render_context
    ctx = render_context(cd)
    with pytest.raises(RenderError, match="openstack/application-credential.json"):
        render_node(ctx, ctx.nodes[0])


def test_openstack_without_a_recorded_service_network_is_a_clear_error(rendered_cluster):
    cd, _ = rendered_cluster("ha3", cloud="openstack")
    cd.state.forget_service_network()
    from k8simg.ignition.render import render_context
    ctx = render_context(cd)
    with pytest.raises(RenderError, match="Services of type LoadBalancer are not recorded"):
        render_node(ctx, ctx.nodes[0])


@pytest.mark.parametrize("provider,method,own", [("amphora", "ROUND_ROBIN", {}), (
    "ovn", "SOURCE_IP_PORT", {"manage-security-groups": "true"})])  # OVN keeps client addresses
def test_services_of_type_load_balancer_are_enabled_on_openstack(rendered_cluster, provider,
                                                                 method, own):
    from tests.ignition.conftest import SERVICE_NETWORK

    cd, _ = rendered_cluster("ha3", cloud="openstack", openstack={"lb_provider": provider})
    from k8simg.ignition.render import render_context
    ctx = render_context(cd)
    doc = render_node(ctx, ctx.nodes[0])
    objs = {(o["kind"], o["metadata"]["name"]): o
            for p, o in kube_objects(doc, ctx.config.kubernetes_version) if "addons" in p}
    conf = objs[("Secret", "cloud-config")]["stringData"]["cloud.conf"]
    section = conf.split("[LoadBalancer]\n", 1)[1].split("\n[", 1)[0]
    settings = dict(ln.split("=", 1) for ln in section.splitlines() if not ln.startswith("#"))
    assert settings == {
        "enabled": "true", "lb-provider": provider, "lb-method": method,
        "subnet-id": SERVICE_NETWORK.subnet_id,
        "floating-network-id": SERVICE_NETWORK.floating_network_id,
        "create-monitor": "true", "monitor-delay": "5s", "monitor-timeout": "3s",
        "monitor-max-retries": "3", **own}
    # ingress-nginx is reached through a load balancer the cloud controller makes
    ingress = objs[("Service", "ingress-nginx-controller")]
    assert ingress["metadata"]["namespace"] == "ingress-nginx"
    assert ingress["spec"]["type"] == "LoadBalancer"
    assert [p["nodePort"] for p in ingress["spec"]["ports"]] == [30080, 30443]
    # The cloud controller and Cinder CSI name the cluster by its name and UID: two clusters
    # of one name in a project never share load balancers or volumes.
    assert objs[("ConfigMap", "k8simg-cluster")]["data"] == {
        "name": "ha3", "cloud-name": f"ha3-{cd.state.uid}"}


def test_render_needs_a_complete_pki(make_cluster):
    cd = make_cluster()
    r = CliRunner().invoke(cli, ["render", str(cd.path), "--all"])
    assert r.exit_code == 1 and "run `k8simg pki init" in r.output


def test_render_cli_writes_0600_files_and_prints_no_secret(rendered_cluster, tmp_path):
    cd, ctx = rendered_cluster("ha3", cloud="openstack")
    runner = CliRunner()
    r = runner.invoke(cli, ["render", str(cd.path), "--all", "-o", "json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out["nodes"]) == {n.name for n in ctx.nodes}
    for info in out["nodes"].values():
        mode = stat.S_IMODE((tmp_path / info["file"]).stat().st_mode)
        assert mode == 0o600
    assert "PRIVATE" not in r.output and CREDENTIAL["application_credential_secret"] not in r.output
    r = runner.invoke(cli, ["render", str(cd.path), "--node", "ha3-master-0"])
    assert r.exit_code == 2 and "--out FILE" in r.output
    r = runner.invoke(cli, ["render", str(cd.path), "--node", "nope", "--out", "x.ign"])
    assert r.exit_code == 1 and "no node 'nope'" in r.output
    dest = tmp_path / "m0.ign"
    r = runner.invoke(cli, ["render", str(cd.path), "--node", "ha3-master-0", "--out", str(dest)])
    assert r.exit_code == 0 and r.stdout.strip() == str(dest)
    assert json.loads(dest.read_bytes())["ignition"]["version"] == "3.3.0"
