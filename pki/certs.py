"""The one table of every certificate a k8simg cluster has: kubeadm's set.

Modelled on kubeadm's ``cmd/kubeadm/app/phases/certs/certlist.go`` and
``phases/kubeconfig``: subjects, organisations and usages are those of current kubeadm.
Generation, renewal, the expiry report and the per-node selections all walk :data:`TABLE`;
the CA tree is derived from it, never written twice.
"""

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv6Address

from k8simg.model.config import ClusterConfig
from k8simg.model.plan import Node, api_vip, etcd_members

# kubeadm's groups (cmd/kubeadm/app/constants): admin.conf is bound to cluster-admin through
# kubeadm:cluster-admins since v1.29; only super-admin.conf keeps system:masters.
CLUSTER_ADMINS = "kubeadm:cluster-admins"
MASTERS_GROUP = "system:masters"
NODES_GROUP = "system:nodes"


class Scope(Enum):
    """How many instances of a certificate a cluster has."""

    CLUSTER = "cluster"  # one, shared
    MASTER = "master"  # one per master
    ETCD = "etcd"  # one per etcd member (masters when stacked, else dedicated nodes)
    NODE = "node"  # one per node that runs a kubelet (masters and workers)


@dataclass(frozen=True)
class SANs:
    dns: tuple[str, ...] = ()
    ips: tuple[IPv4Address | IPv6Address, ...] = ()


@dataclass(frozen=True)
class PkiContext:
    """What the cluster-dependent fields of the table are computed from.

    :param config: the cluster definition.
    :param nodes: the nodes that certificates are issued for.
    :param api_floating_ip: the API's public address, once known (config or deploy).
    """

    config: ClusterConfig
    nodes: tuple[Node, ...]
    api_floating_ip: IPv4Address | None = None

    @property
    def api_vip(self) -> IPv4Address:
        return api_vip(self.config)

    @property
    def api_host(self) -> str:
        """Where clients outside the node network reach the API."""
        return str(self.api_floating_ip or self.config.api.floating_ip or self.api_vip)

    @property
    def api_server_url(self) -> str:
        return f"https://{self.api_host}:{self.config.api.port}"

    @property
    def internal_api_server_url(self) -> str:
        """Where nodes reach the API: the load balancer's VIP on the node network."""
        return f"https://{self.api_vip}:{self.config.api.port}"


SanFn = Callable[[PkiContext, Node | None], SANs]


def first_service_ip(config: ClusterConfig) -> IPv4Address:
    """The ``kubernetes`` Service's ClusterIP: the first address of the service range."""
    return config.network.service_cidr.network_address + 1


def apiserver_sans(ctx: PkiContext, node: Node | None) -> SANs:
    """kubeadm's apiserver SANs (``GetAPIServerAltNames``) plus the load balancer and localhost.

    localhost is added so that the components and the add-on applier on a master can reach
    their own API server without going through the load balancer.
    """
    domain = ctx.config.network.dns_domain
    dns = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
           f"kubernetes.default.svc.{domain}", "localhost"]
    ips: list = [first_service_ip(ctx.config), ipaddress.ip_address("127.0.0.1"), ctx.api_vip]
    if node is not None:
        dns.insert(0, node.name)
        ips.insert(1, node.address)
    for fip in (ctx.config.api.floating_ip, ctx.api_floating_ip):
        if fip is not None:
            ips.append(fip)
    for san in ctx.config.api.extra_sans:
        try:
            ips.append(ipaddress.ip_address(san))
        except ValueError:
            dns.append(san)
    return SANs(tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(ips)))


