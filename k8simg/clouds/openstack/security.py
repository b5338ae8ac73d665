"""Neutron security groups: which groups and ingress rules the cluster wants (pure functions
of its definition), and making the cloud's match them exactly (missing rules added, others
removed)."""

from k8simg.clouds.openstack.connect import Scope
from k8simg.model import ports
from k8simg.model.config import ClusterConfig
from k8simg.model.plan import Node

NODES = "nodes"  # the group every node but the bastion is in
GROUPS = (NODES, "masters", "workers", "etcds", "bastion")

# (protocol, port min, port max, remote IP prefix, remote group)
Rule = tuple[str, int | None, int | None, str | None, str | None]


def groups_of(node: Node) -> list[str]:
    """The node's security groups (by role)."""
    return ["bastion"] if node.role == "bastion" else [NODES, f"{node.role}s"]


def wanted_groups(cfg: ClusterConfig) -> list[str]:
    """The security groups the cluster needs: every node's and the masters', and the workers',
    dedicated etcd members' and bastion's where it has them."""
    groups = [NODES, "masters"]
    if cfg.workers.count:
        groups.append("workers")
    if cfg.dedicated_etcd:
        groups.append("etcds")
    if cfg.bastion.enabled:
        groups.append("bastion")
    return groups


def group_name(cluster: str, group: str) -> str:
    """The cloud's name for the cluster's security group ``group``."""
    return f"{cluster}-{group}"


def wanted_rules(cfg: ClusterConfig, ids: dict[str, str | None]) -> dict[str, set[Rule]]:
    """Ingress rules per group.

    :param ids: each group's ID (as rules name remote groups), by group.
    """
    node_cidr = str(cfg.network.node_cidr)
    rules: dict[str, set[Rule]] = {g: set() for g in wanted_groups(cfg)}

    def tcp(group: str, lo: int, hi: int | None = None, *, cidr=None, remote=None) -> None:
        rules[group].add(("tcp", lo, hi or lo, str(cidr) if cidr is not None else None,
                          ids[remote] if remote else None))

    rules[NODES].add(("udp", ports.FLANNEL_VXLAN, ports.FLANNEL_VXLAN, None, ids[NODES]))
    rules[NODES].add(("icmp", None, None, None, ids[NODES]))
    tcp(NODES, ports.KUBELET, remote="masters")
    if cfg.bastion.enabled:
        tcp(NODES, ports.SSH, remote="bastion")  # SSH only from the bastion
        for cidr in cfg.bastion.allowed_cidrs:
            tcp("bastion", ports.SSH, cidr=cidr)
    api = cfg.api.port
    for cidr in cfg.api.allowed_cidrs:
        tcp("masters", api, cidr=cidr)
    tcp("masters", api, cidr=node_cidr)  # the load balancer and the nodes
    members = "etcds" if cfg.dedicated_etcd else "masters"
    if cfg.dedicated_etcd:
        tcp("etcds", ports.ETCD_CLIENT, remote="masters")
    tcp(members, ports.ETCD_CLIENT, ports.ETCD_PEER, remote=members)  # etcd among its members
    if cfg.bastion.enabled:
        # etcd's client port from the bastion alone: `k8simg upgrade` tunnels through it
        # (mutual TLS with the cluster's etcd CA on top).
        tcp(members, ports.ETCD_CLIENT, remote="bastion")
    if "workers" in rules:
        # NodePorts from the cluster's subnet alone: the load balancers the cloud controller
        # manager makes for Services of type LoadBalancer reach their members from there.
        lo, hi = ports.NODE_PORTS
        rules["workers"] |= {(p, lo, hi, node_cidr, None) for p in ("tcp", "udp")}
    return rules


def rule_text(rule: Rule) -> str:
    """``rule`` for messages, e.g. ``tcp 6443 from 10.0.0.0/24``."""
    proto, lo, hi, prefix, remote = rule
    span = "" if lo is None else (f" {lo}" if lo == hi else f" {lo}-{hi}")
    return f"{proto}{span} from {prefix or remote}"


def ensure_security_groups(s: Scope, parallel) -> dict[str, str | None]:
    """The cluster's groups, each with exactly its wanted ingress rules.

    :param parallel: runs a list of callables concurrently (the cloud's).
    :returns: each group's ID by group (None for a group a dry run would create).
    """
    n = s.conn.network
    pid = s.project_id

    def one(group):
        name = group_name(s.name, group)
        sg = s.mine(n.security_groups(name=name, project_id=pid), "security group", name)
        if sg is not None:
            s.tagged(sg)
            return group, sg
        s.record("create", "security group", name)
        if s.dry:
            return group, None
        sg = n.create_security_group(name=name, description=s.describe(group))
        return group, s.tagged(sg, record=False)

    groups = dict(parallel([lambda g=g: one(g) for g in wanted_groups(s.cfg)]))
    ids = {g: (sg.id if sg else f"<{group_name(s.name, g)}>") for g, sg in groups.items()}
    ids.setdefault("bastion", None)
    wanted = wanted_rules(s.cfg, ids)

    def rules_of(group):
        sg = groups[group]
        have = {}
        if sg is not None:
            for r in n.security_group_rules(security_group_id=sg.id, direction="ingress"):
                have[(r.protocol, r.port_range_min, r.port_range_max, r.remote_ip_prefix,
                      r.remote_group_id)] = r
        for key in sorted(wanted[group] - set(have), key=str):
            s.record("create", "security group rule", group_name(s.name, group), rule_text(key))
            if not s.dry:
                proto, lo, hi, prefix, remote = key
                n.create_security_group_rule(
                    security_group_id=sg.id, direction="ingress", ethertype="IPv4",
                    protocol=proto, port_range_min=lo, port_range_max=hi,
                    remote_ip_prefix=prefix, remote_group_id=remote)
        for key in sorted(set(have) - wanted[group], key=str):
            s.record("delete", "security group rule", group_name(s.name, group), rule_text(key))
            if not s.dry:
                n.delete_security_group_rule(have[key], ignore_missing=True)

    parallel([lambda g=g: rules_of(g) for g in groups])
    return {g: (sg.id if sg else None) for g, sg in groups.items()}
