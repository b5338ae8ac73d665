"""Where one node's boot spends its emulated CPU: a sampling profile taken from outside the
guest. Every few tens of milliseconds while the node boots (the boot benchmark's node and
probes) QEMU is stopped, asked for the vCPU's registers and let go on (stopped, the vCPU has
left its translated code, so RIP is exact; read while it runs, TCG's RIP is wherever it last
wrote it back, which favours helper calls); each sample from power-on to etcd healthy is
classed by the CPU's mode (firmware, GRUB and the kernel's setup before long mode, the kernel's
decompressor, the kernel, user space, halted) and by the boot's phase (from the console's
marks); kernel samples are named from the guest's own /proc/kallsyms, which a unit writes to
the root disk at the end and the benchmark reads back from the node's overlay.

    python benchmarks/bench_boot_profile.py [IMAGE.qcow2] [--cpus 1] [--interval S]
                                            [--qemu-arg=ARG ...]

Without IMAGE it profiles the test suite's last bake (pytest's cache, as `pytest
tests/ops/bake` leaves it), and says so and does nothing where there is none (run.py).

What it found first: GRUB's 32-bit `linux` path moving the kernel's 66 MB buffer byte by byte
(2 s a boot; the image boots through linux16 since), and the PS/2, SMBus and SVM drivers udev
loaded at every boot. Each sample stops the machine (its clock too) and QEMU drains and flushes
its disks then, so I/O in flight looks faster to the guest: the profiled boot takes about a
tenth longer than the boot benchmark's. Samples land where
translated blocks end, and interrupts are taken there too: read small shares with care and
confirm a finding with an A/B of the boot benchmark.
"""

import argparse
import bisect
import collections
import json
import re
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_bake import timed_boot  # noqa: E402
from benchmarks.common import BAKED, baked_test_images, report  # noqa: E402
from tests.ops.bake.conftest import debugfs_cat, root_partition  # noqa: E402
from tests.ops.bake.test_boot import add_script_unit  # noqa: E402

KALLSYMS, MODULES = "/var/tmp/k8simg-kallsyms", "/var/tmp/k8simg-modules"
# The kernel's text symbols and the modules loaded, written to the root disk before the
# benchmark's analysis powers the node off (it waits for every start job, this one's too).
DUMP = f"""#!/bin/bash
grep -E ' [tTW] ' /proc/kallsyms > {KALLSYMS}
cat /proc/modules > {MODULES}
sync
"""
# The boot's phases, from the console's marks (bench_bake.MARKS); the profile's totals are
# power-on to etcd healthy, the benchmark's own analysis after it left out.
PHASES = [("firmware", None), ("GRUB, the kernel's setup and decompressor", "grub_booting"),
          ("kernel to /init", "kernel_started"), ("initramfs", "initramfs_started"),
          ("real root to etcd healthy", "switch_root")]
END = "etcd_healthy"


