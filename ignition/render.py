"""Render each node's whole first-boot configuration as an Ignition 3.3.0 config.

A role is a list of snippets; a snippet adds files and units to the node's :class:`Ignition`.
Values derived from the cluster (etcd's initial cluster, the DNS service IP, node addresses)
are computed here in Python; templates only place them.
"""

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import yaml

from k8simg.cluster import ClusterDir
from k8simg.config import ClusterConfig
from k8simg.errors import RenderError
from k8simg.ignition.document import Ignition, dumps
from k8simg.pki import Pki
from k8simg.pki import certs as table
from k8simg.pki.certs import CertInstance
from k8simg.pki.kubeconfig import kubeconfig
from k8simg.plan import Node, api_vip, etcd_members
from k8simg.versions import RELEASES, images

# Nova refuses user_data over 65,535 bytes of base64, i.e. 49,149 raw bytes.
NOVA_USER_DATA_BASE64_LIMIT = 65535
USER_DATA_LIMIT = NOVA_USER_DATA_BASE64_LIMIT // 4 * 3

PKI = "/etc/kubernetes/pki"
KUBELET_CLIENT = "/var/lib/kubelet/pki/kubelet-client-current.pem"
ADDONS = "/etc/k8simg/addons.yaml"
CNI_BIN_DIR = "/usr/lib/cni"  # where Debian's containernetworking-plugins installs them
STORAGE_DEVICE = "/dev/vdb"  # the second virtio disk: the Cinder volume deploy attaches at boot
WORKER_LABEL = ("k8simg.io/role", "worker")
ETCD_CLIENT_PORT, ETCD_PEER_PORT = 2379, 2380
KUBECONFIGS = {"controller_manager": "/etc/kubernetes/controller-manager.conf",
               "scheduler": "/etc/kubernetes/scheduler.conf",
               "super_admin": "/etc/kubernetes/super-admin.conf",
               "kubelet": "/etc/kubernetes/kubelet.conf"}

_env = jinja2.Environment(loader=jinja2.PackageLoader("k8simg.ignition", "templates"),
                          undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                          autoescape=False)


def template(name: str, **context) -> str:
    return _env.get_template(name).render(**context)


@dataclass(frozen=True)
class CloudCredential:
    """The OpenStack application credential the in-cluster cloud integrations use.

    Kept in the cluster directory as ``openstack/application-credential.json`` (deploy creates
    it); it is rendered only into the masters' add-ons.
    """

    auth_url: str
    application_credential_id: str
    application_credential_secret: str
    region: str | None = None

    FILE = "openstack/application-credential.json"

    @classmethod
    def load(cls, cluster: ClusterDir) -> "CloudCredential | None":
        path = cluster.path / cls.FILE
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(**{k: data[k] for k in ("auth_url", "application_credential_id",
                                               "application_credential_secret")},
                       region=data.get("region"))
        except (ValueError, KeyError, TypeError) as e:
            raise RenderError(f"{path}: not a valid application credential ({e!r})") from None


@dataclass
class RenderContext:
    """Everything a node's config is computed from."""

    config: ClusterConfig
    pki: Pki
    nodes: list[Node]
    credential: CloudCredential | None = None
    # Members that join an existing etcd cluster (replacements) rather than forming a new one.
    joining: frozenset[str] = field(default_factory=frozenset)

    @property
    def release(self):
        return RELEASES[self.config.kubernetes_version]

    @property
    def etcd_nodes(self) -> list[Node]:
        return etcd_members(self.nodes, self.config)

    def common(self) -> dict:
        """The small explicit context every template sees."""
        net = self.config.network
        return {
            "cluster_name": self.config.name,
            "pki": PKI,
            "images": images(self.release),
            "kubeconfigs": KUBECONFIGS,
            "api_port": self.config.api.port,
            "dns_domain": net.dns_domain,
            "dns_service_ip": dns_service_ip(self.config),
            "service_cidr": str(net.service_cidr),
            "pod_cidr": str(net.pod_cidr),
            "cni_bin_dir": CNI_BIN_DIR,
            "internal_api_url": f"https://{api_vip(self.config)}:{self.config.api.port}",
            "external_cloud_provider": not self.config.is_local,
            "addons_path": ADDONS,
            "worker_label_key": WORKER_LABEL[0],
            "worker_label_value": WORKER_LABEL[1],
        }


