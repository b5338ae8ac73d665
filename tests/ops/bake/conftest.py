"""The slow tier's baked images (see testimage.py for what is in them): baked in the
background from the start of the session, handed to the tests that need them as fixtures.
"""

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.ops.bake.testimage import bake_test_image, image_paths, inputs_digest


class Bakes(threading.Thread):
    """The slow tier's images, baked in the background from the start of the session: the
    image, then (when a test wants one) the same inputs baked again, as a re-bake for an
    upgrade is. One after the other: at the same time they would race for diskimage-builder's
    debootstrap cache. Each is kept in pytest's cache under the digest of its inputs.

    The tests that need neither image run meanwhile (tests/conftest.py orders them first).
    """

    def __init__(self, root: Path, kubectl: Path, rebake: bool):
        super().__init__(name="k8simg-test-bakes", daemon=True)
        digest = inputs_digest()
        self.dirs = {"baked": root / digest}
        if rebake:
            self.dirs["rebaked"] = root / f"{digest}-rebake"
        for old in root.iterdir():
            # Images of other inputs are not needed again, unless another session (a
            # developer's second pytest) may still be baking or booting one.
            if not old.name.startswith(digest) and time.time() - old.stat().st_mtime > 6 * 3600:
                shutil.rmtree(old, ignore_errors=True)
        self.kubectl = kubectl
        self.work = Path(tempfile.mkdtemp(prefix="k8simg-test-bakes."))
        self.done = {k: threading.Event() for k in self.dirs}
        self.results: dict[str, tuple] = {}
        self.errors: dict[str, BaseException] = {}

    def run(self):
        # One session bakes into the cache at a time (a second one waits, then reuses).
        with open(self.dirs["baked"].parent / ".bake.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._run()

    def _run(self):
        for key, cache in self.dirs.items():
            try:
                image, manifest = image_paths(cache)
                if image.exists() and manifest.exists():
                    self.results[key] = (image, manifest, None)
                    continue
                cache.mkdir(parents=True, exist_ok=True)
                with open(cache.parent / f"{cache.name}.progress.log", "w") as log:
                    self.results[key] = bake_test_image(
                        cache, self.kubectl, self.work / key,
                        progress=lambda m, log=log: print(m, file=log, flush=True))
            except BaseException as e:  # handed to the tests that need the image
                self.errors[key] = e
                for k in self.dirs:
                    self.done[k].set()
                return
            finally:
                self.done[key].set()

    def wait(self, key: str):
        self.done[key].wait()
        if key in self.errors or key not in self.results:
            err = self.errors.get(key) or next(iter(self.errors.values()), None)
            pytest.fail(f"baking the test image failed: {err!r}")
        return self.results[key]


_bakes: list[Bakes] = []


def start_bakes(config, rebake: bool) -> None:
    """Called once the session's tests are collected (tests/conftest.py)."""
    if os.geteuid() != 0 or _bakes or config.option.collectonly or not hasattr(config, "cache"):
        return
    from tests.support import kubectl_binary

    root = Path(config.cache.mkdir("baked-image"))
    bakes = Bakes(root, kubectl_binary(Path(config.cache.mkdir("kubectl-v1.35"))), rebake)
    _bakes.append(bakes)
    bakes.start()


def stop_bakes() -> None:
    """At the end of the session: a bake still running (the session was cut short) is
    waited for, so its build and registry processes never outlive the tests."""
    for bakes in _bakes:
        bakes.join()
        shutil.rmtree(bakes.work, ignore_errors=True)
    _bakes.clear()


def _started(key: str):
    if os.geteuid() != 0:
        pytest.skip("baking needs root (loop devices, chroot)")
    if not _bakes or key not in _bakes[0].dirs:
        pytest.fail("the test images' bake was not started (tests/conftest.py starts it for "
                    "the tests that use baked_image / rebaked_image)")
    return _bakes[0].wait(key)


@pytest.fixture(scope="session")
def baked_image():
    """(image, manifest, bake seconds or None when reused from the cache)."""
    return _started("baked")


@pytest.fixture(scope="module")
def baked_root(baked_image, tmp_path_factory):
    """The baked image's root filesystem as an ext4 file, cut out once for the five tests
    that read it with debugfs (read-only); removed after the module's tests."""
    with root_partition(baked_image[0], tmp_path_factory.mktemp("baked-root")) as part:
        yield part


@pytest.fixture(scope="session")
def rebaked_image(baked_image):
    """The same inputs baked a second time: a new image file (new sha256). (image, manifest)."""
    image, manifest, _ = _started("rebaked")
    return image, manifest


@contextlib.contextmanager
def root_partition(image: Path, tmp: Path):
    """The image's root filesystem as an ext4 file, for debugfs (nothing mounted): the disk's
    first MiB read to find the partition (the bake's disk has an MBR table, all in the first
    sector; a GPT's backup header at the disk's end would be missed), then qemu-img converts
    just that partition. (Converting the whole disk to raw and cutting the partition out with
    dd took 45 s; this takes 3.) Removed afterwards."""
    head, part = tmp / "disk-head", tmp / "root.ext4"
    try:
        subprocess.run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", f"if={image}",
                        f"of={head}", "bs=1M", "count=1"], check=True, capture_output=True)
        out = subprocess.run(["partx", "-g", "-b", "-o", "START,SECTORS", "--nr", "1",
                              str(head)], check=True, capture_output=True, text=True)
        start, sectors = (int(n) * 512 for n in out.stdout.split())
        source = str(image).replace(",", ",,")  # --image-opts' own escape
        subprocess.run(["qemu-img", "convert", "-O", "raw", "--image-opts",
                        f"driver=raw,offset={start},size={sectors},file.driver=qcow2,"
                        f"file.file.filename={source}", str(part)], check=True,
                       capture_output=True)
        yield part
    finally:
        head.unlink(missing_ok=True)
        part.unlink(missing_ok=True)


