"""The cluster definition (``cluster.yaml``): schema, validation and the commented template.

Validation happens in two passes, and both report *every* problem at once with its dotted
path: pydantic checks the shape (unknown keys, types, ranges); :func:`semantic_problems` then
checks what only makes sense across fields (topology vs. counts, overlapping CIDRs).
"""

import ipaddress
import re
from io import StringIO
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from k8simg.errors import ConfigError
from k8simg.versions import DEFAULT_KUBERNETES_VERSION, RELEASES

KeyAlgorithm = Literal["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
Topology = Literal["single", "one-master", "ha"]

# Node names are "<cluster>-<role>-<index>" and must stay valid hostnames (63 characters).
_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")
_DNS_RE = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class RoleSpec(_Strict):
    count: Annotated[int, Field(ge=0, le=500)]
    flavor: Annotated[str, Field(min_length=1)]
    volume_size_gb: Annotated[int, Field(ge=10, le=16384)]


class EtcdSpec(_Strict):
    placement: Literal["stacked", "dedicated"] = "stacked"
    count: Annotated[int, Field(ge=0, le=7)] = 3
    flavor: Annotated[str, Field(min_length=1)] = "m1.medium"
    volume_size_gb: Annotated[int, Field(ge=10, le=16384)] = 20


class BastionSpec(_Strict):
    enabled: bool = True
    flavor: Annotated[str, Field(min_length=1)] = "m1.small"
    ssh_authorized_keys: list[str] = []
    allowed_cidrs: list[IPv4Network] = [IPv4Network("0.0.0.0/0")]

    @field_validator("ssh_authorized_keys")
    @classmethod
    def _keys_parse(cls, keys: list[str]) -> list[str]:
        from cryptography.hazmat.primitives.serialization import load_ssh_public_key

        for i, key in enumerate(keys):
            try:
                load_ssh_public_key(key.strip().encode())
            except (ValueError, TypeError) as e:
                raise ValueError(f"entry {i} is not an OpenSSH public key ({e})") from None
        return [k.strip() for k in keys]


class NetworkSpec(_Strict):
    node_cidr: IPv4Network = IPv4Network("10.0.0.0/24")
    service_cidr: IPv4Network = IPv4Network("10.96.0.0/12")
    pod_cidr: IPv4Network = IPv4Network("10.244.0.0/16")
    dns_domain: Annotated[str, Field(pattern=_DNS_RE.pattern)] = "cluster.local"
    dns_nameservers: list[IPv4Address] = []


class ApiSpec(_Strict):
    port: Annotated[int, Field(ge=1, le=65535)] = 6443
    extra_sans: list[str] = []
    allowed_cidrs: list[IPv4Network] = [IPv4Network("0.0.0.0/0")]
    floating_ip: IPv4Address | None = None

    @field_validator("extra_sans")
    @classmethod
    def _sans_are_names_or_ips(cls, sans: list[str]) -> list[str]:
        for san in sans:
            try:
                ipaddress.ip_address(san)
            except ValueError:
                if not _DNS_RE.match(san):
                    raise ValueError(f"{san!r} is neither an IP address nor a DNS name") from None
        return sans


class OpenStackSpec(_Strict):
    external_network: Annotated[str, Field(min_length=1)] = "public"
    availability_zone: str | None = None


class LocalSpec(_Strict):
    """The local cloud's virtual machines (used when ``cloud: local``)."""

    memory_mb: Annotated[int, Field(ge=512, le=262144)] = 2048
    cpus: Annotated[int, Field(ge=1, le=64)] = 1
    # tcg: software emulation, works everywhere; kvm: hardware virtualisation where /dev/kvm
    # boots a normal kernel (not inside most containers).
    accel: Literal["tcg", "kvm"] = "tcg"
    boot_timeout_s: Annotated[int, Field(ge=30, le=7200)] = 1800


class PkiSpec(_Strict):
    key_algorithm: KeyAlgorithm = "ecdsa-p256"
    ca_validity_days: Annotated[int, Field(ge=1, le=36500)] = 3650
    cert_validity_days: Annotated[int, Field(ge=1, le=3650)] = 365


class ClusterConfig(_Strict):
    """A validated cluster definition. Build it with :func:`load_config` or :func:`parse_config`."""

    name: Annotated[str, Field(pattern=_NAME_RE.pattern)]
    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION
    cloud: Annotated[str, Field(min_length=1)] = "local"
    image: Annotated[str, Field(min_length=1)] = "k8simg"
    topology: Topology = "ha"
    masters: RoleSpec = RoleSpec(count=3, flavor="m1.k8s-master", volume_size_gb=25)
    workers: RoleSpec = RoleSpec(count=2, flavor="m1.k8s-worker", volume_size_gb=50)
    etcd: EtcdSpec = EtcdSpec()
    bastion: BastionSpec = BastionSpec()
    network: NetworkSpec = NetworkSpec()
    api: ApiSpec = ApiSpec()
    openstack: OpenStackSpec = OpenStackSpec()
    local: LocalSpec = LocalSpec()
    pki: PkiSpec = PkiSpec()

    @property
    def is_local(self) -> bool:
        return self.cloud == "local"

    @property
    def dedicated_etcd(self) -> bool:
        return self.etcd.placement == "dedicated"


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
    if net.node_cidr.prefixlen > 24:
        problems.append(("network.node_cidr",
                         f"needs at least a /24 for the address plan, got /{net.node_cidr.prefixlen}"))
    if net.service_cidr.prefixlen < 12:
        # kube-apiserver refuses service ranges with more than 20 host bits.
        problems.append(("network.service_cidr",
                         f"kube-apiserver allows at most a /12, got /{net.service_cidr.prefixlen}"))
    if net.pod_cidr.prefixlen > 24 or 2 ** (24 - net.pod_cidr.prefixlen) < m + w:
        problems.append(("network.pod_cidr", f"{net.pod_cidr} has too few /24 node ranges for {m + w} nodes"))
    # Import here: plan imports this module for the type.
    from k8simg.plan import address_problems

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
    try:
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
        text = path.read_text()
    except OSError as e:
        raise ConfigError(str(path), [("", f"cannot read: {e.strerror}")]) from None
    return parse_config(text, str(path))


# -- the commented template ------------------------------------------------------------------

def _scalar(value: str) -> str:
    """``value`` as a YAML scalar: plain when that is unambiguous, else quoted."""
    import json

    return value if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", value) else json.dumps(value)


def render_template(name: str, cloud: str = "local", ssh_keys: list[str] | None = None,
                    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION,
                    image: str | None = None, workers: int | None = None) -> str:
    """The commented ``cluster.yaml`` that ``k8simg init`` writes: every default, explained."""
    d = ClusterConfig(name="x")
    if image is not None or workers is not None:
        d = d.model_copy(update={
            "image": image if image is not None else d.image,
            "workers": d.workers.model_copy(update={"count": workers}) if workers is not None
            else d.workers})
    out = StringIO()
    y = YAML()
    y.default_flow_style = False
    y.dump({"ssh_authorized_keys": ssh_keys or []}, out)
    keys_yaml = "\n".join("  " + line for line in out.getvalue().rstrip().splitlines())
    known = ", ".join(sorted(RELEASES))
    return f"""\
# k8simg cluster definition. `k8simg config validate` checks it; every other command does too.
# This directory is the cluster's whole state (definition, PKI, kubeconfigs): keep it secret.

# DNS label; nodes are named <name>-master-0, <name>-worker-0, ... and every cloud resource
# carries this name as its tag.
name: {name}

# One of: {known}
kubernetes_version: "{kubernetes_version}"

# "local" runs the nodes as QEMU VMs on this host; anything else names a cloud in clouds.yaml.
cloud: {cloud}

# The node image baked by `k8simg bake` (Glance name or ID; for the local cloud, the qcow2's
# path, relative to this directory unless absolute).
image: {_scalar(d.image)}

# single: one node runs everything; one-master: 1 master + workers;
# ha: 3 or 5 masters behind a load balancer + workers.
topology: {d.topology}

masters:
  count: {d.masters.count}
  flavor: {d.masters.flavor}   # 3 vCPU / 4 GB class
  volume_size_gb: {d.masters.volume_size_gb}        # container storage (/var/lib/containerd, /var/lib/docker)

workers:
  count: {d.workers.count}
  flavor: {d.workers.flavor}   # 6 vCPU / 16 GB class
  volume_size_gb: {d.workers.volume_size_gb}

etcd:
  # stacked: etcd runs on the masters. dedicated: on 3 or 5 nodes of its own.
  placement: {d.etcd.placement}
  count: {d.etcd.count}                   # used when dedicated
  flavor: {d.etcd.flavor}
  volume_size_gb: {d.etcd.volume_size_gb}

bastion:
  enabled: {str(d.bastion.enabled).lower()}
  flavor: {d.bastion.flavor}
  # The operators' OpenSSH public keys; the only way into the cluster's network.
{keys_yaml}
  allowed_cidrs:           # who may SSH to the bastion
    - 0.0.0.0/0

network:
  node_cidr: {d.network.node_cidr}      # private subnet; node addresses are planned from it
  service_cidr: {d.network.service_cidr}
  pod_cidr: {d.network.pod_cidr}
  dns_domain: {d.network.dns_domain}
  dns_nameservers: []          # for the private subnet; empty uses the cloud's default

api:
  port: {d.api.port}
  extra_sans: []               # more names or addresses for the API server certificate
  allowed_cidrs:               # who may reach the API through the load balancer
    - 0.0.0.0/0
  floating_ip: null            # a fixed floating IP for the API; null lets deploy allocate one

openstack:
  external_network: {d.openstack.external_network}     # the "floating" network the router uses
  availability_zone: null

local:                         # the QEMU virtual machines of `cloud: local`
  memory_mb: {d.local.memory_mb}              # per node
  cpus: {d.local.cpus}
  accel: {d.local.accel}                   # tcg (software, works anywhere) or kvm (where /dev/kvm works)
  boot_timeout_s: {d.local.boot_timeout_s}         # how long deploy waits for a node's first boot

pki:
  key_algorithm: {d.pki.key_algorithm}   # ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096
  ca_validity_days: {d.pki.ca_validity_days}
  cert_validity_days: {d.pki.cert_validity_days}
"""
