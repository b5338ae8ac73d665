"""Where one node's boot spends its emulated CPU: a sampling profile taken from outside the
guest. Every few tens of milliseconds while the node boots (the boot benchmark's node and
probes) QEMU is stopped, asked for the vCPU's registers and let go on (stopped, the vCPU has
left its translated code, so RIP is exact; read while it runs, TCG's RIP is wherever it last
wrote it back, which favours helper calls and MMIO); each sample is classed by the CPU's mode
(firmware and GRUB before long mode, the kernel's decompressor, the kernel, user space, halted)
and by the boot's phase (from the console's marks); kernel samples are named from the guest's
own /proc/kallsyms, which a unit writes to the root disk at the end and the benchmark reads
back from the node's overlay.

    python benchmarks/bench_boot_profile.py [IMAGE.qcow2] [--cpus 1] [--qemu-arg=ARG ...]

Without IMAGE it profiles the test suite's last bake (pytest's cache, as `pytest
tests/ops/bake` leaves it), and says so and does nothing where there is none (run.py).

What it found first: GRUB's 32-bit `linux` path moving the kernel's 66 MB buffer byte by byte
(2 s a boot; the image boots through linux16 since), and the PS/2, SMBus and SVM drivers udev
loaded at every boot. Each sample stops the machine for a few milliseconds (its clock too):
the profiled boot takes about a tenth longer than the boot benchmark's. Samples land where
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
from benchmarks.common import report  # noqa: E402
from tests.ops.bake.conftest import debugfs_cat, root_partition  # noqa: E402
from tests.ops.bake.test_boot import add_script_unit  # noqa: E402

CACHE = Path(__file__).resolve().parent.parent / ".pytest_cache/d/baked-image"
KALLSYMS, MODULES = "/var/tmp/k8simg-kallsyms", "/var/tmp/k8simg-modules"
# The kernel's text symbols and the modules loaded, written to the root disk before the
# benchmark's analysis powers the node off (it waits for every start job, this one's too).
DUMP = f"""#!/bin/bash
grep -E ' [tTW] ' /proc/kallsyms > {KALLSYMS}
cut -d' ' -f1,2 /proc/modules > {MODULES}
sync
"""
PHASES = [("firmware and GRUB", None), ("kernel to /init", "kernel_started"),
          ("initramfs", "initramfs_started"), ("real root to etcd healthy", "switch_root"),
          ("after etcd healthy", "etcd_healthy")]


class Sampler(threading.Thread):
    """Samples the vCPU's registers over QMP until QEMU goes away."""

    def __init__(self, sock: Path, interval: float):
        super().__init__(daemon=True)
        self.sock, self.interval = sock, interval
        self.samples: list[tuple[float, str, int, int]] = []  # (t, mode, rip, cpl)
        self.started = time.monotonic()

    def run(self):
        s = socket.socket(socket.AF_UNIX)
        for _ in range(600):
            try:
                s.connect(str(self.sock))
                break
            except OSError:
                time.sleep(0.05)
        else:
            return
        try:
            with s, s.makefile("rw") as f:
                f.readline()
                self._ask(f, {"execute": "qmp_capabilities"})
                while True:
                    # stopped, the vCPU has left its translated code and its registers are
                    # exact (read while it runs, TCG's RIP is wherever it last wrote it back)
                    self._ask(f, {"execute": "stop"})
                    regs = self._ask(f, {"execute": "human-monitor-command",
                                         "arguments": {"command-line": "info registers"}})
                    self._ask(f, {"execute": "cont"})
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
                return answer

    def _add(self, regs: str) -> None:
        rip = re.search(r"\bRIP=([0-9a-f]+)", regs) or re.search(r"\bEIP=([0-9a-f]+)", regs)
        cs = re.search(r"\bCS =([0-9a-f]+)", regs)
        efer = re.search(r"\bEFER=([0-9a-f]+)", regs)
        if not (rip and cs):
            return
        halted = re.search(r"\bHLT=1\b", regs) is not None
        long_mode = efer is not None and int(efer.group(1), 16) & 0x400 != 0
        mode = "halted" if halted else "long" if long_mode else "legacy"
        self.samples.append((time.monotonic() - self.started, mode, int(rip.group(1), 16),
                             int(cs.group(1), 16) & 3))


