"""The local cloud's metadata service: what Nova's answers at 169.254.169.254, for the nodes
of one cluster, so that the local cloud is as exposed as a real one and the nodes' block of
it can be shown to work (tests/clouds/local/test_local_cloud.py).

It answers a node (known by its source address, as Nova knows it by its port) with that
node's own ``user_data`` (``/openstack/<version>/user_data``, ``/<version>/user-data``) and
``meta_data.json``, and a restoring master its snapshot (``RESTORE_PATH``, while staged); anything
else, or anyone else, gets 404. It runs in the cluster's network
namespace, started by :class:`k8simg.clouds.local.services.Services` and recorded in the
process table like dnsmasq and haproxy, and logs every request.

    python -m k8simg.clouds.local.metadata NODES_DIR PID_FILE LOG_FILE
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ADDRESS = "169.254.169.254"
PORT = 80
# A restoring master's snapshot (k8simg restore), for that node alone, as a temp URL would be.
RESTORE_PATH = "/k8simg/restore/etcd.db.enc"
RESTORE_FILE = "restore.enc"


def node_by_address(nodes_dir: Path, address: str) -> Path | None:
    """The directory of the node recorded at ``address``, or None."""
    for record in nodes_dir.glob("*/node.json"):
        try:
            if json.loads(record.read_text()).get("address") == address:
                return record.parent
        except (OSError, ValueError):
            continue
    return None


def answer(nodes_dir: Path, address: str, path: str) -> tuple[int, bytes]:
    """The status and body Nova would give the node at ``address`` for ``path``."""
    node = node_by_address(nodes_dir, address)
    if node is None:
        return 404, b"no instance at this address\n"
    parts = [p for p in path.split("?")[0].split("/") if p]
    try:
        if ((len(parts) == 3 and parts[0] == "openstack" and parts[2] == "user_data")
                or (len(parts) == 2 and parts[1] == "user-data")):
            return 200, (node / "user_data").read_bytes()
        if "/" + "/".join(parts) == RESTORE_PATH and (node / RESTORE_FILE).is_file():
            return 200, (node / RESTORE_FILE).read_bytes()
        if len(parts) == 3 and parts[0] == "openstack" and parts[2] == "meta_data.json":
            rec = json.loads((node / "node.json").read_text())
            return 200, json.dumps({"uuid": rec["uuid"], "name": rec["name"],
                                    "hostname": rec["name"]}).encode()
    except (OSError, ValueError, KeyError):
        return 404, b"not found\n"
    return 404, b"not found\n"


def serve(nodes_dir: Path, log_file: Path, address: str = ADDRESS, port: int = PORT):
    """The server (not yet serving)."""
    log = open(log_file, "a", buffering=1)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            status, body = answer(nodes_dir, self.client_address[0], self.path)
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):
            log.write(f"{self.client_address[0]} {fmt % args}\n")

    return ThreadingHTTPServer((address, port), Handler)


def main(argv: list[str]) -> int:
    nodes_dir, pid_file, log_file = (Path(a) for a in argv)
    server = serve(nodes_dir, log_file)  # bound before detaching: a failure is the caller's
    if os.fork():
        return 0  # the caller goes on once the PID file names the server
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    pid_file.write_text(f"{os.getpid()}\n")
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
