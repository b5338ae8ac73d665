"""Bake and boot numbers (#18's targets): the bake without a Kubernetes payload, cold and warm,
with its phases and the qcow2's size; the bake of the test image's full set from an artifacts
folder, and the payload's share of it; one node's boot from power-on, read from its serial
console with host timestamps (kernel, initramfs, Ignition's stages, the switch to the real
root, the units, the login prompt, etcd answering over TLS), and systemd's own account of it.

    python benchmarks/bench_bake.py [--skip-cold] [--skip-warm] [--skip-payload]
    python benchmarks/bench_bake.py --boot IMAGE.qcow2   # only boot a given image (A/B runs)
    python benchmarks/bench_bake.py --boot IMAGE.qcow2 --cpus 1 --idle 120   # and at rest
    python benchmarks/bench_bake.py --boot IMAGE.qcow2 --qemu-arg=-cpu --qemu-arg=qemu64

Cold bakes use an empty diskimage-builder cache (debootstrap from the mirror); warm bakes
reuse ~/.cache/image-create. Boots run under QEMU's software emulation, 2 vCPUs, as in the
tests. The payload is the slow tier's: kubelet and kubeadm are labelled stand-ins, kubectl is
real, the container images are labelled stand-ins, etcd is the real etcd image's, gathered
over HTTP and from a registry on loopback into an artifacts folder, then baked from it.
"""

import argparse
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import report  # noqa: E402
from k8simg.clouds.local.process import cpu_seconds  # noqa: E402
from k8simg.model.versions import DEFAULT_KUBERNETES_VERSION  # noqa: E402
from k8simg.ops.bake import BakeRequest, BakeResult, bake  # noqa: E402
from tests.ops.bake.test_boot import (  # noqa: E402
    ETCD_HEALTH,
    add_script,
    add_script_unit,
    single_node_machine,
)
from tests.ops.bake.testimage import gather_test_artifacts  # noqa: E402
from tests.support import kubectl_binary  # noqa: E402


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bake_rows(label: str, result: BakeResult) -> list[dict]:
    rows = [{"what": f"bake, {label}", "value": f"{result.seconds:.0f} s"},
            {"what": f"bake, {label}: qcow2",
             "value": f"{result.image.stat().st_size / (1 << 20):.0f} MiB"}]
    rows += [{"what": f"bake, {label}: {p.name}", "value": f"{p.seconds} s"}
             for p in result.phases]
    return rows


# The probe: etcd's health over TLS, polled from the moment its unit is up, said in the
# kernel's log (the console prints it whatever the serial getty does to the tty; one line, as
# the kernel rate-limits what userspace writes there), then systemd's own account on the
# serial port once the boot is finished, then power off.
PROBE = r"""#!/bin/bash
pki=/etc/kubernetes/pki
until $ETCD_HEALTH --dial-timeout=2s >/dev/null 2>&1; do sleep 0.2; done
echo "K8SIMG-BENCH etcd healthy" > /dev/kmsg
# What the boot had used at that moment (the summary below comes once the whole boot is done,
# after systemd-analyze's D-Bus queries, which PID 1 answers): PID 1, the whole guest, and the
# last PID handed out (threads' and this probe's own etcdctl runs included)
read -r -a st < /proc/1/stat
read -r _ user nice system _ _ irq softirq _ < /proc/stat
awk -v u=${st[13]} -v k=${st[14]} -v b=$((user + nice + system + irq + softirq)) \
    -v n="$(cat /proc/sys/kernel/ns_last_pid)" \
    'BEGIN { printf "at etcd healthy: pid 1 %.2f CPU-s (user %.2f, kernel %.2f), ", \
                    (u + k) / 100, u / 100, k / 100
             printf "guest busy %.1f s, last PID %d\n", b / 100, n }' \
    > /run/k8simg-bench-at-etcd
exec systemd-run --no-block --unit k8simg-bench-analyze /bin/bash -c '
    systemctl is-system-running --wait >/dev/null
    exec > /dev/ttyS0 2>&1  # opened after the serial getty took the tty: it stays ours
    { cat /run/k8simg-bench-at-etcd
      systemd-analyze; systemd-analyze critical-chain k8simg-etcd.service
      systemd-analyze blame | head -15; k8simg-bench-cpu; } | sed "s/^/K8SIMG-BENCH /"
    k8simg-bench-idle $IDLE
    echo "K8SIMG-BENCH END"
    systemctl poweroff'
"""


