"""Render each node's whole first-boot configuration as an Ignition 3.3.0 config.

A role is a list of snippets; a snippet adds files and units to the node's :class:`Ignition`.
Values derived from the cluster (etcd's initial cluster, the DNS service IP, node addresses)
are computed here in Python; templates only place them. Generic machinery (unit files, runtime
settings, cluster-independent add-ons) is in the image (:mod:`k8simg.ignition.image`); configs
enable it and supply what is particular to the cluster and the node.
"""

import ipaddress
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from k8simg.errors import RenderError
from k8simg.ignition.document import Ignition, dumps
from k8simg.ignition.image import (
    ADDONS_DIR,
    ADDONS_ENV,
    ETCD_ENV,
    ETCD_RESTORE_ENV,
    KUBECONFIGS,
    KUBELET_ENV,
    PKI,
    RESTORE_SOURCE,
    STORAGE_BINDS,
    STORAGE_LABEL,
    STORAGE_ROOT,
    WORKER_LABEL,
    mount_unit_name,
)
from k8simg.ignition.jinja import template
from k8simg.model.cluster import ClusterDir
from k8simg.model.config import ClusterConfig
from k8simg.model.credential import CloudCredential, ServiceNetwork, cloud_cluster_name
from k8simg.model.plan import Node, api_vip, client_url, etcd_members, peer_url
from k8simg.model.versions import RELEASES, images
from k8simg.pki import Pki, cluster_pki
from k8simg.pki import certs as table
from k8simg.pki.certs import CertInstance
from k8simg.pki.kubeconfig import kubeconfig

# Nova refuses user_data over 65,535 bytes of base64, i.e. 49,149 raw bytes.
NOVA_USER_DATA_BASE64_LIMIT = 65535
USER_DATA_LIMIT = NOVA_USER_DATA_BASE64_LIMIT // 4 * 3

KUBELET_CLIENT = "/var/lib/kubelet/pki/kubelet-client-current.pem"
ADDON_VALUES = "/etc/k8simg/addons.yaml"
STORAGE_DEVICE = "/dev/vdb"  # the second virtio disk: the Cinder volume deploy attaches at boot

@dataclass(frozen=True)
class EtcdRestore:
    """The snapshot a restoring member's first boot makes its etcd data from (k8simg restore).

    :param node: the member that restores (each new master restores the same snapshot).
    :param url: where Ignition fetches the snapshot (encrypted for the trip) from.
    :param sha512: the fetched file's SHA-512 (hex): Ignition refuses any other.
    :param key: the trip's AES-256-CTR key (hex), in the restoring masters' configs only.
    :param iv: its counter block (hex).
    """

    node: str
    url: str
    sha512: str
    key: str
    iv: str


@dataclass
class RenderContext:
    """Everything a node's config is computed from."""

    config: ClusterConfig
    pki: Pki
    nodes: list[Node]
    credential: CloudCredential | None = None
    # Members that join an existing etcd cluster (replacements) rather than forming a new one.
    joining: frozenset[str] = field(default_factory=frozenset)
    # Where Services of type LoadBalancer get their load balancers (OpenStack).
    service_network: ServiceNetwork | None = None
    # The cluster's UID: with its name, what ties what the cloud integrations make to it.
    uid: str | None = None
    # A restore: the node rendered now, if it is the one named, makes its etcd from the
    # snapshot at its first boot (a restore sets it for each new master in turn).
    restore: EtcdRestore | None = None

    @property
    def cloud_cluster_name(self) -> str:
        """The name the cloud controller manager and Cinder CSI give this cluster in the cloud
        (load balancers ``kube_service_<it>_<namespace>_<service>``, volumes' metadata
        ``cinder.csi.openstack.org/cluster``): the name with the UID, so two clusters of one
        name in one project never take each other's."""
        return cloud_cluster_name(self.config.name, self.uid)

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
            "internal_api_url": f"https://{api_vip(self.config)}:{self.config.api.port}",
            "external_cloud_provider": not self.config.is_local,
        }


def dns_service_ip(cfg: ClusterConfig) -> ipaddress.IPv4Address:
    """CoreDNS's ClusterIP: the tenth address of the service range, as kubeadm picks it."""
    return cfg.network.service_cidr.network_address + 10


