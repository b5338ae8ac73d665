"""Reading and checking a cluster definition, reporting *every* problem at once with its
dotted path and line: pydantic's shape checks (:mod:`k8simg.model.config`), then
:func:`semantic_problems`, what only makes sense across fields (topology vs. counts,
overlapping CIDRs, whether the address plan fits).
"""

from pathlib import Path

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.events import AliasEvent

from k8simg.errors import ConfigError
from k8simg.model import ports
from k8simg.model.config import ClusterConfig
from k8simg.model.plan import address_problems
from k8simg.model.versions import RELEASES

MAX_BYTES = 256 * 1024  # a cluster definition is a few KiB


def semantic_problems(cfg: ClusterConfig) -> list[tuple[str, str]]:
    """Checks across fields, each problem as ``(dotted.path, message)``."""
    problems: list[tuple[str, str]] = []
    if cfg.kubernetes_version not in RELEASES:
        known = ", ".join(sorted(RELEASES))
        problems.append(("kubernetes_version", f"{cfg.kubernetes_version!r} is not one of {known}"))

    m, w = cfg.masters.count, cfg.workers.count
    if cfg.topology == "ha":
        if m < 3 or m % 2 == 0:
            problems.append(("masters.count", f"HA needs an odd number >= 3, got {m}"))
        elif m > 5:
            problems.append(("masters.count", f"HA supports 3 or 5 masters, got {m}"))
    elif m != 1:
        problems.append(("masters.count", f"topology {cfg.topology} has exactly 1 master, got {m}"))
    if cfg.topology == "single" and w != 0:
        problems.append(("workers.count", f"topology single has no workers, got {w}"))
    if cfg.topology == "one-master" and w < 1:
        problems.append(("workers.count", "topology one-master needs at least 1 worker"))
    if cfg.dedicated_etcd and cfg.etcd.count not in (3, 5):
        problems.append(("etcd.count", f"dedicated etcd needs 3 or 5 members, got {cfg.etcd.count}"))

    net = cfg.network
    cidrs = {"network.node_cidr": net.node_cidr, "network.service_cidr": net.service_cidr,
             "network.pod_cidr": net.pod_cidr}
    names = list(cidrs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if cidrs[a].overlaps(cidrs[b]):
                problems.append((b, f"{cidrs[b]} overlaps {a} {cidrs[a]}"))
    if net.node_cidr.prefixlen < 16:
        # The address plan needs no more; a /8 would give the cloud 16.7 million addresses
        # to allocate from.
        problems.append(("network.node_cidr",
                         f"at most a /16 (65,534 addresses) is used, got /{net.node_cidr.prefixlen}"))
    if net.service_cidr.prefixlen > 24:
        # The API's service takes the first address, cluster DNS the tenth; room for services.
        problems.append(("network.service_cidr",
                         f"needs at least a /24 (the API service at .1, cluster DNS at .10, room "
                         f"for the cluster's services), got /{net.service_cidr.prefixlen}"))
    heartbeat, election = cfg.etcd_timing()
    if election < 5 * heartbeat:  # etcd refuses to start otherwise
        problems.append(("etcd.election_ms",
                         f"{election} ms is less than 5 heartbeats ({heartbeat} ms each); etcd "
                         "needs at least 5 (10 is usual)"))
    if cfg.pki.cert_validity_days >= cfg.pki.ca_validity_days:
        # A certificate must not outlive its CA: clients stop trusting it with the CA.
        problems.append(("pki.cert_validity_days",
                         f"{cfg.pki.cert_validity_days} days would outlive the CA "
                         f"(pki.ca_validity_days: {cfg.pki.ca_validity_days}); make it shorter"))
    reserved = {ports.ETCD_CLIENT: "etcd's client port", ports.ETCD_PEER: "etcd's peer port",
                ports.KUBELET: "the kubelet's port", ports.SSH: "SSH"}
    if cfg.api.port in reserved:
        problems.append(("api.port", f"{cfg.api.port} is {reserved[cfg.api.port]} on the "
                                     "masters; choose another (6443 is the usual)"))
    elif ports.NODE_PORTS[0] <= cfg.api.port <= ports.NODE_PORTS[1]:
        problems.append(("api.port", f"{cfg.api.port} is in the NodePort range "
                                     f"{ports.NODE_PORTS[0]}-{ports.NODE_PORTS[1]}"))
    if net.node_cidr.prefixlen > 24:
        problems.append(("network.node_cidr",
                         f"needs at least a /24 for the address plan, got /{net.node_cidr.prefixlen}"))
    if net.service_cidr.prefixlen < 12:
        # kube-apiserver refuses service ranges with more than 20 host bits.
        problems.append(("network.service_cidr",
                         f"kube-apiserver allows at most a /12, got /{net.service_cidr.prefixlen}"))
    if net.pod_cidr.prefixlen > 24 or 2 ** (24 - net.pod_cidr.prefixlen) < m + w:
        problems.append(("network.pod_cidr", f"{net.pod_cidr} has too few /24 node ranges for {m + w} nodes"))
    problems += address_problems(cfg)
    return problems


# -- reading ---------------------------------------------------------------------------------

def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.allow_duplicate_keys = False
    return y


def _line_of(doc, path: tuple) -> int | None:
    """1-based line of ``path`` in a ruamel round-trip document, or of its nearest parent."""
    node, line = doc, None
    for part in path:
        if isinstance(node, CommentedMap) and part in node:
            line = node.lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        else:
            break
    return line


def parse_config(text: str, source: str = "cluster.yaml") -> ClusterConfig:
    """Parse and fully validate a cluster definition.

    :param text: the YAML document.
    :param source: the file name used in error messages.
    :raises ConfigError: listing every problem, each with its dotted path and line.
    """
    if len(text) > MAX_BYTES:
        raise ConfigError(source, [("", f"is {len(text)} characters; a cluster definition is "
                                        f"at most {MAX_BYTES}")])
    try:
        # An alias can make a few hundred bytes expand into gigabytes (a "billion laughs"):
        # a cluster definition never needs one, so none is read.
        for event in _yaml().parse(text):
            if isinstance(event, AliasEvent):
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise ConfigError(source, [("", f"line {line}: YAML aliases (*{event.anchor}) "
                                                "are not allowed in a cluster definition")])
        doc = _yaml().load(text)
    except YAMLError as e:
        raise ConfigError(source, [("", f"not valid YAML: {e}")]) from None
    if not isinstance(doc, dict):
        raise ConfigError(source, [("", "the top level must be a mapping")])

    def where(path: tuple) -> str:
        line = _line_of(doc, path)
        dotted = ".".join(str(p) for p in path)
        return f"{dotted} (line {line})" if line else dotted

    try:
        cfg = ClusterConfig.model_validate(_plain(doc))
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "string_pattern_mismatch" and loc == ("name",):
                msg = "must be a DNS label: lowercase letters, digits and '-', at most 40 characters"
            problems.append((where(loc), msg))
        raise ConfigError(source, problems) from None
    problems = semantic_problems(cfg)
    if problems:
        raise ConfigError(source, [(where(tuple(_split(p))), m) for p, m in problems])
    return cfg


def _split(dotted: str) -> list:
    return [int(p) if p.isdigit() else p for p in dotted.split(".")] if dotted else []


def _plain(node):
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def load_config(path: Path) -> ClusterConfig:
    """Read and validate ``path``.

    :raises ConfigError: when the file is missing, unreadable or invalid.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ConfigError(str(path), [("", f"is {path.stat().st_size} bytes; a cluster "
                                               f"definition is at most {MAX_BYTES}")])
        return parse_config(read_text(path), str(path))
    except OSError as e:
        raise ConfigError(str(path), [("", f"cannot read: {e.strerror}")]) from None
    except TextError as e:
        raise ConfigError(str(path), [("", str(e))]) from None


class TextError(ValueError):
    """A file that is not UTF-8 text."""


def read_text(path: Path) -> str:
    """``path`` as UTF-8 text.

    :raises TextError: naming the first byte that is not UTF-8, and where it is.
    :raises OSError: when it cannot be read.
    """
    data = Path(path).read_bytes()
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise TextError(f"not UTF-8 text: byte 0x{data[e.start]:02x} on line {line}") from None
