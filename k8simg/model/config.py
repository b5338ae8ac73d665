"""The cluster definition's schema (``cluster.yaml``): pydantic checks the shape (unknown keys,
types, ranges); :mod:`k8simg.model.validate` checks what only makes sense across fields and
reads the file; :mod:`k8simg.model.template` writes the commented one ``k8simg init`` makes.
"""

import ipaddress
import re
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from k8simg.model.versions import DEFAULT_KUBERNETES_VERSION

KeyAlgorithm = Literal["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
Topology = Literal["single", "one-master", "ha"]

# Node names are "<cluster>-<role>-<index>" and must stay valid hostnames (63 characters).
_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")
_DNS_RE = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def ssh_public_key_problem(text: str) -> str | None:
    """Why ``text`` is not one OpenSSH public key k8simg can use, or None."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    if "PRIVATE KEY" in text:
        return "is a private key: give the public one (the .pub file), never the private"
    try:
        load_ssh_public_key(text.strip().encode())
    except UnsupportedAlgorithm as e:
        return f"is not a supported OpenSSH public key ({e})"
    except (ValueError, TypeError) as e:
        return f"is not an OpenSSH public key ({e})"
    return None


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
    # Raft timing (etcd's --heartbeat-interval and --election-timeout); None: etcd's own
    # (100/1000 ms), or 500/5000 ms on the local cloud under software emulation, where a
    # starved VM misses heartbeats and the members would hold elections by themselves.
    heartbeat_ms: Annotated[int | None, Field(ge=10, le=10000)] = None
    election_ms: Annotated[int | None, Field(ge=50, le=50000)] = None


class BastionSpec(_Strict):
    enabled: bool = True
    flavor: Annotated[str, Field(min_length=1)] = "m1.small"
    ssh_authorized_keys: list[str] = []
    allowed_cidrs: list[IPv4Network] = [IPv4Network("0.0.0.0/0")]

    @field_validator("ssh_authorized_keys")
    @classmethod
    def _keys_parse(cls, keys: list[str]) -> list[str]:
        for i, key in enumerate(keys):
            why = ssh_public_key_problem(key)
            if why:
                raise ValueError(f"entry {i} {why}")
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
    # Octavia's provider for the load balancers of Services of type LoadBalancer (the cloud
    # controller manager makes them): amphora (Octavia's default) or ovn.
    lb_provider: Literal["amphora", "ovn"] = "amphora"
    # The roles of the application credential the cloud controller manager and Cinder CSI use:
    # named explicitly, never whatever the deploying token happens to carry.
    credential_roles: Annotated[list[Annotated[str, Field(min_length=1, max_length=255)]],
                                Field(min_length=1, max_length=20)] = ["member"]

    @field_validator("credential_roles")
    @classmethod
    def _roles_unique(cls, roles: list[str]) -> list[str]:
        if len(set(roles)) != len(roles):
            raise ValueError("a role is listed twice")
        return roles


class LocalSpec(_Strict):
    """The local cloud's virtual machines (used when ``cloud: local``)."""

    memory_mb: Annotated[int, Field(ge=512, le=262144)] = 2048
    cpus: Annotated[int, Field(ge=1, le=64)] = 1
    # tcg: software emulation, works everywhere; kvm: hardware virtualisation where /dev/kvm
    # boots a normal kernel (not inside most containers).
    accel: Literal["tcg", "kvm"] = "tcg"
    # QEMU's -cpu; None: "host" under kvm, "qemu64,+rdrand,-svm" under tcg (x86-64 v1: workloads
    # built for x86-64-v2, RHEL 9's, need a model such as "max" here, at a cost in boot time).
    cpu_model: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.,+=-]*$",
                                    max_length=200)] | None = None
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

    def etcd_timing(self) -> tuple[int, int]:
        """``(heartbeat ms, election timeout ms)`` the members run with (see
        :class:`EtcdSpec`)."""
        emulated = self.is_local and self.local.accel == "tcg"
        heartbeat = self.etcd.heartbeat_ms or (500 if emulated else 100)
        election = self.etcd.election_ms or max(10 * heartbeat, 5000 if emulated else 1000)
        return heartbeat, election

    @property
    def dedicated_etcd(self) -> bool:
        return self.etcd.placement == "dedicated"

    def role_spec(self, role: str) -> "RoleSpec | EtcdSpec | BastionSpec":
        """The section of the definition that describes nodes of ``role``."""
        return {"master": self.masters, "worker": self.workers, "etcd": self.etcd,
                "bastion": self.bastion}[role]

    def flavor(self, role: str) -> str:
        return self.role_spec(role).flavor

    def volume_gb(self, role: str) -> int | None:
        """The size of a ``role`` node's storage volume (the bastion has none)."""
        return getattr(self.role_spec(role), "volume_size_gb", None)

    def flavor_fields(self) -> dict[str, str]:
        """``{dotted field: flavor}`` for every role this cluster has nodes of."""
        fields = {}
        for role, section, present in (
                ("master", "masters", self.masters.count > 0),
                ("worker", "workers", self.workers.count > 0),
                ("etcd", "etcd", self.dedicated_etcd),
                ("bastion", "bastion", self.bastion.enabled)):
            if present:
                fields[f"{section}.flavor"] = self.flavor(role)
        return fields