class Sampler(threading.Thread):
    """Samples the vCPU's registers over QMP until QEMU goes away (or ``done`` is set)."""

    def __init__(self, sock: Path, interval: float):
        super().__init__(daemon=True)
        self.sock, self.interval = sock, interval
        self.samples: list[tuple[float, str, int, int]] = []  # (monotonic, mode, rip, cpl)
        self.failure: str | None = None
        self.done = threading.Event()

    def run(self):
        s = socket.socket(socket.AF_UNIX)
        while True:  # QEMU makes the socket once the node's disks and config are written
            try:
                s.connect(str(self.sock))
                break
            except OSError:
                if self.done.wait(0.05):
                    s.close()
                    return
        try:
            with s, s.makefile("rw") as f:
                f.readline()
                self._ask(f, {"execute": "qmp_capabilities"})
                while not self.done.is_set():
                    # stopped, the vCPU has left its translated code and its registers are
                    # exact (read while it runs, TCG's RIP is wherever it last wrote it back)
                    self._ask(f, {"execute": "stop"})
                    regs = self._ask(f, {"execute": "human-monitor-command",
                                         "arguments": {"command-line": "info registers"}})
                    went_on = self._ask(f, {"execute": "cont"})
                    if "error" in went_on:
                        self.failure = f"QEMU did not go on after a sample: {went_on['error']}"
                        return
                    self._add(regs.get("return", ""))
                    time.sleep(self.interval)
        except (OSError, ValueError):
            return  # QEMU is gone: the node powered off

    @staticmethod
    def _ask(f, command: dict) -> dict:
        f.write(json.dumps(command) + "\n")
        f.flush()
        while True:
            line = f.readline()
            if not line:
                raise OSError("QMP closed")
            answer = json.loads(line)
            if "return" in answer or "error" in answer:
                return answer  # (events, STOP and RESUME among them, are passed over)

    def _add(self, regs: str) -> None:
        rip = re.search(r"\bRIP=([0-9a-f]+)", regs) or re.search(r"\bEIP=([0-9a-f]+)", regs)
        cpl = re.search(r"\bCPL=([0-3])\b", regs)
        efer = re.search(r"\bEFER=([0-9a-f]+)", regs)
        if not (rip and cpl):
            return
        halted = re.search(r"\bHLT=1\b", regs) is not None
        long_mode = efer is not None and int(efer.group(1), 16) & 0x400 != 0
        mode = "halted" if halted else "long" if long_mode else "legacy"
        self.samples.append((time.monotonic(), mode, int(rip.group(1), 16), int(cpl.group(1))))


def classify(mode: str, rip: int, cpl: int) -> str:
    if mode == "halted":
        return "halted"
    if mode == "legacy":
        return "firmware, GRUB, the kernel's setup (real and 32-bit mode)"
    if cpl == 3:
        return "user space"
    if rip >= 0xffff800000000000:
        return "kernel"
    return "the kernel's decompressor and first steps (64-bit, low addresses)"


class Symbols:
    """Kernel addresses to names: the core kernel's text up to _etext, each module's within
    its own span (a name is not lent to an address past its code)."""

    def __init__(self, kallsyms: str, modules: str):
        entries = []
        for ln in kallsyms.splitlines():
            f = ln.split()
            if len(f) >= 3 and len(f[0]) == 16:
                entries.append((int(f[0], 16), f[2] + (f" {f[3]}" if len(f) > 3 else "")))
        entries.sort()
        self.addrs = [a for a, _ in entries]
        self.names = [n for _, n in entries]
        etext = [a for a, n in entries if n == "_etext"]
        self.spans = [(min(self.addrs, default=0), etext[0] if etext else 0)]
        for ln in modules.splitlines():  # name size refs deps state address
            f = ln.split()
            if len(f) >= 6 and f[5].startswith("0x"):
                base = int(f[5], 16)
                self.spans.append((base, base + int(f[1])))
        self.modules = [ln.split()[0] for ln in modules.splitlines() if ln.split()]
        self.usable = bool(entries) and entries[-1][0] != 0  # all zero: addresses hidden

    def name(self, rip: int) -> str:
        if not any(lo <= rip < hi for lo, hi in self.spans):
            return "(outside the kernel's text and its modules')"
        i = bisect.bisect_right(self.addrs, rip) - 1
        return self.names[i] if i >= 0 else "?"