def dns_service_ip(cfg: ClusterConfig) -> ipaddress.IPv4Address:
    """CoreDNS's ClusterIP: the tenth address of the service range, as kubeadm picks it."""
    return cfg.network.service_cidr.network_address + 10


def etcd_initial_cluster(members: list[Node]) -> str:
    return ",".join(f"{m.name}=https://{m.address}:{ETCD_PEER_PORT}" for m in members)


def etcd_client_urls(members: list[Node]) -> str:
    return ",".join(f"https://{m.address}:{ETCD_CLIENT_PORT}" for m in members)


# -- snippets ----------------------------------------------------------------------------------

def _instance(ctx: RenderContext, name: str, node: Node | None = None) -> CertInstance:
    spec = table.BY_NAME[name]
    return CertInstance(spec, node if spec.scope is not table.Scope.CLUSTER else None)


def _pem(ctx: RenderContext, inst: CertInstance, which: str) -> bytes:
    crt, key = ctx.pki.paths(inst)
    return (crt if which == "crt" else key).read_bytes()


def _node_path(inst: CertInstance) -> str:
    """Where a table entry lives on a node: kubeadm's layout, the node part dropped."""
    return f"{PKI}/{inst.spec.path}"


def put_pki(ign: Ignition, ctx: RenderContext, node: Node, name: str, key: bool = True) -> None:
    inst = _instance(ctx, name, node)
    ign.file(_node_path(inst) + ".crt", _pem(ctx, inst, "crt"), 0o644, compress=False)
    if key:
        ign.file(_node_path(inst) + ".key", _pem(ctx, inst, "key"), 0o600, compress=False)


def node_kubeconfig(ctx: RenderContext, name: str, node: Node, server: str) -> str:
    """A kubeconfig that references the certificate files already on the node."""
    inst = _instance(ctx, name, node)
    if name == "kubelet":
        cert = key = KUBELET_CLIENT
    else:
        cert, key = _node_path(inst) + ".crt", _node_path(inst) + ".key"
    return kubeconfig(ctx.config.name, server, inst.cn, ca_path=f"{PKI}/ca.crt",
                      cert_path=cert, key_path=key)


def base(ign: Ignition, ctx: RenderContext, node: Node) -> None:
    ign.file("/etc/hostname", node.name + "\n", compress=False, overwrite=True)  # the image has one


def kernel(ign: Ignition, ctx: RenderContext, node: Node) -> None:
    ign.file("/etc/modules-load.d/k8simg.conf", template("modules.conf.j2"), compress=False)
    ign.file("/etc/sysctl.d/90-k8simg.conf", template("sysctl.conf.j2"))


def volume(ign: Ignition, label: str, mountpoint: str, binds: dict[str, str]) -> None:
    """Format the attached volume on first boot and mount it (plus bind mounts) at boot."""
    ign.filesystem(STORAGE_DEVICE, "ext4", label, mountpoint)
    main_unit = _mount_unit_name(mountpoint)
    ign.unit(main_unit, template("storage.mount.j2", what=f"/dev/disk/by-label/{label}",
                                 where=mountpoint, type="ext4", options="", requires=""))
    for where, sub in binds.items():
        ign.directory(f"{mountpoint}/{sub}", 0o711)
        ign.unit(_mount_unit_name(where), template(
            "storage.mount.j2", what=f"{mountpoint}/{sub}", where=where, type="none",
            options="bind", requires=main_unit))


def _mount_unit_name(path: str) -> str:
    # systemd-escape --path, for the plain paths used here.
    return path.strip("/").replace("-", "\\x2d").replace("/", "-") + ".mount"


def container_storage(ign: Ignition, ctx: RenderContext, node: Node) -> None:
    volume(ign, "k8s-storage", "/var/lib/k8simg",
           {"/var/lib/containerd": "containerd", "/var/lib/docker": "docker"})


def runtime(ign: Ignition, ctx: RenderContext, node: Node) -> None:
    c = ctx.common()
    # Debian's containerd package ships a config of its own.
    ign.file("/etc/containerd/config.toml", template("containerd-config.toml.j2", **c),
             overwrite=True)
    ign.unit("containerd.service")