def debugfs_cat(part: Path, path: str) -> bytes | None:
    """The file ``path`` of the ext4 file ``part``; None when it is not there."""
    r = subprocess.run(["debugfs", "-R", f"cat {path}", str(part)], capture_output=True)
    return r.stdout if r.returncode == 0 and b"File not found" not in r.stderr else None


def debugfs_ls(part: Path, path: str) -> list[str]:
    """The names in the directory ``path`` of the ext4 file ``part``."""
    r = subprocess.run(["debugfs", "-R", f"ls -p {path}", str(part)], capture_output=True,
                       text=True, check=True)
    # -p: "/inode/mode/uid/gid/name/size/" per entry
    names = [ln.split("/")[5] for ln in r.stdout.splitlines() if ln.startswith("/")]
    return [n for n in names if n not in (".", "..")]


def root_files(part: Path, paths: list[str]) -> dict[str, bytes | None]:
    """Files of the ext4 file ``part`` (None for each not there), nothing mounted."""
    return {p: debugfs_cat(part, p) for p in paths}


def debugfs_mtime(part: Path, path: str) -> str | None:
    """``path``'s mtime as debugfs prints it, ``0xSECONDS:0xEXTRA`` in hex (the extra word:
    nanoseconds << 2, the epoch bits below); None if debugfs does not show one."""
    r = subprocess.run(["debugfs", "-R", f"stat {path}", str(part)], capture_output=True,
                       text=True)
    m = re.search(r"mtime: (0x[0-9a-f:]+)", r.stdout)
    return m.group(1) if m else None


def debugfs_link(part: Path, path: str) -> str | None:
    """Where the symbolic link ``path`` of the ext4 file ``part`` points; None if not a link."""
    r = subprocess.run(["debugfs", "-R", f"stat {path}", str(part)], capture_output=True,
                       text=True)
    if "Type: symlink" not in r.stdout:
        return None
    m = re.search(r'Fast link dest: "(.*)"', r.stdout)
    if m:
        return m.group(1)
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(part)], capture_output=True,
                          text=True).stdout  # a long target sits in a data block
