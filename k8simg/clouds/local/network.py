"""The local cloud's network: a network namespace owned by the cluster, holding a bridge with no
uplink, one tap per node, dnsmasq (DHCP with a fixed lease per node, DNS for the node names)
and haproxy (the API load balancer at the planned VIP, in front of the masters' API port).

Nothing in the namespace is routed anywhere: it has no interface but the bridge, its taps and
loopback, so a node can reach the other nodes and nothing else. Everything here is addressed by
the namespace, so two clusters with the same node CIDR do not collide.
"""

import hashlib
import ipaddress
import os
import subprocess
from pathlib import Path

from k8simg.errors import K8simgError
from k8simg.model.plan import parse_node_name

BRIDGE = "br0"
NETNS_DIR = Path("/run/netns")


class NetworkError(K8simgError):
    """A command on the cluster's network namespace failed, or a name is not one of its nodes."""
    pass


def namespace_name(cluster_name: str, cluster_path: Path) -> str:
    """``k8simg-<cluster>-<6 hex>``: the suffix is from the cluster directory's path, so two
    directories that hold clusters of the same name never share a namespace."""
    digest = hashlib.sha256(str(Path(cluster_path).resolve()).encode()).hexdigest()[:6]
    return f"k8simg-{cluster_name}-{digest}"


def tap_name(node_name: str, cluster_name: str) -> str:
    """The node's tap (interface names have at most 15 characters; the namespace is the
    cluster's own, so the role and index are enough)."""
    parsed = parse_node_name(cluster_name, node_name)
    if parsed is None:
        raise NetworkError(f"{node_name!r} is not a node of cluster {cluster_name}")
    role, index = parsed
    short = {"master": "m", "worker": "w", "etcd": "e"}
    return "tap-b" if role == "bastion" else f"tap-{short[role]}{index}"[:15]


def mac_address(node_name: str, cluster_path: Path) -> str:
    """A stable MAC in OpenStack's fa:16:3e prefix, from the node and its cluster."""
    h = hashlib.sha256(f"{Path(cluster_path).resolve()}/{node_name}".encode()).digest()
    return "fa:16:3e:" + ":".join(f"{b:02x}" for b in h[:3])


def run(argv: list[str], what: str) -> str:
    """Run the network command ``argv``; its output.

    :param what: what the error says failed.
    :raises NetworkError: when it exits non-zero (with its error output).
    """
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise NetworkError(f"{what}: {' '.join(argv)} failed: {r.stderr.strip() or r.stdout}")
    return r.stdout


class Namespace:
    """The cluster's network namespace and what lives in it."""

    def __init__(self, name: str):
        self.name = name

    @property
    def exists(self) -> bool:
        """Whether the namespace is there (created and not yet deleted)."""
        return (NETNS_DIR / self.name).exists()

    def exec(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def ip(self, *args: str, what: str = "network") -> str:
        """Run ``ip`` with ``args`` on the namespace; its output.

        :param what: what the error says failed.
        :raises NetworkError: when it fails.
        """
        return run(["ip", "-n", self.name, *args], what)

    def inode(self) -> int | None:
        """The namespace's inode (what ``/proc/<pid>/ns/net`` is for its processes), or None
        when it does not exist."""
        try:
            return os.stat(NETNS_DIR / self.name).st_ino
        except FileNotFoundError:
            return None

    def create(self, gateway: ipaddress.IPv4Interface,
               extra: list[ipaddress.IPv4Interface]) -> None:
        """The namespace, loopback up, the bridge with the gateway and ``extra`` addresses."""
        run(["ip", "netns", "add", self.name], f"namespace {self.name}")
        try:
            self.ip("link", "set", "lo", "up")
            self.ip("link", "add", BRIDGE, "type", "bridge")
            for addr in [gateway, *extra]:
                self.ip("addr", "add", str(addr), "dev", BRIDGE)
            self.ip("link", "set", BRIDGE, "up")
        except NetworkError:
            self.delete()
            raise

    def ensure_addresses(self, wanted: list[ipaddress.IPv4Interface]) -> list[str]:
        """Add any of ``wanted`` the bridge lacks; returns what was added."""
        have = self.ip("-o", "-4", "addr", "show", "dev", BRIDGE)
        added = []
        for addr in wanted:
            if f" {addr} " not in have:
                self.ip("addr", "add", str(addr), "dev", BRIDGE)
                added.append(str(addr))
        return added

    def taps(self) -> set[str]:
        """The names of the taps in the namespace (none when it does not exist)."""
        if not self.exists:
            return set()
        out = self.ip("-o", "link", "show")
        return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
                if line.split(":")[1].strip().startswith("tap-")}

    def ensure_tap(self, tap: str) -> bool:
        """A persistent tap on the bridge, up; returns whether it was created."""
        if tap in self.taps():
            return False
        self.ip("tuntap", "add", "dev", tap, "mode", "tap", what=f"tap {tap}")
        self.ip("link", "set", tap, "master", BRIDGE, "up", what=f"tap {tap}")
        return True

    def delete_tap(self, tap: str) -> None:
        """Remove the tap ``tap`` where it is there."""
        if tap in self.taps():
            self.ip("link", "delete", tap, what=f"tap {tap}")

    def pids(self) -> list[int]:
        """Every live process inside the namespace (whatever started it)."""
        ino = self.inode()
        if ino is None:
            return []
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                if os.stat(d / "ns" / "net").st_ino == ino:
                    state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state not in ("Z", "X"):
                        found.append(int(d.name))
            except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
                continue
        return found

    def delete(self) -> None:
        """Remove the namespace (its bridge and taps go with it)."""
        if self.exists:
            run(["ip", "netns", "delete", self.name], f"namespace {self.name}")


def dnsmasq_config(*, bridge_address: str, network: ipaddress.IPv4Network, domain: str,
                   hosts_file: Path, dns_file: Path, lease_file: Path, pid_file: Path,
                   log_file: Path) -> str:
    """DHCP for the planned nodes only (``static``: no address for an unknown MAC) and DNS
    for their names; nothing is forwarded anywhere."""
    return "\n".join([
        "# written by k8simg: the local cloud's DHCP and DNS",
        f"interface={BRIDGE}", "bind-interfaces", "except-interface=lo",
        f"listen-address={bridge_address}",
        f"dhcp-range={network.network_address},static,{network.netmask},12h",
        f"dhcp-option=option:router,{bridge_address}",
        f"dhcp-option=option:dns-server,{bridge_address}",
        f"dhcp-hostsfile={hosts_file}", f"addn-hosts={dns_file}",
        f"dhcp-leasefile={lease_file}",
        f"domain={domain}", "no-resolv", "no-hosts", "dhcp-authoritative",
        f"pid-file={pid_file}", f"log-facility={log_file}", "log-dhcp", "user=root", ""])


def haproxy_config(*, vip: str, port: int, masters: list[tuple[str, str]], pid_file: Path,
                   ) -> str:
    """A TCP load balancer at the API VIP, one server per master, health-checked."""
    servers = "\n".join(f"    server {name} {address}:{port} check inter 2s fall 2 rise 1"
                        for name, address in masters)
    return f"""\
# written by k8simg: the local cloud's API load balancer
global
    pidfile {pid_file}
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend kubernetes-api
    bind {vip}:{port}
    default_backend masters

backend masters
    balance roundrobin
{servers}
"""
