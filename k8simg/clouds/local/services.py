"""The local cloud's network services in the cluster's namespace: dnsmasq (a fixed lease and a
DNS name per node), haproxy (the API load balancer at the planned VIP) and the metadata service
(:mod:`k8simg.clouds.local.metadata`, as Nova's at 169.254.169.254), each restarted or reloaded
only when its configuration changes, each recorded in the process table."""

import os
import subprocess
import sys
from pathlib import Path

from k8simg.clouds.base import Ledger
from k8simg.clouds.local.network import Namespace, dnsmasq_config, haproxy_config
from k8simg.clouds.local.process import ProcessTable
from k8simg.errors import K8simgError
from k8simg.fsutil import atomic_write
from k8simg.model.config import ClusterConfig
from k8simg.model.plan import Node, api_vip, gateway


def run_daemon(argv: list[str], what: str) -> None:
    """Run ``argv``, a daemon that detaches.

    :raises K8simgError: naming ``what`` with its own words when it does not start.
    """
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode != 0:
        raise K8simgError(f"{what} did not start: {(r.stderr or r.stdout).strip()}")


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` (0600, atomically) unless ``path`` holds it already; whether it wrote."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    atomic_write(path, text, 0o600)
    return True


class Services:
    """dnsmasq and haproxy of one cluster.

    :param netdir: where their configuration, PID files, leases and logs live.
    """

    def __init__(self, netdir: Path, ns: Namespace, procs: ProcessTable, ledger: Ledger,
                 cfg: ClusterConfig):
        self.netdir, self.ns, self.procs, self.ledger, self.cfg = netdir, ns, procs, ledger, cfg

    def ensure_dnsmasq(self, entries: dict[str, tuple[str, str]]) -> None:
        """dnsmasq running with exactly ``entries`` (node name -> (MAC, address)): restarted
        when its configuration changed, sent SIGHUP when only the hosts did."""
        name = self.cfg.name
        files = {k: self.netdir / f"dnsmasq.{k}" for k in ("conf", "hosts", "dns", "leases",
                                                             "pid", "log")}
        conf = dnsmasq_config(
            bridge_address=str(gateway(self.cfg)), network=self.cfg.network.node_cidr,
            domain=f"{name}.local", hosts_file=files["hosts"], dns_file=files["dns"],
            lease_file=files["leases"], pid_file=files["pid"], log_file=files["log"])
        items = sorted(entries.items())
        hosts = "".join(f"{mac},{addr},{node}\n" for node, (mac, addr) in items)
        dns = "".join(f"{addr} {node} {node}.{name}.local\n" for node, (_mac, addr) in items)
        running = (rec := self.procs.get("dnsmasq")) is not None and rec.alive
        if self.ledger.dry_run:
            if not running:
                self.ledger.record("create", "dhcp server", "dnsmasq", f"{len(entries)} leases")
            return
        self.netdir.mkdir(parents=True, mode=0o700, exist_ok=True)
        conf_changed = write_if_changed(files["conf"], conf)
        hosts_changed = write_if_changed(files["hosts"], hosts)
        hosts_changed |= write_if_changed(files["dns"], dns)
        if running and conf_changed:
            self.procs.stop("dnsmasq")
            running = False
        if not running:
            self.ledger.record("create", "dhcp server", "dnsmasq", f"{len(entries)} leases")
            files["pid"].unlink(missing_ok=True)
            run_daemon(self.ns.exec(["dnsmasq", f"--conf-file={files['conf']}"]), "dnsmasq")
            self.procs.record("dnsmasq", files["pid"], "dnsmasq")
        elif hosts_changed:
            self.ledger.record("update", "dhcp server", "dnsmasq", "leases")
            os.kill(self.procs.get("dnsmasq").pid, 1)  # SIGHUP re-reads the hosts file

    def ensure_haproxy(self, masters: list[Node]) -> None:
        """haproxy at the planned VIP in front of exactly ``masters`` (restarted on change)."""
        cfg_path, pid = self.netdir / "haproxy.cfg", self.netdir / "haproxy.pid"
        vip, port = api_vip(self.cfg), self.cfg.api.port
        text = haproxy_config(vip=str(vip), port=port,
                              masters=[(m.name, str(m.address)) for m in masters], pid_file=pid)
        rec = self.procs.get("haproxy")
        running = rec is not None and rec.alive
        try:
            current = cfg_path.read_text()
        except FileNotFoundError:
            current = None
        if running and current == text:
            return
        names = ", ".join(m.name for m in masters)
        self.ledger.record("update" if running else "create", "load balancer",
                           f"{self.cfg.name}-api", f"{vip}:{port} -> {names}")
        if self.ledger.dry_run:
            return
        atomic_write(cfg_path, text, 0o600)
        self.procs.stop("haproxy")
        pid.unlink(missing_ok=True)
        run_daemon(self.ns.exec(["haproxy", "-D", "-q", "-f", str(cfg_path)]), "haproxy")
        self.procs.record("haproxy", pid, "haproxy")

    def ensure_metadata(self, nodes_dir: Path) -> None:
        """The metadata service at 169.254.169.254 (it answers from the node records in
        ``nodes_dir``, so a new node needs no restart)."""
        from k8simg.clouds.local import metadata

        rec = self.procs.get("metadata")
        if rec is not None and rec.alive:
            return
        self.ledger.record("create", "metadata service", f"{metadata.ADDRESS}:{metadata.PORT}",
                           "as Nova's: each node's user_data")
        if self.ledger.dry_run:
            return
        pid, log = self.netdir / "metadata.pid", self.netdir / "metadata.log"
        pid.unlink(missing_ok=True)
        run_daemon(self.ns.exec([sys.executable, "-m", "k8simg.clouds.local.metadata",
                                 str(nodes_dir), str(pid), str(log)]), "the metadata service")
        self.procs.record("metadata", pid, "metadata")