def etcd_initial_cluster(members: list[Node]) -> str:
    return ",".join(f"{m.name}={peer_url(m)}" for m in members)


def etcd_client_urls(members: list[Node]) -> str:
    return ",".join(client_url(m) for m in members)


def env_file(values: dict[str, str]) -> str:
    """A systemd EnvironmentFile; values are quoted so that spaces survive."""
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


# -- snippets ----------------------------------------------------------------------------------

Snippet = Callable[[Ignition, "RenderContext", Node], None]

def _instance(name: str, node: Node | None = None) -> CertInstance:
    spec = table.BY_NAME[name]
    return CertInstance(spec, node if spec.scope is not table.Scope.CLUSTER else None)


def _pem(ctx: RenderContext, inst: CertInstance, which: str) -> bytes:
    crt, key = ctx.pki.paths(inst)
    return (crt if which == "crt" else key).read_bytes()


def _node_path(inst: CertInstance) -> str:
    """Where a table entry lives on a node: kubeadm's layout, the node part dropped."""
    return f"{PKI}/{inst.spec.path}"


def put_pki(ign: Ignition, ctx: RenderContext, node: Node, name: str, key: bool = True) -> None:
    inst = _instance(name, node)
    ign.file(_node_path(inst) + ".crt", _pem(ctx, inst, "crt"), compress=False)
    if key:
        ign.file(_node_path(inst) + ".key", _pem(ctx, inst, "key"), 0o600, compress=False)


def node_kubeconfig(ctx: RenderContext, name: str, node: Node, server: str) -> str:
    """A kubeconfig that references the certificate files already on the node."""
    inst = _instance(name, node)
    if name == "kubelet":
        cert = key = KUBELET_CLIENT
    else:
        cert, key = _node_path(inst) + ".crt", _node_path(inst) + ".key"
    return kubeconfig(ctx.config.name, server, inst.cn, ca_path=f"{PKI}/ca.crt",
                      cert_path=cert, key_path=key)


def base(ign: Ignition, ctx: RenderContext, node: Node) -> None:
    ign.file("/etc/hostname", node.name + "\n", compress=False, overwrite=True)  # image has one


def storage(binds: list[str]) -> Snippet:
    """Format the attached volume on first boot; enable the image's mounts of it."""

    def snippet(ign: Ignition, ctx: RenderContext, node: Node) -> None:
        # With a path, Ignition mounts the new filesystem in its files stage, so the bind
        # sources below are created on the volume itself.
        ign.filesystem(STORAGE_DEVICE, "ext4", STORAGE_LABEL, STORAGE_ROOT)
        ign.unit(mount_unit_name(STORAGE_ROOT))
        for where in binds:
            ign.directory(f"{STORAGE_ROOT}/{STORAGE_BINDS[where]}", 0o711)
            ign.unit(mount_unit_name(where))

    return snippet


def runtime(ign: Ignition, ctx: RenderContext, node: Node) -> None:
    ign.unit("containerd.service")


def kubelet(ign: Ignition, ctx: RenderContext, node: Node) -> None:
    c = ctx.common()
    # A master's kubelet talks to its own API server; workers go through the load balancer.
    server = (f"https://{node.address}:{ctx.config.api.port}" if node.role == "master"
              else c["internal_api_url"])
    inst = _instance("kubelet", node)
    ign.file(f"{PKI}/ca.crt", _pem(ctx, _instance("ca"), "crt"), compress=False)
    ign.file(KUBELET_CLIENT, _pem(ctx, inst, "crt") + _pem(ctx, inst, "key"), 0o600,
             compress=False)
    ign.file(KUBECONFIGS["kubelet"], node_kubeconfig(ctx, "kubelet", node, server), 0o600)
    ign.file("/var/lib/kubelet/config.yaml", template("node/kubelet-config.yaml.j2", **c))
    args = [f"--node-ip={node.address}", f"--hostname-override={node.name}",
            f"--node-labels={WORKER_LABEL[0]}={node.role}"]
    if c["external_cloud_provider"]:
        args.append("--cloud-provider=external")
    ign.file(KUBELET_ENV, env_file({"KUBELET_ARGS": " ".join(args)}), compress=False)
    ign.unit("kubelet.service")