def etcd_sans(ctx: PkiContext, node: Node | None) -> SANs:
    """kubeadm's ``GetEtcdAltNames`` / ``GetEtcdPeerAltNames``: node name, localhost, its address."""
    assert node is not None, "etcd certificates are per member"
    return SANs((node.name, "localhost"),
                (node.address, ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")))


@dataclass(frozen=True)
class CertSpec:
    """One certificate of the cluster.

    :param name: unique name, as kubeadm calls it.
    :param path: file base under the PKI directory (``<path>.crt`` / ``<path>.key``); per-node
        certificates live under ``nodes/<node>/``.
    :param ca: the name of the signing CA; ``None`` for a self-signed CA.
    :param cn: subject common name; ``{node}`` is replaced by the node's name.
    :param usages: ``ca``, ``server`` and/or ``client``.
    :param kubeconfig: for client certificates that are a kubeconfig's identity, its file name.
    """

    name: str
    path: str
    ca: str | None
    cn: str
    usages: tuple[str, ...]
    description: str
    orgs: tuple[str, ...] = ()
    scope: Scope = Scope.CLUSTER
    sans: SanFn | None = field(default=None, compare=False)
    kubeconfig: str | None = None

    @property
    def is_ca(self) -> bool:
        return self.ca is None


TABLE: tuple[CertSpec, ...] = (
    # Cluster CA: signs the API server, its clients and the kubelets; the controller-manager
    # signs kubelet CSRs with its key.
    CertSpec("ca", "ca", None, "kubernetes", ("ca",), "Kubernetes cluster CA"),
    # Front-proxy CA: the aggregation layer's separate trust root.
    CertSpec("front-proxy-ca", "front-proxy-ca", None, "front-proxy-ca", ("ca",),
             "front-proxy (aggregation layer) CA"),
    # etcd CA: trust root of etcd's servers, peers and clients only.
    CertSpec("etcd-ca", "etcd/ca", None, "etcd-ca", ("ca",), "etcd CA"),
    # The API server's serving certificate, one per master with that master's address.
    CertSpec("apiserver", "apiserver", "ca", "kube-apiserver", ("server",),
             "serves the Kubernetes API", scope=Scope.MASTER, sans=apiserver_sans),
    # The API server's identity towards kubelets (logs, exec, port-forward).
    CertSpec("apiserver-kubelet-client", "apiserver-kubelet-client", "ca",
             "kube-apiserver-kubelet-client", ("client",), "API server to kubelet client",
             orgs=(CLUSTER_ADMINS,)),
    # The API server's identity towards aggregated API servers.
    CertSpec("front-proxy-client", "front-proxy-client", "front-proxy-ca", "front-proxy-client",
             ("client",), "front-proxy client"),
    # etcd's client-facing serving certificate; ClientAuth too, etcd 3.2+ requires it
    # (https://github.com/etcd-io/etcd/issues/9785).
    CertSpec("etcd-server", "etcd/server", "etcd-ca", "{node}", ("server", "client"),
             "etcd serving certificate", scope=Scope.ETCD, sans=etcd_sans),
    # etcd member to member, both directions.
    CertSpec("etcd-peer", "etcd/peer", "etcd-ca", "{node}", ("server", "client"),
             "etcd peer certificate", scope=Scope.ETCD, sans=etcd_sans),
    # Health checks and operator access to etcd (k8simg's upgrade uses it).
    CertSpec("etcd-healthcheck-client", "etcd/healthcheck-client", "etcd-ca",
             "kube-etcd-healthcheck-client", ("client",), "etcd health-check client"),
    # The API server's identity towards etcd.
    CertSpec("apiserver-etcd-client", "apiserver-etcd-client", "etcd-ca",
             "kube-apiserver-etcd-client", ("client",), "API server to etcd client"),
    # admin.conf: bound to cluster-admin by RBAC, so it can be revoked.
    CertSpec("admin", "kubeconfig/admin", "ca", "kubernetes-admin", ("client",),
             "admin.conf identity", orgs=(CLUSTER_ADMINS,), kubeconfig="admin.conf"),
    # super-admin.conf: system:masters, bypasses RBAC; used only by the add-on applier.
    CertSpec("super-admin", "kubeconfig/super-admin", "ca", "kubernetes-super-admin", ("client",),
             "super-admin.conf identity", orgs=(MASTERS_GROUP,), kubeconfig="super-admin.conf"),
    CertSpec("controller-manager", "kubeconfig/controller-manager", "ca",
             "system:kube-controller-manager", ("client",), "controller-manager.conf identity",
             kubeconfig="controller-manager.conf"),
    CertSpec("scheduler", "kubeconfig/scheduler", "ca", "system:kube-scheduler", ("client",),
             "scheduler.conf identity", kubeconfig="scheduler.conf"),
    # Each kubelet's client identity for the Node authorizer; rotated in-cluster afterwards.
    CertSpec("kubelet", "kubelet-client", "ca", "system:node:{node}", ("client",),
             "kubelet.conf identity", orgs=(NODES_GROUP,), scope=Scope.NODE,
             kubeconfig="kubelet.conf"),
)

BY_NAME: dict[str, CertSpec] = {s.name: s for s in TABLE}

# The service-account signing key pair is a bare key pair, not a certificate (kubeadm sa.key/sa.pub).
SA_KEY = "sa"


@dataclass(frozen=True)
class CertInstance:
    """One certificate file pair: a table entry, for one node when it is per-node."""

    spec: CertSpec
    node: Node | None = None

    @property
    def id(self) -> str:
        return f"{self.spec.name}@{self.node.name}" if self.node else self.spec.name

    @property
    def path(self) -> str:
        return f"nodes/{self.node.name}/{self.spec.path}" if self.node else self.spec.path

    @property
    def cn(self) -> str:
        return self.spec.cn.format(node=self.node.name if self.node else "")

    @property
    def display(self) -> str:
        name = self.spec.kubeconfig or self.spec.name
        return f"{name} ({self.node.name})" if self.node else name

    def sans(self, ctx: PkiContext) -> SANs:
        return self.spec.sans(ctx, self.node) if self.spec.sans else SANs()


def scope_nodes(scope: Scope, ctx: PkiContext) -> list[Node]:
    nodes = list(ctx.nodes)
    if scope is Scope.MASTER:
        return [n for n in nodes if n.role == "master"]
    if scope is Scope.ETCD:
        return etcd_members(nodes, ctx.config)
    if scope is Scope.NODE:
        return [n for n in nodes if n.role in ("master", "worker")]
    raise ValueError(scope)


def instances(ctx: PkiContext, specs: tuple[CertSpec, ...] = TABLE) -> Iterator[CertInstance]:
    """Every certificate of the cluster, in table order (so every CA before its leaves)."""
    for spec in specs:
        if spec.scope is Scope.CLUSTER:
            yield CertInstance(spec)
        else:
            for node in scope_nodes(spec.scope, ctx):
                yield CertInstance(spec, node)


def cas() -> list[CertSpec]:
    return [s for s in TABLE if s.is_ca]


def table_problems(table: tuple[CertSpec, ...] = TABLE) -> list[str]:
    """The table's own invariants; an empty list when it is sound."""
    problems, seen, paths = [], {}, set()
    for spec in table:
        if spec.name in seen:
            problems.append(f"{spec.name}: duplicate name")
        if spec.path in paths:
            problems.append(f"{spec.name}: duplicate path {spec.path}")
        if not spec.usages:
            problems.append(f"{spec.name}: no usages")
        if spec.is_ca != ("ca" in spec.usages):
            problems.append(f"{spec.name}: 'ca' usage iff self-signed")
        if spec.ca is not None:
            signer = seen.get(spec.ca)
            if signer is None:
                problems.append(f"{spec.name}: signer {spec.ca} is unknown or comes later")
            elif not signer.is_ca:
                problems.append(f"{spec.name}: signer {spec.ca} is not a CA")
        if spec.is_ca and spec.scope is not Scope.CLUSTER:
            problems.append(f"{spec.name}: a CA is cluster-wide")
        if spec.scope is not Scope.CLUSTER and "{node}" not in spec.cn and spec.kubeconfig:
            problems.append(f"{spec.name}: per-node identity must name the node")
        if "server" in spec.usages and spec.sans is None:
            problems.append(f"{spec.name}: a serving certificate needs SANs")
        seen[spec.name] = spec
        paths.add(spec.path)
    return problems
