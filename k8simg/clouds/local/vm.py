"""One QEMU virtual machine the way Nova boots a k8simg node: a qcow2 overlay on the image, a
config drive (ISO labelled ``config-2``) carrying the node's Ignition config as user_data, a
second disk as the container-storage volume, and the serial console logged to a file.
"""

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from k8simg.errors import K8simgError
from k8simg.model.plan import gateway


class VmError(K8simgError):
    """A tool QEMU needs is missing, or a VM did not do what was waited for."""
    pass


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise VmError(f"{tool} not found: install the Debian package {package}")
    return path


def config_drive(dest: Path, name: str, user_data: bytes, instance_id: str | None = None,
                 network_data: dict | None = None) -> Path:
    """Write an OpenStack config drive ISO: openstack/latest/{meta_data,network_data}.json
    and user_data, labelled ``config-2``."""
    tool = _need("genisoimage", "genisoimage")
    root = dest.with_suffix(".d")
    shutil.rmtree(root, ignore_errors=True)  # left by an interrupted run
    latest = root / "openstack" / "latest"
    root.mkdir(mode=0o700)
    latest.mkdir(parents=True)
    meta = {"uuid": instance_id or str(uuid.uuid5(uuid.NAMESPACE_DNS, name)), "name": name,
            "hostname": name, "launch_index": 0, "availability_zone": "local"}
    (latest / "meta_data.json").write_text(json.dumps(meta))
    (latest / "network_data.json").write_text(json.dumps(network_data or {
        "links": [], "networks": [], "services": []}))
    (latest / "user_data").write_bytes(user_data)
    os.chmod(latest / "user_data", 0o600)
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        # The ISO holds the node's keys: created private, renamed into place when complete.
        tmp.touch(mode=0o600)
        subprocess.run([tool, "-quiet", "-o", str(tmp), "-V", "config-2", "-J", "-R",
                        str(root)], check=True, capture_output=True)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(root)
    return dest


def overlay(base: Path, dest: Path) -> Path:
    """A copy-on-write qcow2 on top of ``base``: the node writes there, never to the image."""
    tool = _need("qemu-img", "qemu-utils")
    subprocess.run([tool, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(Path(base).resolve()), str(dest)], check=True, capture_output=True)
    return dest


def blank_disk(dest: Path, size_gb: int) -> Path:
    """An empty qcow2 of ``size_gb`` GiB at ``dest`` (a node's volume); returns ``dest``.

    :raises VmError: when qemu-img is not installed.
    """
    tool = _need("qemu-img", "qemu-utils")
    subprocess.run([tool, "create", "-q", "-f", "qcow2", str(dest), f"{size_gb}G"],
                   check=True, capture_output=True)
    return dest


def kvm_usable() -> bool:
    """KVM where it boots a normal kernel; this is checked by the caller's environment."""
    return os.environ.get("K8SIMG_KVM") == "1" and os.access("/dev/kvm", os.R_OK | os.W_OK)