def kubelet(ign: Ignition, ctx: RenderContext, node: Node) -> None:
    c = ctx.common()
    # A master's kubelet talks to its own API server; workers go through the load balancer.
    server = (f"https://{node.address}:{ctx.config.api.port}" if node.role == "master"
              else c["internal_api_url"])
    inst = _instance(ctx, "kubelet", node)
    ign.file(f"{PKI}/ca.crt", _pem(ctx, _instance(ctx, "ca"), "crt"), compress=False)
    ign.file(KUBELET_CLIENT, _pem(ctx, inst, "crt") + _pem(ctx, inst, "key"), 0o600,
             compress=False)
    ign.file(KUBECONFIGS["kubelet"], node_kubeconfig(ctx, "kubelet", node, server), 0o600)
    ign.file("/var/lib/kubelet/config.yaml", template("kubelet-config.yaml.j2", **c))
    labels = f"{WORKER_LABEL[0]}={node.role}"
    ign.unit("kubelet.service", dropins={"10-k8simg.conf": template(
        "kubelet-dropin.conf.j2", node=node, node_labels=labels, **c)})


def control_plane(ign: Ignition, ctx: RenderContext, node: Node) -> None:
    c = ctx.common()
    ca = _instance(ctx, "ca")
    ign.file(f"{PKI}/ca.key", _pem(ctx, ca, "key"), 0o600, compress=False)  # CSR signing
    put_pki(ign, ctx, node, "front-proxy-ca", key=False)
    put_pki(ign, ctx, node, "etcd-ca", key=False)  # the API server verifies etcd with it
    for name in ("apiserver", "apiserver-kubelet-client", "front-proxy-client",
                 "apiserver-etcd-client", "controller-manager", "scheduler", "super-admin"):
        put_pki(ign, ctx, node, name)
    sa_dir = ctx.pki.root
    ign.file(f"{PKI}/sa.key", (sa_dir / "sa.key").read_bytes(), 0o600, compress=False)
    ign.file(f"{PKI}/sa.pub", (sa_dir / "sa.pub").read_bytes(), compress=False)
    local = f"https://{node.address}:{ctx.config.api.port}"
    for key, name in (("controller_manager", "controller-manager"), ("scheduler", "scheduler"),
                      ("super_admin", "super-admin")):
        ign.file(KUBECONFIGS[key], node_kubeconfig(ctx, name, node, local), 0o600)
    members = etcd_client_urls(ctx.etcd_nodes)
    for pod in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        ign.file(f"/etc/kubernetes/manifests/{pod}.yaml",
                 template(f"{pod}.yaml.j2", node=node, etcd_client_urls=members, **c))
    ign.file(ADDONS, render_addons(ctx), 0o600)  # holds the cloud credential
    ign.unit("k8simg-addons.service", template("k8simg-addons.service.j2", **c))


def etcd_member(ign: Ignition, ctx: RenderContext, node: Node) -> None:
    if node.role == "etcd":  # a master got the etcd CA with the control plane
        put_pki(ign, ctx, node, "etcd-ca", key=False)
    put_pki(ign, ctx, node, "etcd-server")
    put_pki(ign, ctx, node, "etcd-peer")
    etcd = {
        "data_dir": "/var/lib/etcd",
        "pki": f"{PKI}/etcd",
        "client_url": f"https://{node.address}:{ETCD_CLIENT_PORT}",
        "listen_client_urls": f"https://{node.address}:{ETCD_CLIENT_PORT}",
        "peer_url": f"https://{node.address}:{ETCD_PEER_PORT}",
        "initial_cluster": etcd_initial_cluster(ctx.etcd_nodes),
        "initial_cluster_state": "existing" if node.name in ctx.joining else "new",
        "token": ctx.config.name,
    }
    ign.unit("k8simg-etcd.service", template("etcd.service.j2", node=node, etcd=etcd))


def etcd_storage(ign: Ignition, ctx: RenderContext, node: Node) -> None:
    volume(ign, "etcd-data", "/var/lib/k8simg", {"/var/lib/etcd": "etcd"})


def operator_access(ign: Ignition, ctx: RenderContext, node: Node) -> None:
    ign.user("k8simg", list(ctx.config.bastion.ssh_authorized_keys), ["sudo"])


Snippet = Callable[[Ignition, RenderContext, Node], None]