# Where the boot's CPU went (what bounds five 1-vCPU nodes on two cores, the demo): the
# kernel's count of busy time since power-on; the units still running that used the most, by
# their cgroups' own count (systemd's CPUUsageNSec of a unit whose cgroup is gone is not to be
# trusted: it said 17 s for an `rm -f`); and those that stopped, by the line systemd writes then
# ("Consumed ... CPU time", only for a unit that used more than 1 s), the initramfs's among
# them. On a busy host the guest's counts grow with the host's stalls (the same image: 102 to
# 140 s busy): compare within one session.
CPU = r"""#!/bin/bash
read -r _ user nice system idle iowait irq softirq steal _ < /proc/stat
read -r up _ < /proc/uptime
awk -v b=$((user + nice + system + irq + softirq)) -v i=$((idle + iowait)) -v up="$up" \
    -v n="$(nproc)" -v u=$((user + nice)) -v k=$((system + irq + softirq)) \
    'BEGIN { printf "cpu: busy %.1f s (user %.1f, kernel %.1f), idle %.1f s, in %.1f s x %d vCPUs\n",
                    b / 100, u / 100, k / 100, i / 100, up, n }'
for f in /sys/fs/cgroup/init.scope/cpu.stat /sys/fs/cgroup/*.slice/*/cpu.stat; do
    u=${f%/cpu.stat}
    awk -v u="${u##*/}" '$1 == "usage_usec" { printf "%.2f %s\n", $2 / 1e6, u }' "$f"
done | sort -rn | head -12 | sed 's/^/cpu: running /'
# PID 1 itself (the initramfs's systemd, then the node's, one process) apart from its children
# in init.scope (generators), and how often it reloaded its units
read -r -a st < /proc/1/stat
awk -v u=${st[13]} -v k=${st[14]} -v r="$(journalctl -b -o cat --no-pager SYSLOG_IDENTIFIER=systemd \
        | grep -cx 'Reloading[.]')" \
    'BEGIN { printf "cpu: pid 1 itself %.2f s (user %.2f, kernel %.2f), %d reloads\n",
                    (u + k) / 100, u / 100, k / 100, r }'
# Ignition's stages in the initramfs, by its journal lines (one process per stage; the later
# ones' lines begin with a level, "INFO     : "): each
# stage's span, and each of its steps ("op(N): [started]" to "[finished]") of 0.3 s or more
journalctl -b -o short-monotonic --no-pager SYSLOG_IDENTIFIER=ignition \
    | sed -nE 's/^\[ *([0-9.]+)\] [^ ]+ ignition\[([0-9]+)\]: ([A-Z]+ *: )?(.*)/\1\x1f\2\x1f\4/p' \
    | awk -F'\037' '
        !($2 in first) { first[$2] = $1; order[++n] = $2 }
        { last[$2] = $1 }
        $3 ~ /^Stage: / { stage[$2] = substr($3, 8) }
        match($3, /op\([0-9a-f]+\): \[started\]/) {
            op = $2 " " substr($3, RSTART, RLENGTH - 11); began[op] = $1
            what[op] = substr($3, RSTART + RLENGTH); sub(/^ +/, "", what[op]) }
        match($3, /op\([0-9a-f]+\): \[finished\]/) {
            op = $2 " " substr($3, RSTART, RLENGTH - 12)
            if (op in began && $1 - began[op] >= 0.3)
                printf "ignition: %s %s %.1f s: %s\n", stage[$2], substr(op, length($2) + 2),
                       $1 - began[op], substr(what[op], 1, 60) }
        END { for (i = 1; i <= n; i++) printf "ignition: stage %s %.1f-%.1f s\n",
                  stage[order[i]], first[order[i]], last[order[i]] }'
consumed='^\[ *([0-9.]+)\] [^ ]+ systemd\[[0-9]+\]: (.+): Consumed (([0-9]+)min )?([0-9.]+)(m?s) CPU'
journalctl -b -o short-monotonic --no-pager SYSLOG_IDENTIFIER=systemd \
    | sed -nE "s/$consumed.*/\\1|\\2|\\4|\\5|\\6/p" \
    | awk -F'|' '{ t = $3 * 60 + ($5 == "ms" ? $4 / 1000 : $4)
                   printf "%.2f %s (stopped at %.0f s)\n", t, $2, $1 }' \
    | sort -rn | head -12 | sed 's/^/cpu: stopped /'
"""


