"""``cloud: local``: the cluster's nodes as QEMU virtual machines on this host.

Everything lives in ``<cluster>/local/`` and in the cluster's network namespace::

    local/processes.json          every process started (dnsmasq, haproxy, the metadata service,
                                  one QEMU per node) with its PID and start time; destroy stops
                                  exactly these
    local/network/                their config, PID files, leases and logs
    local/nodes/<node>/           root.qcow2 (overlay on the image), storage.qcow2 (the volume),
                                  config.iso (config drive), user_data (what the metadata
                                  service answers it), console.log, node.json

A node is booted like Nova boots one: its root disk a copy-on-write overlay on the baked image,
a config drive labelled ``config-2`` with ``openstack/latest/{meta_data,network_data}.json`` and
its Ignition config as ``user_data``, a second disk for container storage, one virtio NIC on a
tap in the namespace whose dnsmasq gives it its planned address. Its state comes from its serial
console: ``ready`` once the login prompt with its own hostname shows (Ignition ran and set it),
``failed`` when the console shows Ignition failing or the emergency shell, or QEMU exited.
"""

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from ipaddress import IPv4Interface
from pathlib import Path

from k8simg.clouds.base import (
    Cloud,
    CloudError,
    DestroyResult,
    ImageFacts,
    Infra,
    NodeStatus,
    Preflight,
    Reach,
    config_of,
)
from k8simg.clouds.console import Boot, console_text, verdict, wait_boots
from k8simg.clouds.local import metadata
from k8simg.clouds.local import vm as qemu
from k8simg.clouds.local.network import (
    BRIDGE,
    Namespace,
    mac_address,
    namespace_name,
    tap_name,
)
from k8simg.clouds.local.process import ProcessTable, lengthen_slice, terminate
from k8simg.clouds.local.services import Services, run_daemon
from k8simg.errors import K8simgError
from k8simg.fsutil import atomic_write
from k8simg.model.manifest import Manifest, ManifestError
from k8simg.model.plan import Node, api_vip, gateway

TOOLS = {"ip": "iproute2", "qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils",
         "genisoimage": "genisoimage", "dnsmasq": "dnsmasq-base", "haproxy": "haproxy"}

# The time slice each emulated node's QEMU asks the scheduler for (process.lengthen_slice;
# 0: the kernel's own, 1.4 ms on this 2-core machine). Software emulation runs translated code
# whose caches the next guest on the core throws away: with more guests than cores (the demo's
# five, the roll's four), longer turns left more of the CPU to the guests' own work (README,
# "Benchmarks": `bench_local.py --demo --slice-ms`). 100 ms is the longest the kernel grants.
QEMU_SLICE_MS = 100


