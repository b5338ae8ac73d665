"""The deterministic node plan: names and fixed addresses, known before any server exists.

Every address is a pure function of the cluster definition, a role and an index, so every
node's configuration (and certificate) can be rendered and sized before deploy, and a
replacement node (the next index) gets a fresh address of its own.

Layout inside ``network.node_cidr`` (offsets from the network address)::

    1          router / gateway
    5          API load balancer VIP
    10..49     masters   (index modulo 40)
    50..89     dedicated etcd members
    90         bastion
    100..      workers, to the end of the subnet
"""

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Literal

from k8simg.model import ports
from k8simg.model.config import ClusterConfig

Role = Literal["master", "worker", "etcd", "bastion"]
ROLES: tuple[Role, ...] = ("master", "worker", "etcd", "bastion")

GATEWAY_OFFSET = 1
VIP_OFFSET = 5
BASTION_OFFSET = 90
_RANGES: dict[str, tuple[int, int]] = {"master": (10, 40), "etcd": (50, 40), "worker": (100, 0)}


@dataclass(frozen=True)
class Node:
    """One planned node."""

    name: str
    role: Role
    index: int
    address: IPv4Address


def _span(cfg: ClusterConfig, role: str) -> int:
    base, span = _RANGES[role]
    # Workers run to the last usable address (the broadcast address is not one).
    return span or cfg.network.node_cidr.num_addresses - base - 1


def node_address(cfg: ClusterConfig, role: Role, index: int) -> IPv4Address:
    """The fixed address of node ``index`` of ``role``."""
    net = cfg.network.node_cidr
    if role == "bastion":
        return net.network_address + BASTION_OFFSET
    base, _ = _RANGES[role]
    return net.network_address + base + index % _span(cfg, role)


def node_name(cfg: ClusterConfig, role: Role, index: int) -> str:
    return f"{cfg.name}-bastion" if role == "bastion" else f"{cfg.name}-{role}-{index}"


def make_node(cfg: ClusterConfig, role: Role, index: int) -> Node:
    return Node(node_name(cfg, role, index), role, index, node_address(cfg, role, index))


def node_key(node: Node) -> str:
    """``master-3``: how the state records a node."""
    return f"{node.role}-{node.index}"


def parse_node_key(cfg: ClusterConfig, key: str) -> Node:
    """``master-3`` (as the state records a node) to the node.

    :raises ValueError: when ``key`` is not ``<role>-<index>``.
    """
    role, _, index = key.rpartition("-")
    if role not in ROLES or not index.isdigit():
        raise ValueError(f"{key!r} is not <role>-<index>")
    return make_node(cfg, role, int(index))


def parse_node_name(cluster: str, name: str) -> tuple[Role, int] | None:
    """``<cluster>-<role>-<index>`` (or ``<cluster>-bastion``) to ``(role, index)``; None for a
    name that is not one of cluster ``cluster``'s nodes. The one parser of node names."""
    rest = name.removeprefix(f"{cluster}-") if name.startswith(f"{cluster}-") else None
    if rest == "bastion":
        return "bastion", 0
    role, _, index = (rest or "").rpartition("-")
    if role in ROLES and role != "bastion" and index.isdigit():
        return role, int(index)
    return None


def client_url(node: Node) -> str:
    """The node's etcd client URL."""
    return f"https://{node.address}:{ports.ETCD_CLIENT}"


def peer_url(node: Node) -> str:
    """The node's etcd peer URL."""
    return f"https://{node.address}:{ports.ETCD_PEER}"


def next_node(cfg: ClusterConfig, role: Role, existing: list[Node]) -> Node:
    """A replacement: the next index of ``role`` (indices only grow, so a new node never
    takes a name, address or certificate an old one had)."""
    return make_node(cfg, role, max((n.index for n in existing if n.role == role),
                                    default=-1) + 1)


def scaled_nodes(cfg: ClusterConfig, recorded: list[Node]) -> list[Node]:
    """A recorded node set (an upgrade's or a restore's) with its workers brought to
    ``workers.count``: the lowest-indexed kept (a deploy removes the newest first), new ones at
    the next indices. Masters, etcd members and the bastion stay as recorded: replacing those
    is an upgrade's."""
    workers = sorted((n for n in recorded if n.role == "worker"), key=lambda n: n.index)
    kept = {n.name for n in workers[:cfg.workers.count]}
    out = [n for n in recorded if n.role != "worker" or n.name in kept]  # in recorded order
    for _ in range(cfg.workers.count - len(kept)):
        out.append(next_node(cfg, "worker", out))
    return out


def api_vip(cfg: ClusterConfig) -> IPv4Address:
    """The API load balancer's fixed address on the node network."""
    return cfg.network.node_cidr.network_address + VIP_OFFSET


def gateway(cfg: ClusterConfig) -> IPv4Address:
    return cfg.network.node_cidr.network_address + GATEWAY_OFFSET


def initial_nodes(cfg: ClusterConfig) -> list[Node]:
    """Every node of a freshly deployed cluster, masters first, in a stable order."""
    nodes = [make_node(cfg, "master", i) for i in range(cfg.masters.count)]
    if cfg.dedicated_etcd:
        nodes += [make_node(cfg, "etcd", i) for i in range(cfg.etcd.count)]
    nodes += [make_node(cfg, "worker", i) for i in range(cfg.workers.count)]
    if cfg.bastion.enabled:
        nodes.append(make_node(cfg, "bastion", 0))
    return nodes


def etcd_members(nodes: list[Node], cfg: ClusterConfig) -> list[Node]:
    """The nodes that run etcd: the masters when stacked, else the dedicated members."""
    role = "etcd" if cfg.dedicated_etcd else "master"
    return [n for n in nodes if n.role == role]


def address_problems(cfg: ClusterConfig) -> list[tuple[str, str]]:
    """Whether the initial plan fits the node subnet, as ``(dotted.path, message)``."""
    if cfg.network.node_cidr.prefixlen > 24:
        return []  # reported by the CIDR check already
    problems = []
    counts = {"master": ("masters.count", cfg.masters.count),
              "worker": ("workers.count", cfg.workers.count)}
    if cfg.dedicated_etcd:
        counts["etcd"] = ("etcd.count", cfg.etcd.count)
    for role, (path, count) in counts.items():
        # One address stays free for the surge node of a rolling replacement: indices only
        # grow, so the live nodes are a window of count + 1 consecutive indices.
        limit = _span(cfg, role) - 1
        if count > limit:
            problems.append((path, f"{count} {role}s do not fit network.node_cidr "
                                   f"{cfg.network.node_cidr} (at most {limit})"))
    return problems