@dataclass
class Vm:
    """A running (or finished) VM; ``console`` is its serial log."""

    name: str
    process: subprocess.Popen
    console: Path

    def log(self) -> str:
        """The console's text so far (empty before QEMU has written any)."""
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, marker: str, timeout: float, poll: float = 1.0) -> str:
        """Wait until ``marker`` appears on the console; the console text up to now.

        :raises VmError: on timeout or if QEMU exits first, with the console's last lines.
        """
        deadline = time.monotonic() + timeout
        while True:
            # QEMU looked at before the console is read: what it wrote before exiting is read
            # too; and the console is read after the last wait, whatever ended it
            exited = self.process.poll() is not None
            text = self.log()
            if marker in text:
                return text
            if exited or time.monotonic() >= deadline:
                break
            time.sleep(poll)
        tail = "\n".join(self.log().splitlines()[-30:])
        state = "exited" if self.process.poll() is not None else f"no {marker!r} after {timeout:.0f} s"
        raise VmError(f"{self.name}: {state}; last console lines:\n{tail}")

    def wait_exit(self, timeout: float) -> int:
        """Wait for QEMU to exit; its exit status.

        :raises VmError: when it still runs after ``timeout`` seconds (it is left running).
        """
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise VmError(f"{self.name}: still running after {timeout:.0f} s") from None

    def stop(self) -> None:
        """Stop QEMU if it still runs (SIGTERM to its process group, SIGKILL after 10 s) and wait
        until it has exited."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait()


# The CPU model under software emulation (``local.cpu_model`` replaces it): QEMU's own default
# (Nova's too with cpu_mode "none") plus RDRAND. "max" offered everything TCG can emulate, and
# the guest paid for it: 5-level page tables (la57) on every page walk (turning la57 off gave
# back much of it), and, a guess not measured apart, glibc's SSE4.2/AVX string functions that
# TCG runs as helper calls. One node, 2 vCPUs, the same image (bench_bake.py --boot):
# power-on to etcd healthy 49.8 s with "max" (QEMU 74.8 CPU-s), 39.2 / 46.0 s with
# "max,la57=off" (55 / 70 CPU-s), 48.2 s with qemu64 plus x86-64-v2's SSE4 (66 CPU-s),
# 39.2 / 38.0 s with qemu64 (50 / 48 CPU-s). What k8simg's nodes run needs nothing past
# x86-64 v1 (a workload built for x86-64-v2 needs local.cpu_model, e.g. "max").
# With RDRAND (TCG emulates it from the host's random source), as cloud CPUs have it: on
# plain qemu64 the kernel's random pool was ready only 28-30 s into the boot, when
# systemd-random-seed credited the seed file, and whatever asked for random bytes before
# waited: mkfs.ext4 of the storage volume in Ignition's disks stage (its UUIDs) took 4.3 s of
# an idle guest (0.9 s for the whole stage with RDRAND; the pool ready at 0.08 s).
# Without SVM, which qemu64 offers: the guest's udev loaded kvm_amd, with kvm and ccp (1.4 MB
# of modules) on every boot, for a hypervisor no node runs under emulation. With the machine's
# PS/2, SMBus and VMware port gone too (MACHINE), udevd's CPU after the switch to the real root
# went from 3.0 / 3.8 s to 2.0 / 2.6 s (one node, 1 vCPU, alternated).
TCG_CPU = "qemu64,+rdrand,-svm"
MACHINE = "q35,i8042=off,smbus=off,vmport=off"


def qemu_args(name: str, disk: Path, console: Path, *, config_iso: Path | None = None,
              volume: Path | None = None, memory_mb: int = 2048, cpus: int = 2,
              kvm: bool | None = None, cpu_model: str | None = None,
              nic: tuple[str, str] | None = None,
              append_console: bool = False, reboot: bool = False) -> list[str]:
    """QEMU's command line for a node the way Nova boots one: virtio root disk, the volume as
    the second virtio disk, the config drive as a CD-ROM, the serial console into a file.

    :param nic: ``(tap, mac)`` for a virtio NIC on that tap; no network without it.
    :param cpu_model: QEMU's ``-cpu``; None: ``host`` under KVM, :data:`TCG_CPU` under TCG.
    :param append_console: keep earlier boots' console lines (a node's log across restarts).
    :param reboot: let the guest reboot (a node); tests that wait for a power-off do not.
    """
    qemu = _need("qemu-system-x86_64", "qemu-system-x86")
    kvm = kvm_usable() if kvm is None else kvm
    # -nodefaults: none of QEMU's default devices (VGA, parallel port, floppy, IDE CD-ROM, NIC,
    # monitor): a cloud VM has none of them, and probing them costs boot time under emulation.
    # Nor the machine's PS/2 controller (and with it the VMware port and mouse, and port 0x92)
    # or SMBus: with no display nothing types or points, and the guest's udev loaded and probed
    # their drivers on every boot (psmouse, serio_raw, i2c_i801, i2c_smbus). Leaner than a Nova
    # VM, which keeps them; QEMU 7.0 or later (the i8042 property).
    args = [qemu, "-name", name, "-machine", MACHINE, "-m", str(memory_mb), "-smp", str(cpus),
            "-nodefaults", "-display", "none",
            "-chardev", f"file,id=serial0,path={console},append={'on' if append_console else 'off'}",
            "-serial", "chardev:serial0",
            "-drive", f"file={disk},if=virtio,format=qcow2,cache=unsafe"]
    args += ["-accel", "kvm" if kvm else "tcg",
             "-cpu", cpu_model or ("host" if kvm else TCG_CPU)]
    if not reboot:
        args.append("-no-reboot")
    if nic is None:
        args += ["-nic", "none"]
    else:
        tap, mac = nic
        args += ["-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no",
                 "-device", f"virtio-net-pci,netdev=net0,mac={mac}"]
    if volume is not None:
        args += ["-drive", f"file={volume},if=virtio,format=qcow2,cache=unsafe"]
    if config_iso is not None:
        args += ["-drive", f"file={config_iso},media=cdrom,readonly=on"]
    return args


def boot(name: str, disk: Path, console: Path, *, config_iso: Path | None = None,
         volume: Path | None = None, memory_mb: int = 2048, cpus: int = 2,
         extra_args: list[str] | None = None) -> Vm:
    """Start QEMU in the foreground (software emulation unless KVM is known to work) with no
    network; the caller owns the process."""
    args = qemu_args(name, disk, console, config_iso=config_iso, volume=volume,
                     memory_mb=memory_mb, cpus=cpus) + (extra_args or [])
    with open(Path(console).with_suffix(".qemu.log"), "w") as err:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
    return Vm(name, proc, console)


def network_data(node, mac: str, cfg) -> dict:
    """OpenStack's network_data.json for the node's one port (as Neutron would give it)."""
    net = cfg.network.node_cidr
    return {"links": [{"id": "tap0", "type": "ethernet", "ethernet_mac_address": mac,
                       "mtu": 1500}],
            "networks": [{"id": "network0", "type": "ipv4", "link": "tap0",
                          "ip_address": str(node.address), "netmask": str(net.netmask),
                          "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0",
                                      "gateway": str(gateway(cfg))}],
                          "network_id": f"{cfg.name}-net"}],
            "services": [{"type": "dns", "address": str(gateway(cfg))}]}