ROLES: dict[str, list[Snippet]] = {
    "master": [base, kernel, container_storage, runtime, kubelet, control_plane, etcd_member],
    "worker": [base, kernel, container_storage, runtime, kubelet],
    "etcd": [base, etcd_storage, etcd_member],
    "bastion": [base, operator_access],
}


def role_snippets(ctx: RenderContext, node: Node) -> list[Snippet]:
    snippets = list(ROLES[node.role])
    if node.role == "master" and ctx.config.dedicated_etcd:
        snippets.remove(etcd_member)
    return snippets


# -- add-ons ----------------------------------------------------------------------------------

ADDON_TEMPLATES = ["00-rbac", "10-kube-proxy", "20-coredns", "30-flannel", "40-ingress-nginx",
                   "50-openstack-cloud-controller-manager", "60-cinder-csi"]
OPENSTACK_ADDONS = {"50-openstack-cloud-controller-manager", "60-cinder-csi"}


def addon_names(ctx: RenderContext) -> list[str]:
    if ctx.config.is_local:  # no cloud to integrate with on the local QEMU cloud
        return [n for n in ADDON_TEMPLATES if n not in OPENSTACK_ADDONS]
    return ADDON_TEMPLATES


def render_addons(ctx: RenderContext) -> str:
    """Every add-on manifest, as one multi-document YAML stream."""
    names = addon_names(ctx)
    if not ctx.config.is_local and ctx.credential is None:
        raise RenderError(f"cloud {ctx.config.cloud!r} needs an application credential in "
                          f"{CloudCredential.FILE} for the cloud controller manager and Cinder "
                          "CSI; `k8simg deploy` creates it")
    c = ctx.common()
    docs = []
    for n in names:
        text = template(f"addons/{n}.yaml.j2", openstack=ctx.credential, **c)
        docs += [d for d in yaml.safe_load_all(text) if d]
    # One compact JSON document per line (JSON is YAML, so kubectl reads the stream as is):
    # about a tenth smaller than the templates' YAML after gzip.
    return "".join("---\n" + json.dumps(d, separators=(",", ":")) + "\n" for d in docs)


# -- the document -----------------------------------------------------------------------------

def render_node(ctx: RenderContext, node: Node) -> dict:
    """The node's Ignition config as a dict."""
    ign = Ignition()
    for snippet in role_snippets(ctx, node):
        snippet(ign, ctx, node)
    return ign.to_dict()


def render_user_data(ctx: RenderContext, node: Node) -> bytes:
    """The node's serialised config, refused when Nova would refuse it.

    :raises RenderError: naming the node and the size, when over the user_data limit.
    """
    data = dumps(render_node(ctx, node))
    if len(data) > USER_DATA_LIMIT:
        raise RenderError(
            f"{node.name}: Ignition config is {len(data)} bytes ({-(-len(data) // 3) * 4} as "
            f"base64); Nova accepts at most {USER_DATA_LIMIT} ({NOVA_USER_DATA_BASE64_LIMIT} "
            f"as base64). Choose a smaller key algorithm (pki.key_algorithm).")
    return data


def render_context(cluster: ClusterDir, nodes: list[Node] | None = None,
                   joining: frozenset[str] = frozenset()) -> RenderContext:
    """Load the definition and the PKI, and check the PKI is complete and consistent."""
    cfg = cluster.load()
    pki = cluster.pki(cfg)
    problems = pki.verify()
    missing = pki.missing()
    if problems or missing:
        detail = "; ".join([f"{f}: {m}" for f, m in problems] + [f"{m}: missing" for m in missing])
        raise RenderError(f"the PKI in {cluster.pki_dir} is not ready ({detail}); "
                          f"run `k8simg pki init {cluster.path}`")
    return RenderContext(cfg, pki, nodes if nodes is not None else list(pki.ctx.nodes),
                         CloudCredential.load(cluster), joining)


def write_all(ctx: RenderContext, out_dir: Path) -> dict[str, int]:
    """Render every node into ``out_dir/<node>.ign`` (0600: they hold keys).

    Every node is rendered and size-checked before any file is written.
    """
    from k8simg.fsutil import atomic_write

    rendered = {n.name: render_user_data(ctx, n) for n in ctx.nodes}
    for name, data in rendered.items():
        atomic_write(Path(out_dir) / f"{name}.ign", data, 0o600)
    return {name: len(data) for name, data in rendered.items()}