def classify(mode: str, rip: int, cpl: int) -> str:
    if mode == "halted":
        return "halted"
    if mode == "legacy":
        return "firmware, GRUB (real and 32-bit mode)"
    if cpl == 3:
        return "user space"
    if rip >= 0xffff800000000000:
        return "kernel"
    return "kernel decompressor"


def profile(image: Path, work: Path, cpus: int, qemu_args: tuple[str, ...],
            interval: float) -> list[dict]:
    sock = work / "qmp.sock"
    sampler = Sampler(sock, interval)

    def units(doc, _ip):
        add_script_unit(doc, "k8simg-bench-kallsyms", DUMP, "After=k8simg-bench-probe.service\n")
        return doc

    sampler.start()
    seen, _said, _host = timed_boot(image, work, cpus, extra_units=units, qemu_args=(
        *qemu_args, "-qmp", f"unix:{sock},server=on,wait=off"))
    sampler.join(timeout=10)
    with root_partition(work / "root.qcow2", work) as part:
        text = (debugfs_cat(part, KALLSYMS) or b"").decode()
        modules = [ln.split() for ln in (debugfs_cat(part, MODULES) or b"").decode().splitlines()]
    syms = sorted((int(f[0], 16), f[2]) for f in (ln.split() for ln in text.splitlines())
                  if len(f) >= 3 and len(f[0]) == 16)
    if not syms:
        raise SystemExit(f"the node wrote no {KALLSYMS}: did its boot finish? "
                         f"(marks seen: {sorted(seen)})")
    addrs = [a for a, _ in syms]
    samples = sampler.samples
    rows = [{"what": "samples", "value": f"{len(samples)} over {samples[-1][0]:.0f} s "
                                         f"({cpus} vCPU, the first vCPU sampled)"}]
    kinds = collections.Counter(classify(m, r, c) for _, m, r, c in samples)
    for kind, n in kinds.most_common():
        rows.append({"what": f"all: {kind}", "value": f"{100 * n / len(samples):.1f} %"})
    bounds = [(name, seen.get(mark, 0.0) if mark else 0.0) for name, mark in PHASES]
    for i, (name, start) in enumerate(bounds):
        end = bounds[i + 1][1] if i + 1 < len(bounds) else float("inf")
        here = [classify(m, r, c) for t, m, r, c in samples if start <= t < end]
        if here:
            split = collections.Counter(here)
            rows.append({"what": f"phase: {name} ({len(here)} samples)",
                         "value": ", ".join(f"{k} {100 * n / len(here):.0f} %"
                                            for k, n in split.most_common())})
    named = collections.Counter()
    for _, m, r, c in samples:
        if classify(m, r, c) == "kernel":
            i = bisect.bisect_right(addrs, r) - 1
            named[syms[i][1] if i >= 0 else "?"] += 1
    for name, n in named.most_common(20):
        rows.append({"what": f"kernel: {name}", "value": f"{100 * n / len(samples):.1f} %"})
    size = sum(int(m[1]) for m in modules if len(m) == 2 and m[1].isdigit())
    rows.append({"what": f"guest: {len(modules)} modules loaded ({size >> 10} KiB)",
                 "value": " ".join(sorted(m[0] for m in modules))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image", type=Path, nargs="?",
                    help="the image (default: the test suite's last bake)")
    ap.add_argument("--cpus", type=int, default=1, help="the node's vCPUs (1)")
    ap.add_argument("--interval", type=float, default=0.03, metavar="S",
                    help="pause between samples (0.03 s; each sample takes a few ms more)")
    ap.add_argument("--qemu-arg", action="append", default=[], metavar="ARG",
                    help="one more of QEMU's arguments, after the local cloud's (repeat)")
    args = ap.parse_args()
    if args.image is None:
        baked = sorted(CACHE.glob("*/k8simg-*.qcow2"), key=lambda p: p.stat().st_mtime)
        baked = [p for p in baked if not p.parent.name.endswith("-rebake")]
        if not baked:
            print(f"bench_boot_profile: no image given and none in {CACHE}: nothing profiled "
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
