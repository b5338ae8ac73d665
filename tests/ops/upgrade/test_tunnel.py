"""etcd reached through the bastion: a real OpenSSH server plays the bastion.

A network namespace stands for the cluster's private network: the three etcd members run in it
(on the addresses their rendered configs give them), and so does Debian's sshd, configured as the
image configures the bastion (user ``k8simg`` with the operator's key, keys only, the cluster
PKI's host key). The only way in from the host is a veth to sshd's address, the "floating IP".
The upgrade's etcd client (``k8simg.ops.etcd.etcd_client`` over ``OpenStackCloud.reach``:
asyncssh, the pinned host key, local forwards) then rolls the members under writes through it,
exactly as ``k8simg upgrade`` does on OpenStack. (The members run from local-cloud configs,
which need no cloud credential; the cloud is OpenStack's, through the ``--cloud`` override.)
"""

import os
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from k8simg.clouds.openstack.tunnel import Tunnel, TunnelError
from k8simg.model.plan import client_url, peer_url
from k8simg.ops.deploy import Deployment
from k8simg.ops.etcd import etcd_client
from k8simg.pki import cluster_pki
from tests.conftest import write_cluster
from tests.ops.upgrade.test_etcd_roll import (
    NET,
    Members,
    Writer,
    check_after_roll,
    roll_under_writes,
)
from tests.support import etcd_available, processes, wait_until

pytestmark = pytest.mark.skipif(
    not etcd_available() or not shutil.which("sshd", path="/usr/sbin") or os.geteuid() != 0,
    reason="needs root, etcd and Debian's openssh-server")

OUTSIDE, BASTION = "10.254.77.1", "10.254.77.2"  # the veth: host side, bastion's "floating IP"


def openssh_key(key) -> tuple[bytes, str]:
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public


class PrivateNetwork:
    """A namespace reachable from the host only at BASTION (a veth), with a passwd that has
    the bastion's ``k8simg`` user (``ip netns exec`` binds /etc/netns/<ns>/* over /etc)."""

    def __init__(self, tmp: Path):
        self.name = f"k8simg-t-tun-{os.getpid()}"
        self.etc = Path("/etc/netns") / self.name
        self.veth = f"k8t{os.getpid() % 100000}"
        self.home: Path | None = None  # the bastion user's; sshd reads its keys as that user

    def ip(self, *args):
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def __enter__(self):
        self.ip("netns", "add", self.name)
        try:
            self.ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0",
                    "netns", self.name)
            self.ip("addr", "add", f"{OUTSIDE}/30", "dev", self.veth)
            self.ip("link", "set", self.veth, "up")
            for cmd in (["addr", "add", f"{BASTION}/30", "dev", "eth0"],
                        ["link", "set", "eth0", "up"], ["link", "set", "lo", "up"]):
                self.ip("-n", self.name, *cmd)
            self.etc.mkdir(parents=True)
            self.home = Path(tempfile.mkdtemp(prefix="k8simg-t-bastion-"))
            self.home.chmod(0o755)
            (self.etc / "passwd").write_text(
                Path("/etc/passwd").read_text()
                + f"k8simg:x:64977:64977:k8simg bastion user:{self.home}:/bin/sh\n")
            shadow = Path("/etc/shadow").read_text() + "k8simg:*:20000:0:99999:7:::\n"
            (self.etc / "shadow").write_text(shadow)
            (self.etc / "shadow").chmod(0o640)
        except BaseException:
            self.__exit__()
            raise
        return self

    def exec(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def __exit__(self, *_exc):
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        shutil.rmtree(self.etc, ignore_errors=True)
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)