def profile(image: Path, work: Path, cpus: int, qemu_args: tuple[str, ...],
            interval: float) -> list[dict]:
    sock = work / "qmp.sock"
    sampler = Sampler(sock, interval)
    power_on: list[float] = []

    def units(doc, _ip):
        add_script_unit(doc, "k8simg-bench-kallsyms", DUMP, "After=k8simg-bench-probe.service\n")
        return doc

    sampler.start()
    try:
        seen, _said, _host = timed_boot(image, work, cpus, extra_units=units,
                                        qemu_args=(*qemu_args, "-qmp",
                                                   f"unix:{sock},server=on,wait=off"),
                                        on_power_on=power_on.append)
    finally:
        sampler.done.set()
        sampler.join(timeout=10)
    if sampler.failure:
        raise SystemExit(f"bench_boot_profile: {sampler.failure}")
    if END not in seen or not power_on:
        raise SystemExit(f"bench_boot_profile: the node's etcd never answered (marks seen: "
                         f"{sorted(seen)}); its console is gone with the work folder: "
                         "bench_bake.py --boot IMAGE --keep-console FILE shows it")
    samples = [(t - power_on[0], *rest) for t, *rest in sampler.samples
               if t - power_on[0] < seen[END]]
    if not samples:
        raise SystemExit("bench_boot_profile: no register samples: QEMU's monitor never "
                         f"answered on {sock}")
    with root_partition(work / "root.qcow2", work) as part:
        syms = Symbols((debugfs_cat(part, KALLSYMS) or b"").decode(),
                       (debugfs_cat(part, MODULES) or b"").decode())
    if not syms.usable:
        raise SystemExit(f"bench_boot_profile: the node wrote no usable {KALLSYMS}")
    n = len(samples)
    rows = [{"what": "samples, power-on to etcd healthy",
             "value": f"{n} in {seen[END]:.0f} s ({cpus} vCPU{'s' if cpus > 1 else ''}; "
                      "the first one's registers)"}]
    kinds = collections.Counter(classify(m, r, c) for _, m, r, c in samples)
    for kind, k in kinds.most_common():
        rows.append({"what": f"all: {kind}", "value": f"{100 * k / n:.1f} %"})
    bounds = [(name, seen[mark] if mark else 0.0) for name, mark in PHASES
              if mark is None or mark in seen]  # a phase whose mark never showed: merged
    for i, (name, start) in enumerate(bounds):
        end = bounds[i + 1][1] if i + 1 < len(bounds) else seen[END]
        here = collections.Counter(classify(m, r, c) for t, m, r, c in samples
                                   if start <= t < end)
        if here:
            total = sum(here.values())
            rows.append({"what": f"phase: {name}, {start:.1f}-{end:.1f} s ({total} samples)",
                         "value": ", ".join(f"{k} {100 * c / total:.0f} %"
                                            for k, c in here.most_common())})
    named = collections.Counter(syms.name(r) for _, m, r, c in samples
                                if classify(m, r, c) == "kernel")
    for name, k in named.most_common(20):
        rows.append({"what": f"kernel: {name}", "value": f"{100 * k / n:.1f} %"})
    rows.append({"what": f"guest: {len(syms.modules)} modules loaded",
                 "value": " ".join(sorted(syms.modules))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image", type=Path, nargs="?",
                    help="the image (default: the test suite's last bake)")
    ap.add_argument("--cpus", type=int, default=1, help="the node's vCPUs (1)")
    ap.add_argument("--interval", type=float, default=0.03, metavar="S",
                    help="pause between samples (0.03 s; each sample takes some more)")
    ap.add_argument("--qemu-arg", action="append", default=[], metavar="ARG",
                    help="one more of QEMU's arguments, after the local cloud's (repeat)")
    args = ap.parse_args()
    if args.image is None:
        baked = [p for p in baked_test_images() if not p.parent.name.endswith("-rebake")]
        if not baked:
            print(f"bench_boot_profile: no image given and none in {BAKED}: nothing profiled "
                  "(pytest tests/ops/bake bakes one)", file=sys.stderr)
            return
        args.image = baked[-1]
        print(f"bench_boot_profile: profiling {args.image}", file=sys.stderr)
    if not args.image.is_file():
        ap.error(f"{args.image}: no such image")
    with tempfile.TemporaryDirectory() as d:
        rows = profile(args.image, Path(d), args.cpus, tuple(args.qemu_arg), args.interval)
    report("boot_profile", rows)


if __name__ == "__main__":
    main()