# The node at rest once its boot is finished (what each idle node of a cluster costs the host,
# under emulation): the guest's own busy time and its units' over the given seconds, in 1/100 s,
# between two marks the host reads QEMU's CPU time at ("busy": the whole guest's).
IDLE = r"""#!/bin/bash
[ "${1:-0}" -gt 0 ] || exit 0
usage() {
    read -r _ user nice system _ _ irq softirq _ < /proc/stat
    echo "$((user + nice + system + irq + softirq)) busy"
    for f in /sys/fs/cgroup/init.scope/cpu.stat /sys/fs/cgroup/*.slice/*/cpu.stat; do
        u=${f%/cpu.stat}
        awk -v u="${u##*/}" '$1 == "usage_usec" { print int($2 / 1e4), u }' "$f"
    done
}
usage > /run/k8simg-bench-idle.0
echo "K8SIMG-BENCH IDLE-START"
sleep "$1"
echo "K8SIMG-BENCH IDLE-END"
usage | awk 'NR == FNR { was[$2] = $1; next }
    { d = ($1 - was[$2]) / 100; if (d >= 0.1 || $2 == "busy") printf "%.1f %s\n", d, $2 }' \
    /run/k8simg-bench-idle.0 - | sort -rn | head -10 | sed "s/^/K8SIMG-BENCH idle $1 s: /"
"""


def probe_units(doc: dict, etcd_ip: str, idle: int = 0, mask: tuple[str, ...] = ()) -> dict:
    """The probes; ``mask``: units masked through the config (Ignition's ``mask``), for an A/B
    of what one costs the boot."""
    units = doc["systemd"]["units"]
    for name in mask:
        given = [u for u in units if u["name"] == name]
        if given:
            given[0]["mask"] = True
        else:
            units.append({"name": name, "mask": True})
    add_script_unit(doc, "k8simg-bench-probe", PROBE.replace("$ETCD_HEALTH", ETCD_HEALTH)
                    .replace("$ETCD_IP", shlex.quote(etcd_ip)).replace("$IDLE", str(idle)),
                    "After=k8simg-etcd.service\n")
    add_script(doc, "k8simg-bench-cpu", CPU)
    add_script(doc, "k8simg-bench-idle", IDLE)
    return doc


# The boot's phases, in the order they happen, by lines the console always shows (systemd
# shortens unit names to the console's width: prefixes).
MARKS = {"grub_booting": "Booting `",  # GRUB runs the menu entry (the firmware is done)
         "initrd_loading": "Loading initial ramdisk",  # the kernel read, the initramfs next
         "kernel_started": "Linux version",
         "initramfs_started": "(Initramfs)!",
         "initramfs_udev_done": "Finished systemd-udev-trig",
         "ignition_fetch_done": "Finished ignition-fetch.service",
         "ignition_files_done": "Finished ignition-files.service",
         "switch_root": "Reached target initrd-switch-root.target",
         "storage_mounted": "Mounted var-lib-k8simg.mou",
         "containerd_started": "Started containerd.service",
         "login_prompt": " login:",
         "etcd_healthy": "K8SIMG-BENCH etcd healthy",
         "idle_started": "K8SIMG-BENCH IDLE-START",
         "idle_ended": "K8SIMG-BENCH IDLE-END",
         "boot_finished": "K8SIMG-BENCH END"}


def timed_boot(image: Path, work: Path, cpus: int = 2, idle: int = 0,
               mask: tuple[str, ...] = (), qemu_args: tuple[str, ...] = (),
               extra_units: Callable[[dict, str], dict] | None = None,
               on_power_on: Callable[[float], object] | None = None
               ) -> tuple[dict, list[str], dict]:
    """Boot once: when each mark showed on the console, what the guest said, and QEMU's own CPU
    time on the host at power-on's end and over the idle window.

    :param extra_units: ``(config, etcd address) -> config``, more units after the probes'.
    :param on_power_on: given the monotonic time the marks count from, as QEMU starts.
    """
    def units(doc, ip):
        doc = probe_units(doc, ip, idle, mask)
        return extra_units(doc, ip) if extra_units else doc

    _, boot = single_node_machine(image, work, cpus=cpus, qemu_args=qemu_args, units=units)
    start = time.monotonic()
    if on_power_on:
        on_power_on(start)
    vm = boot(work / "console.log")
    seen: dict[str, float] = {}
    host: dict[str, float] = {}
    try:
        while "boot_finished" not in seen and time.monotonic() - start < 900 + idle:
            text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", vm.log())
            for key, marker in MARKS.items():
                if key not in seen and marker in text:
                    seen[key] = round(time.monotonic() - start, 1)
                    if key in ("etcd_healthy", "idle_started", "idle_ended"):
                        used = cpu_seconds(vm.process.pid)
                        if used is not None:
                            host[key] = used
            time.sleep(0.2)
    finally:
        vm.stop()
    said = [m.group(1).rstrip() for m in re.finditer(
        r"K8SIMG-BENCH (?!etcd healthy|END|IDLE-)(.*)", vm.log())]
    return seen, said, host


