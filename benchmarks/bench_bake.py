"""Bake and boot numbers: cold and warm bake time, image size, and the boot's phases from
power-on, read from the serial console with host timestamps (kernel, initramfs, Ignition's
stages, the switch to the real root, the units, the login prompt, etcd answering).

    python benchmarks/bench_bake.py [--skip-cold | --skip-warm]
    python benchmarks/bench_bake.py --boot IMAGE.qcow2   # only boot a given image (A/B runs)

Cold bakes use an empty diskimage-builder cache (debootstrap from the mirror); warm bakes
reuse ~/.cache/image-create. Boots run under QEMU's software emulation, as in the tests.
Inputs are the slow tier's: kubelet and kubeadm are labelled stand-ins, kubectl is real, and
the container images are labelled stand-ins pulled from a registry on loopback.
"""

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import report  # noqa: E402
from k8simg.model.images import ImageSpec  # noqa: E402
from k8simg.model.versions import DEFAULT_KUBERNETES_VERSION  # noqa: E402
from k8simg.ops.bake import BakeRequest, bake  # noqa: E402
from tests.ops.bake.test_boot import single_node_machine  # noqa: E402
from tests.ops.bake.testimage import BUSYBOX, publish_stand_ins, release_tree, serve  # noqa: E402
from tests.registry import registry  # noqa: E402
from tests.support import kubectl_binary  # noqa: E402


def timed_bake(out: Path, base_url: str, mirrors: dict, cache: str | None,
               pins: dict[str, str]) -> tuple[float, Path]:
    env = {"DIB_IMAGE_CACHE": cache} if cache else {}
    start = time.perf_counter()
    result = bake(BakeRequest(kubernetes_version=DEFAULT_KUBERNETES_VERSION, output_dir=out,
                              release_base_url=base_url, extra_env=env, tarball_sha512=pins,
                              registry_mirrors=mirrors,
                              extra_images=(ImageSpec("extra", BUSYBOX),)),
                  progress=lambda m: print(m, file=sys.stderr, flush=True))
    return time.perf_counter() - start, result.image


def timed_boot(image: Path, work: Path) -> dict:
    _, boot = single_node_machine(image, work)
    # systemd's own status lines are not always printed (they race the login prompt on the
    # serial console); the test report's etcd line always is: etcd answered over TLS by then
    # The boot's phases, in the order they happen, by lines the console always shows (systemd
    # shortens unit names to the console's width: prefixes): the kernel (firmware and GRUB
    # before it), the initramfs (udev, then Ignition's stages), the switch to the real root,
    # the units, the login prompt, etcd answering (the test report's etcd line).
    marks = {"kernel_started": "Linux version",
             "initramfs_started": "(Initramfs)!",
             "initramfs_udev_done": "Finished systemd-udev-trig",
             "ignition_fetch_done": "Finished ignition-fetch.service",
             "ignition_files_done": "Finished ignition-files.service",
             "switch_root": "Reached target initrd-switch-root.target",
             "storage_mounted": "Mounted var-lib-k8simg.mou",
             "containerd_started": "Started containerd.service",
             "login_prompt": " login:",
             "etcd_healthy": "is healthy: successfully committed proposal",
             "report_done": "K8SIMG-REPORT-END"}
    start = time.monotonic()
    vm = boot(work / "console.log")
    seen = {}
    try:
        while "report_done" not in seen and time.monotonic() - start < 1200:
            text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", vm.log())
            for key, marker in marks.items():
                if key not in seen and marker in text:
                    seen[key] = round(time.monotonic() - start, 1)
            time.sleep(0.5)
    finally:
        vm.stop()
    return seen


def boot_rows(image: Path, work: Path) -> list[dict]:
    """One boot of ``image``: a report row per mark seen."""
    seen = timed_boot(image, work)
    return [{"what": f"power-on to {key.replace('_', ' ')}", "value": f"{seen[key]} s"}
            for key in sorted(seen, key=seen.get)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--skip-warm", action="store_true")
    ap.add_argument("--boot", type=Path, metavar="IMAGE",
                    help="bake nothing: boot this image (one baked by the test suite) only")
    args = ap.parse_args()
    rows = []
    if args.boot:
        with tempfile.TemporaryDirectory() as d:
            rows += boot_rows(args.boot, Path(d))
        report("boot", rows)
        return
    with tempfile.TemporaryDirectory() as d, registry(Path(d) / "registry") as reg:
        work = Path(d)
        pins = release_tree(work / "release", kubectl_binary(work), work / "layouts")
        tree = work / "release"
        mirrors = publish_stand_ins(reg, work / "layouts")
        server, thread = serve(tree)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            if not args.skip_cold:
                secs, image = timed_bake(work / "cold", url, mirrors, str(work / "dib-cache"),
                                         pins)
                rows.append({"what": "bake, cold (empty DIB cache)", "value": f"{secs:.0f} s"})
            if not args.skip_warm:
                secs, image = timed_bake(work / "warm", url, mirrors, None, pins)
                rows.append({"what": "bake, warm", "value": f"{secs:.0f} s"})
            rows.append({"what": "image size (qcow2)",
                         "value": f"{image.stat().st_size / (1 << 20):.0f} MiB"})
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
        (work / "boot").mkdir()
        rows += boot_rows(image, work / "boot")
    report("bake", rows)


if __name__ == "__main__":
    main()