def control_plane(ign: Ignition, ctx: RenderContext, node: Node) -> None:
    c = ctx.common()
    ign.file(f"{PKI}/ca.key", _pem(ctx, _instance("ca"), "key"), 0o600,
             compress=False)  # the controller-manager signs kubelet CSRs with it
    put_pki(ign, ctx, node, "front-proxy-ca", key=False)
    put_pki(ign, ctx, node, "etcd-ca", key=False)  # the API server verifies etcd with it
    for name in ("apiserver", "apiserver-kubelet-client", "front-proxy-client",
                 "apiserver-etcd-client", "controller-manager", "scheduler", "super-admin"):
        put_pki(ign, ctx, node, name)
    # The API server takes the public half from the private key file, so sa.pub stays home.
    ign.file(f"{PKI}/sa.key", (ctx.pki.root / "sa.key").read_bytes(), 0o600, compress=False)
    local = f"https://{node.address}:{ctx.config.api.port}"
    for key, name in (("controller_manager", "controller-manager"), ("scheduler", "scheduler"),
                      ("super_admin", "super-admin")):
        ign.file(KUBECONFIGS[key], node_kubeconfig(ctx, name, node, local), 0o600)
    members = etcd_client_urls(ctx.etcd_nodes)
    for pod in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        ign.file(f"/etc/kubernetes/manifests/{pod}.yaml",
                 template(f"node/{pod}.yaml.j2", node=node, etcd_client_urls=members, **c))
    ign.file(ADDON_VALUES, render_addon_values(ctx), 0o600)  # may hold the cloud credential
    sources = [f"-f {ADDONS_DIR}/{s}" for s in addon_sets(ctx)] + [f"-f {ADDON_VALUES}"]
    ign.file(ADDONS_ENV, env_file({"ADDONS": " ".join(sources)}))
    ign.unit("k8simg-addons.service")


def etcd_member(ign: Ignition, ctx: RenderContext, node: Node) -> None:
    if node.role == "etcd":  # a master got the etcd CA with the control plane
        put_pki(ign, ctx, node, "etcd-ca", key=False)
    put_pki(ign, ctx, node, "etcd-server")
    put_pki(ign, ctx, node, "etcd-peer")
    client = client_url(node)
    peer = peer_url(node)
    joining = node.name in ctx.joining
    # etcd reads ETCD_<FLAG> variables; the image's unit carries the fixed TLS flags.
    # A joining member is told whom to ask for the member list it starts with (the image's
    # etcd-join waits until that list holds it): ETCD_INITIAL_CLUSTER is the list as it was
    # at the render, which the node may outlive when it boots ahead of its turn.
    ask = {"K8SIMG_ETCD_JOIN_ENDPOINTS": etcd_client_urls(
        [n for n in ctx.etcd_nodes if n.name != node.name])} if joining else {}
    ign.file(ETCD_ENV, env_file({
        "ETCD_NAME": node.name,
        "ETCD_LISTEN_CLIENT_URLS": client,
        "ETCD_ADVERTISE_CLIENT_URLS": client,
        "ETCD_LISTEN_PEER_URLS": peer,
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": peer,
        "ETCD_INITIAL_CLUSTER": etcd_initial_cluster(ctx.etcd_nodes),
        "ETCD_INITIAL_CLUSTER_STATE": "existing" if joining else "new",
        "ETCD_INITIAL_CLUSTER_TOKEN": ctx.config.name,
        "ETCD_HEARTBEAT_INTERVAL": str(ctx.config.etcd_timing()[0]),
        "ETCD_ELECTION_TIMEOUT": str(ctx.config.etcd_timing()[1]),
        **ask,
    }))
    ign.unit("k8simg-etcd.service")
    if ctx.restore is not None and ctx.restore.node == node.name:
        # Fetched by Ignition onto the volume (never inside user_data: a snapshot is large)
        # and refused unless its SHA-512 is this; the key decrypts it, then both go.
        ign.remote_file(RESTORE_SOURCE, ctx.restore.url, ctx.restore.sha512, 0o600)
        ign.file(ETCD_RESTORE_ENV, env_file({"RESTORE_KEY": ctx.restore.key,
                                             "RESTORE_IV": ctx.restore.iv}), 0o600,
                 compress=False)
        ign.unit("k8simg-etcd-restore.service")