def boot_rows(image: Path, work: Path, cpus: int = 2, idle: int = 0,
              mask: tuple[str, ...] = (), qemu_args: tuple[str, ...] = ()) -> list[dict]:
    """One boot of ``image``: a row per mark seen, QEMU's CPU on the host, then systemd's
    account of the boot."""
    seen, said, host = timed_boot(image, work, cpus, idle, mask, qemu_args)
    rows = [{"what": f"power-on to {key.replace('_', ' ')}", "value": f"{seen[key]} s"}
            for key in sorted(seen, key=seen.get)]
    if "etcd_healthy" in host:
        rows.append({"what": "host: QEMU's CPU, power-on to etcd healthy",
                     "value": f"{host['etcd_healthy']:.1f} s ({cpus} vCPUs)"})
    if "idle_ended" in host and "idle_started" in host:
        used = host["idle_ended"] - host["idle_started"]
        window = seen["idle_ended"] - seen["idle_started"]
        rows.append({"what": f"host: QEMU's CPU, the node idle for {window:.0f} s",
                     "value": f"{used:.1f} s ({60 * used / window:.1f} s a minute)"})
    return rows + [{"what": "guest: systemd-analyze", "value": line} for line in said]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--skip-warm", action="store_true")
    ap.add_argument("--skip-payload", action="store_true",
                    help="no artifacts-folder bake, and so no boot")
    ap.add_argument("--boot", type=Path, metavar="IMAGE",
                    help="bake nothing: boot this image (one baked by the test suite) only")
    ap.add_argument("--cpus", type=int, default=2, help="the booted node's vCPUs (2)")
    ap.add_argument("--idle", type=int, default=0, metavar="S",
                    help="keep the node up S seconds after its boot and report what it used")
    ap.add_argument("--mask", action="append", default=[], metavar="UNIT",
                    help="mask this unit through the node's config (an A/B of its cost)")
    ap.add_argument("--qemu-arg", action="append", default=[], metavar="ARG",
                    help="one more of QEMU's arguments, after the local cloud's (repeat; a "
                         "later -cpu replaces the local cloud's: --qemu-arg=-cpu "
                         "--qemu-arg=max)")
    ap.add_argument("--keep-console", type=Path, metavar="FILE",
                    help="copy the booted node's serial console here (with --boot)")
    args = ap.parse_args()
    if args.keep_console and not args.boot:
        ap.error("--keep-console goes with --boot")
    rows: list[dict] = []
    if args.boot:
        with tempfile.TemporaryDirectory() as d:
            try:
                rows += boot_rows(args.boot, Path(d), args.cpus, args.idle, tuple(args.mask),
                                  tuple(args.qemu_arg))
            finally:
                if args.keep_console and (Path(d) / "console.log").exists():
                    try:
                        shutil.copyfile(Path(d) / "console.log", args.keep_console)
                    except OSError as e:
                        progress(f"the console was not kept: {e}")
        report("boot", rows)
        return
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        bare = {"kubernetes_version": DEFAULT_KUBERNETES_VERSION, "without_kubernetes": True}
        warm = None
        if not args.skip_cold:
            rows += bake_rows("cold, no Kubernetes payload", bake(BakeRequest(
                **bare, output_dir=work / "cold",
                extra_env={"DIB_IMAGE_CACHE": str(work / "dib-cache")}), progress))
        if not args.skip_warm:
            warm = bake(BakeRequest(**bare, output_dir=work / "warm"), progress)
            rows += bake_rows("warm, no Kubernetes payload", warm)
        if not args.skip_payload:
            request, _ = gather_test_artifacts(work / "gather", kubectl_binary(work), progress)
            full = bake(BakeRequest(**request, output_dir=work / "full"), progress)
            rows += bake_rows("warm, from an artifacts folder (the test image's set)", full)
            if warm:
                grown = full.image.stat().st_size - warm.image.stat().st_size
                rows.append({"what": "bake: the payload's share (time, qcow2)",
                             "value": f"{full.seconds - warm.seconds:.0f} s, "
                                      f"{grown / (1 << 20):.0f} MiB"})
            (work / "boot").mkdir()
            rows += boot_rows(full.image, work / "boot")
    report("bake", rows)


if __name__ == "__main__":
    main()