def start_sshd(net: PrivateNetwork, start, tmp: Path, host_key_file: Path, authorized: str):
    """Debian's sshd as the bastion: the image's sshd_config.d settings, port 22."""
    keys = net.home / "authorized_keys"
    keys.write_text(authorized + "\n")
    keys.chmod(0o644)
    conf = tmp / "sshd_config"
    conf.write_text(
        f"ListenAddress {BASTION}:22\nHostKey {host_key_file}\nAuthorizedKeysFile {keys}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\n"
        "X11Forwarding no\nUsePAM no\nStrictModes no\nPidFile none\nLogLevel VERBOSE\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    log = open(tmp / "sshd.log", "w")
    proc = start(net.exec(["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)]),
                 stdout=log, stderr=subprocess.STDOUT)

    def listening():
        with socket.create_connection((BASTION, 22), timeout=1):
            return True

    wait_until(listening, 20, f"sshd on {BASTION}:22 ({(tmp / 'sshd.log').read_text()[-300:]})")
    return proc


@pytest.fixture
def bastion_network(tmp_path):
    """(cluster dir, members, the operator's key file, the namespace, start) with three etcd
    members and the bastion's sshd running in the private network."""
    cd = write_cluster(tmp_path / "roll", topology="ha",
                       workers={"count": 0, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": True, "flavor": "b"}, network=NET, name="roll")
    operator, operator_pub = openssh_key(ed25519.Ed25519PrivateKey.generate())
    key_file = tmp_path / "operator_ed25519"
    key_file.write_bytes(operator)
    key_file.chmod(0o600)
    with PrivateNetwork(tmp_path) as net, processes(kill=True) as start:
        def start_in_ns(argv, **kw):
            return start(net.exec(argv), **kw)

        members = Members(cd, start_in_ns, tmp_path)  # makes the PKI, bastion host key too
        pki = cluster_pki(cd, cd.load())
        start_sshd(net, start, tmp_path, pki.bastion_host_key_path, operator_pub)
        first = [(members.nodes[f"roll-master-{i}"].name,
                  peer_url(members.nodes[f"roll-master-{i}"])) for i in range(3)]
        for i in range(3):
            members.start(members.nodes[f"roll-master-{i}"], first, joining=False)
        cd.state.set_addresses(bastion=BASTION)
        yield cd, members, key_file, net


def test_upgrade_reaches_etcd_only_through_the_bastion(bastion_network):
    cd, members, key_file, _net = bastion_network
    n = members.nodes
    # From the host, the members' addresses lead nowhere: the host's own loopback has none.
    with pytest.raises(OSError):
        socket.create_connection(("127.77.0.10", 2379), timeout=1).close()

    cloud = Deployment.for_cluster(cd, "test-cloud", ssh_keys=(key_file,)).cloud
    assert type(cloud).__name__ == "OpenStackCloud"
    with etcd_client(cloud, "apiserver-etcd-client") as etcd:
        eps = [client_url(n[f"roll-master-{i}"]) for i in range(3)]
        wait_until(lambda: sum(e.healthy for e in etcd.health(eps)) == 3, 60,
                   "three healthy members through the tunnel")
        # Results name the members' own URLs, not the tunnel's local ends.
        assert sorted(e.endpoint for e in etcd.health(eps)) == sorted(eps)
        assert sorted(m.name for m in etcd.members(eps)) == [f"roll-master-{i}" for i in range(3)]

        # The writer goes through the same tunnel (its own forwards of the members' ports).
        order = [client_url(n[f"roll-master-{i}"]) for i in (3, 4, 5, 2, 1, 0)]
        local_ends = [etcd.route(u) for u in order]
        assert all(u.startswith("https://127.0.0.1:") for u in local_ends), local_ends
        writer = Writer(cd.pki_dir, local_ends)
        events, seconds = roll_under_writes(members, etcd, writer)
        print(f"through the bastion: roll {seconds:.1f} s, "
              f"{len(writer.acked)} writes, longest gap {writer.longest_gap * 1000:.0f} ms")
        check_after_roll(cd, members, etcd, writer)
        assert [d["node"] for s, d in events if s == "removed"] == [
            f"roll-master-{i}" for i in range(3)]
    # Closed with the block: no thread, no listener left.
    assert "k8simg-tunnel" not in {t.name for t in threading.enumerate()}
    for url in local_ends:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), 1).close()


def test_a_bastion_that_is_not_the_clusters_is_refused(bastion_network, tmp_path):
    cd, _members, key_file, _net = bastion_network
    pki = cluster_pki(cd, cd.load())
    _, other = openssh_key(ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(TunnelError, match="host key is not the one in the cluster's PKI"):
        Tunnel(BASTION, host_key=other, client_keys=[key_file], connect_timeout=10).open()
    stranger, _ = openssh_key(ed25519.Ed25519PrivateKey.generate())
    stranger_file = tmp_path / "stranger"
    stranger_file.write_bytes(stranger)
    stranger_file.chmod(0o600)
    with pytest.raises(TunnelError, match="refused user k8simg"):
        Tunnel(BASTION, host_key=pki.bastion_host_public_key(), client_keys=[stranger_file],
               connect_timeout=10).open()
    with pytest.raises(TunnelError, match=f"cannot reach the bastion {OUTSIDE}:22"):
        Tunnel(OUTSIDE, host_key=pki.bastion_host_public_key(), client_keys=[key_file],
               connect_timeout=5).open()
    # A cluster whose state has no bastion address yet says so instead of trying.
    cd.state.forget_addresses()
    cloud = Deployment.for_cluster(cd, "test-cloud", ssh_keys=(key_file,)).cloud
    with pytest.raises(Exception, match="no bastion address in its state"), \
            etcd_client(cloud):
        pass