def operator_access(ign: Ignition, ctx: RenderContext, node: Node) -> None:
    """The operators' user, and the host key the cluster's ``known_hosts`` pins (the image
    has none; other nodes make their own at first boot)."""
    ign.user("k8simg", list(ctx.config.bastion.ssh_authorized_keys), ["sudo"])
    key = ctx.pki.bastion_host_key_path
    ign.file("/etc/ssh/ssh_host_ed25519_key", key.read_bytes(), 0o600)
    ign.file("/etc/ssh/ssh_host_ed25519_key.pub", ctx.pki.bastion_host_public_key() + "\n")


container_storage = storage(["/var/lib/containerd", "/var/lib/docker"])
etcd_storage = storage(["/var/lib/etcd"])

ROLES: dict[str, list[Snippet]] = {
    "master": [base, container_storage, runtime, kubelet, control_plane, etcd_member],
    "worker": [base, container_storage, runtime, kubelet],
    "etcd": [base, etcd_storage, etcd_member],
    "bastion": [base, operator_access],
}


def role_snippets(ctx: RenderContext, node: Node) -> list[Snippet]:
    snippets = list(ROLES[node.role])
    if node.role == "master" and ctx.config.dedicated_etcd:
        snippets.remove(etcd_member)
    return snippets


# -- add-ons ----------------------------------------------------------------------------------

def addon_sets(ctx: RenderContext) -> list[str]:
    """The image's add-on folders this cluster applies: no cloud integration on the local cloud."""
    return ["core"] if ctx.config.is_local else ["core", "openstack"]


def zone_storage_class(zone: str | None) -> str | None:
    """The name of the StorageClass of availability zone ``zone``: ``csi-cinder-<zone>``, the
    zone lowercased with what a name cannot hold made ``-``."""
    if not zone:
        return None
    return "csi-cinder-" + (re.sub(r"[^a-z0-9.-]+", "-", zone.lower()).strip("-.") or "zone")[:200]


def render_addon_values(ctx: RenderContext) -> str:
    """The cluster-dependent add-on objects, as one compact multi-document stream."""
    if not ctx.config.is_local and ctx.credential is None:
        raise RenderError(f"cloud {ctx.config.cloud!r} needs an application credential in "
                          f"{CloudCredential.FILE} for the cloud controller manager and Cinder "
                          "CSI; `k8simg deploy` creates it")
    if not ctx.config.is_local and ctx.service_network is None:
        raise RenderError(f"cloud {ctx.config.cloud!r}: the subnet and floating network for "
                          "Services of type LoadBalancer are not recorded in the cluster's "
                          "state; `k8simg deploy` records them")
    text = template("node/addons-values.yaml.j2", openstack=ctx.credential,
                    lb=ctx.service_network, lb_provider=ctx.config.openstack.lb_provider,
                    availability_zone=ctx.config.openstack.availability_zone,
                    zone_storage_class=zone_storage_class(ctx.config.openstack.availability_zone),
                    cloud_cluster_name=ctx.cloud_cluster_name, **ctx.common())
    # One compact JSON document each (JSON is YAML, so kubectl reads the stream as is).
    return "".join("---\n" + json.dumps(d, separators=(",", ":")) + "\n"
                   for d in yaml.safe_load_all(text) if d)


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
    pki = cluster_pki(cluster, cfg)
    problems = pki.verify()
    missing = pki.missing()
    if problems or missing:
        detail = "; ".join([f"{f}: {m}" for f, m in problems] + [f"{m}: missing" for m in missing])
        raise RenderError(f"the PKI in {cluster.pki_dir} is not ready ({detail}); "
                          f"run `k8simg pki init {cluster.path}`")
    return RenderContext(cfg, pki, nodes if nodes is not None else list(pki.ctx.nodes),
                         CloudCredential.load(cluster.path), joining,
                         cluster.state.service_network, cluster.state.uid)


def write_all(ctx: RenderContext, out_dir: Path) -> dict[str, int]:
    """Render every node into ``out_dir/<node>.ign`` (0600: they hold keys).

    Every node is rendered and size-checked before any file is written.
    """
    from k8simg.fsutil import atomic_write

    rendered = {n.name: render_user_data(ctx, n) for n in ctx.nodes}
    for name, data in rendered.items():
        atomic_write(Path(out_dir) / f"{name}.ign", data, 0o600)
    return {name: len(data) for name, data in rendered.items()}