class LocalCloud(Cloud):
    """The local cloud's verbs for one cluster."""

    where = "the local cloud"

    def __init__(self, cluster, cfg, **kw):
        super().__init__(cluster, cfg, **kw)
        # Absolute: the daemons (dnsmasq, haproxy, QEMU) chdir to / when they detach.
        self.root = cluster.path.resolve() / "local"
        self.netdir = self.root / "network"
        self.nodedir = self.root / "nodes"
        self.ns = Namespace(namespace_name(self.name, cluster.path))
        self.procs = ProcessTable(self.root / "processes.json", home=self.root,
                                  owner=lambda: f"{cluster.state.uid}@{self.root}"
                                  if cluster.state.uid else "")
        self.timeout = float(self.cfg.local.boot_timeout_s)
        self.image = self._image_path()
        self.services = Services(self.netdir, self.ns, self.procs, self.ledger, cfg)

    # ------------------------------------------------------------------ plumbing
    def _image_path(self) -> Path:
        p = Path(self.cfg.image).expanduser()
        return (p if p.is_absolute() else self.cluster.path / p).resolve()

    def manifest(self) -> Manifest | None:
        """The baked image's manifest (beside the qcow2), or None when it has none.

        :raises K8simgError: when there is one and it is not a manifest.
        """
        path = Manifest.path_for(self.image)
        if not path.exists():
            return None
        try:
            return Manifest.load(path)
        except ManifestError as e:
            raise K8simgError(str(e)) from None

    def image_facts(self) -> ImageFacts:
        """The qcow2's name and the first 12 hex of its sha256 name it (its name alone
        without a manifest)."""
        m = self.manifest()
        ref = f"{self.image.name}@sha256:{m.image_sha256[:12]}" if m else self.image.name
        return ImageFacts(ref, self.image.name, has_kubernetes=bool(m and m.has_kubernetes),
                          kubernetes_version=m.kubernetes_version if m else None,
                          etcd_version=m.etcd.get("version") if m else None,
                          etcd_source=m.etcd.get("source") if m else None,
                          etcd_join=bool(m and m.etcd.get("join")))

    def node_path(self, name: str) -> Path:
        """The node's directory: its disks, config drive, console log and record."""
        return self.nodedir / name

    def record(self, name: str) -> dict | None:
        """The node's record (``node.json``), or None when it has none here."""
        try:
            return json.loads((self.node_path(name) / "node.json").read_text())
        except FileNotFoundError:
            return None

    def _save_record(self, rec: dict) -> None:
        atomic_write(self.node_path(rec["name"]) / "node.json",
                     json.dumps(rec, indent=2) + "\n", 0o600)

    def console_path(self, name: str) -> Path:
        """The node's serial console log (it keeps the lines of earlier boots)."""
        return self.node_path(name) / "console.log"

    # ------------------------------------------------------------------ preflight
    def prepare(self, nodes: list[Node]) -> Preflight:
        """Tools, root, /dev/net/tun (and /dev/kvm when asked for), the image, the memory
        the new nodes take."""
        problems = []
        facts = None
        missing = [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if not shutil.which(tool)]
        if missing:
            problems.append(("local", "missing tools (Debian packages): " + ", ".join(missing)))
        if os.geteuid() != 0:
            problems.append(("local", "the local cloud needs root (network namespace, taps)"))
        if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
            problems.append(("local", "/dev/net/tun is not usable: no taps for the VMs"))
        if self.cfg.local.accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
            problems.append(("local.accel", "kvm asked for but /dev/kvm is not usable"))
        if not self.image.is_file():
            problems.append(("image", f"{self.image}: no such file (k8simg bake makes one; "
                                      "for the local cloud `image` is the qcow2's path)"))
        else:
            r = subprocess.run(["qemu-img", "info", "--output=json", str(self.image)],
                               capture_output=True, text=True)
            fmt = json.loads(r.stdout).get("format") if r.returncode == 0 else None
            if fmt != "qcow2":
                problems.append(("image", f"{self.image}: not a qcow2 image "
                                          f"({r.stderr.strip() or fmt})"))
            else:
                facts = self.image_facts()
        new = [n for n in nodes if self.record(n.name) is None]
        need = len(new) * self.cfg.local.memory_mb
        available = _mem_available_mb()
        if need and available is not None and need > available:
            problems.append(("local.memory_mb", f"{len(new)} new nodes x "
                             f"{self.cfg.local.memory_mb} MiB = {need} MiB, the host has "
                             f"{available} MiB available"))
        return Preflight(problems, facts)

    # ------------------------------------------------------------------ network
    def ensure_infrastructure(self, pre: Preflight, nodes: list[Node]) -> Infra:
        """The cluster's namespace with its bridge (the gateway, the API VIP and the metadata
        address on it), dnsmasq with a fixed lease per node, and the metadata service; the
        planned VIP is the API's address."""
        net = self.cfg.network.node_cidr
        gw = IPv4Interface(f"{gateway(self.cfg)}/{net.prefixlen}")
        vip = IPv4Interface(f"{api_vip(self.cfg)}/{net.prefixlen}")
        meta = IPv4Interface(f"{metadata.ADDRESS}/32")
        if not self.ns.exists:
            self.ledger.record("create", "network namespace", self.ns.name,
                               f"bridge {BRIDGE} {gw}, no uplink")
            if not self.dry:
                self.root.mkdir(mode=0o700, exist_ok=True)
                self.ns.create(gw, [vip, meta])
        elif not self.dry:
            for added in self.ns.ensure_addresses([gw, vip, meta]):
                self.ledger.record("update", "bridge address", added)
        self.ensure_dnsmasq(nodes)
        self.services.ensure_metadata(self.nodedir)
        return Infra()

    def ensure_dnsmasq(self, nodes: list[Node]) -> None:
        """A fixed lease and a DNS name for every node of ``nodes`` (and every node still
        recorded here: a node beyond the plan keeps its lease until it is deleted)."""
        entries = {n.name: (mac_address(n.name, self.cluster.path), str(n.address))
                   for n in nodes}
        for rec in self._records():
            entries.setdefault(rec["name"], (rec["mac"], rec["address"]))
        self.services.ensure_dnsmasq(entries)

    def ensure_api_members(self, masters: list[Node], infra: Infra) -> None:
        """haproxy in the namespace at the planned VIP, in front of exactly ``masters``."""
        self.services.ensure_haproxy(masters)

    # ------------------------------------------------------------------ nodes
    def ensure_node(self, node: Node, user_data: bytes | None, infra: Infra) -> str | None:
        """Disks, config drive and QEMU; a node whose boot failed is replaced, a stopped one
        started.

        :returns: a warning when a running node's config differs from ``user_data``.
        """
        rec = self.record(node.name)
        if rec is not None:
            state = self._state(rec)
            if state == "failed":
                self.ledger.record("replace", "server", node.name, "its boot failed")
                if self.dry:
                    return
                # a restore's snapshot, staged for this node's next first boot, stays
                staged = self.node_path(node.name) / metadata.RESTORE_FILE
                if staged.exists():
                    os.replace(staged, self.nodedir / f".{node.name}.{metadata.RESTORE_FILE}")
                self.delete_node(node.name)
            elif state == "stopped":
                self.ledger.record("start", "server", node.name, "was not running")
                if not self.dry:
                    self._start(rec)
                return None
            else:
                return None  # running: a stale config is the upgrade's (deploy says so)
        spec = self.cfg.local
        self.ledger.record("create", "server", node.name,
                           f"{node.role}, {spec.memory_mb} MiB, {spec.cpus} vCPU")
        if self.dry:
            return None
        mac = mac_address(node.name, self.cluster.path)
        hosts = self.netdir / "dnsmasq.hosts"
        if not hosts.exists() or f"{mac}," not in hosts.read_text():
            self.ensure_dnsmasq([*self.cluster.nodes(self.cfg), node])  # a replacement
        d = self.node_path(node.name)
        d.mkdir(parents=True, mode=0o700, exist_ok=True)
        aside = self.nodedir / f".{node.name}.{metadata.RESTORE_FILE}"
        if aside.exists():
            os.replace(aside, d / metadata.RESTORE_FILE)
        volume_gb = self.cfg.volume_gb(node.role)
        instance = str(uuid.uuid4())
        qemu.overlay(self.image, d / "root.qcow2")
        if volume_gb is not None:
            qemu.blank_disk(d / "storage.qcow2", volume_gb)
        atomic_write(d / "user_data", user_data, 0o600)  # the metadata service's answer
        qemu.config_drive(d / "config.iso", node.name, user_data, instance_id=instance,
                          network_data=qemu.network_data(node, mac, self.cfg))
        rec = {"name": node.name, "role": node.role, "index": node.index,
               "address": str(node.address), "mac": mac,
               "tap": tap_name(node.name, self.name), "uuid": instance,
               "image": str(self.image), "image_id": self.image_facts().ref, "generation": 1,
               "user_data_sha256": _sha(user_data), "config": config_of(user_data),
               "volume": volume_gb is not None,
               "created_at": time.time()}
        self._start(rec)
        return None

    def _start(self, rec: dict) -> None:
        d = self.node_path(rec["name"])
        console = d / "console.log"
        rec["console_offset"] = console.stat().st_size if console.exists() else 0
        rec["started_at"] = time.time()
        rec.pop("ready_at", None)
        rec.pop("failed", None)
        self._save_record(rec)
        self.ns.ensure_tap(rec["tap"])
        pid = d / "qemu.pid"
        pid.unlink(missing_ok=True)
        args = qemu.qemu_args(
            rec["name"], d / "root.qcow2", console, config_iso=d / "config.iso",
            volume=d / "storage.qcow2" if rec["volume"] else None,
            memory_mb=self.cfg.local.memory_mb, cpus=self.cfg.local.cpus,
            kvm=self.cfg.local.accel == "kvm", cpu_model=self.cfg.local.cpu_model,
            nic=(rec["tap"], rec["mac"]),
            append_console=True, reboot=True)
        run_daemon(self.ns.exec(args + ["-daemonize", "-pidfile", str(pid)]), f"QEMU {rec['name']}")
        started = self.procs.record(f"qemu:{rec['name']}", pid, "qemu-system-x86_64")
        if self.cfg.local.accel != "kvm" and QEMU_SLICE_MS:
            lengthen_slice(started.pid, QEMU_SLICE_MS)

    def _records(self) -> list[dict]:
        if not self.nodedir.is_dir():
            return []
        return [r for d in sorted(self.nodedir.iterdir()) if (r := self.record(d.name))]

    def console_since_boot(self, rec: dict) -> str:
        """The node's console from its current boot on (the file keeps earlier boots)."""
        return console_text(self.console_path(rec["name"]), rec.get("console_offset", 0))

    def _state(self, rec: dict) -> str:
        """booting, ready, failed or stopped, from QEMU and the console since this boot."""
        if rec.get("failed"):
            return "failed"
        proc = self.procs.get(f"qemu:{rec['name']}")
        alive = proc is not None and proc.alive
        if rec.get("ready_at"):
            return "ready" if alive else "stopped"
        state = verdict(self.console_since_boot(rec), rec["name"])
        if state == "failed":
            return "failed"
        if state == "ready":
            return "ready" if alive else "stopped"
        return "booting" if alive else "stopped"

    def wait_ready(self, nodes: list[Node]) -> None:
        """Wait for every planned node to show its login prompt; a node whose console shows a
        failed boot (or whose QEMU exits) is reported with its console lines, not waited for."""

        def look(name: str) -> Boot:
            rec = self.record(name)
            proc = self.procs.get(f"qemu:{name}")
            alive = proc is not None and proc.alive
            settled = ("failed" if rec.get("failed") else
                       "ready" if rec.get("ready_at") and alive else None)
            return Boot(self.console_since_boot(rec), running=alive, settled=settled,
                        stopped="QEMU exited")

        def settle(name: str, state: str, why: str) -> None:
            rec = self.record(name)
            if state == "ready":
                rec["ready_at"] = time.time()
                self.progress(f"{name}: up after {rec['ready_at'] - rec['started_at']:.0f} s")
            elif state == "failed":
                rec["failed"] = why
            self._save_record(rec)

        wait_boots([n.name for n in nodes], look, settle=settle, timeout=self.timeout,
                   where=lambda name: f"serial console {self.console_path(name)}",
                   progress=self.progress)

    def nodes(self) -> list[NodeStatus]:
        """Every node recorded here, its state from QEMU and its console since its last boot,
        sorted by name."""
        return [self.status(r["name"], r["role"], state=self._state(r), address=r["address"],
                            image=r["image_id"], generation=r.get("generation", 1),
                            console_file=self.console_path(r["name"]),
                            config=r.get("config", ""))
                for r in self._records()]

    def console_log(self, name: str) -> str:
        """:raises CloudError: when the cluster has no node ``name`` here."""
        if self.record(name) is None:
            raise CloudError(f"no node {name!r} of cluster {self.name} on {self.where}")
        return console_text(self.console_path(name))

    def delete_node(self, name: str) -> None:
        """Stop the node's QEMU, remove its tap and its directory (disks, console, record) and,
        while dnsmasq runs, its lease; a node that is not here is no error."""
        rec = self.record(name)
        self.procs.stop(f"qemu:{name}")
        if rec is not None and self.ns.exists:
            self.ns.delete_tap(rec["tap"])
        shutil.rmtree(self.node_path(name), ignore_errors=True)
        if self.procs.get("dnsmasq") is not None:
            self.ensure_dnsmasq(self.cluster.nodes(self.cfg))

    def restore_unsupported(self) -> str | None:
        return None

    def stage_restore(self, nodes: list[str], path: Path) -> str:
        """Beside each node's record, where the metadata service answers that node (and no
        other) with it, as Nova's answers a node its user_data. The service is started again,
        so one started by an older k8simg answers it too."""
        self.procs.stop("metadata")
        self.services.ensure_metadata(self.nodedir)
        for node in nodes:
            d = self.node_path(node)
            d.mkdir(parents=True, mode=0o700, exist_ok=True)
            dest = d / metadata.RESTORE_FILE
            shutil.copyfile(path, dest.with_suffix(".part"))
            dest.with_suffix(".part").chmod(0o600)
            os.replace(dest.with_suffix(".part"), dest)
        return f"http://{metadata.ADDRESS}:{metadata.PORT}{metadata.RESTORE_PATH}"

    def unstage_restore(self, nodes: list[str]) -> None:
        for node in nodes:
            (self.node_path(node) / metadata.RESTORE_FILE).unlink(missing_ok=True)
            (self.nodedir / f".{node}.{metadata.RESTORE_FILE}").unlink(missing_ok=True)

    def unreachable(self) -> str | None:
        return None  # the cluster's namespace is on this machine

    @contextlib.contextmanager
    def reach(self):
        """Commands run inside the cluster's namespace, where the nodes' addresses are.

        :raises CloudError: when the cluster has no network here (not deployed).
        """
        if not self.ns.exists:
            raise CloudError(f"cluster {self.name} has no local network (deploy it first)")
        yield Reach(wrap=self.ns.exec)

    # ------------------------------------------------------------------ destroy
    def destroy(self) -> DestroyResult:
        """Stop every recorded process, then anything else still in the namespace, delete the
        namespace (bridge and taps go with it) and the local cloud's files."""
        removed, left = [], []
        table = self.procs.all() if self.root.exists() else {}
        for key in sorted(table, key=lambda k: (not k.startswith("qemu:"), k)):
            kind, _, name = key.partition(":")
            self.ledger.record("delete", "server" if kind == "qemu" else "process", name or key)
            if self.dry:
                continue
            try:
                self.procs.stop(key)
                removed.append(key)
            except K8simgError as e:
                left.append(f"{key}: {e}")
        if self.ns.exists:
            self.ledger.record("delete", "network namespace", self.ns.name)
            if not self.dry:
                for pid in self.ns.pids():  # not ours by record (an interrupted start)
                    try:
                        terminate(pid, None)
                    except K8simgError as e:
                        left.append(f"process {pid} in {self.ns.name}: {e}")
                try:
                    self.ns.delete()
                    removed.append(f"namespace {self.ns.name}")
                except K8simgError as e:
                    left.append(str(e))
        if self.root.exists():
            for d in sorted(self.nodedir.iterdir()) if self.nodedir.is_dir() else []:
                self.ledger.record("delete", "disks", d.name)
            if not self.dry and not left:
                shutil.rmtree(self.root)
        return DestroyResult(removed, left)


def _sha(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


def _mem_available_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None
