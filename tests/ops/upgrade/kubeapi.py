"""A stateful TEST DOUBLE of the Kubernetes API: just enough of it for draining a node, because a
real API server cannot run on this machine (no Kubernetes release binaries, no registries).

It keeps nodes, pods, ReplicaSets and PodDisruptionBudgets; goes through the transitions a real
cluster does (an evicted pod terminates after a grace period; its ReplicaSet creates a
replacement on a schedulable node, which becomes Running and Ready after a while; a joining
node registers and turns Ready); enforces PodDisruptionBudgets on eviction with the API
server's 429 and message; and answers any request it does not understand with 404, recording
it, so a test sees the client asked for something the double cannot vouch for.
"""

import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PDB_MESSAGE = "Cannot evict pod as it would violate the pod's disruption budget."


class KubeApiDouble:
    def __init__(self, *, termination_s: float = 0.3, start_s: float = 0.4):
        self.lock = threading.RLock()
        self.nodes: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}  # "ns/name" -> pod
        self.replicasets: dict[str, dict] = {}  # "ns/name" -> {"labels", "replicas"}
        self.pdbs: list[dict] = []
        self.unexpected: list[str] = []
        self.evictions: list[tuple[str, int]] = []  # (pod, HTTP status)
        self.min_available: dict[str, int] = {}  # per PDB, the lowest count seen
        self.termination_s, self.start_s = termination_s, start_s
        # The scheduler: picks a node for a ReplicaSet's new pod among the schedulable ones
        # (sorted by name); a test can make it pick the last to tempt pods onto nodes that go.
        self.pick = lambda names: names[0]
        self.timers: list[tuple[float, callable]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.threads = [threading.Thread(target=self.server.serve_forever, daemon=True),
                        threading.Thread(target=self._clock, daemon=True)]
        self.stopping = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{getattr(self, 'scheme', 'http')}://127.0.0.1:{self.server.server_address[1]}"

    def serve_tls(self, cert, key, client_ca) -> None:
        """Serve HTTPS instead, requiring a client certificate of ``client_ca`` (as
        kube-apiserver does); call before entering."""
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https"

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        for t in self.threads:
            t.join(5)

    def client(self):
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        return client.ApiClient(cfg)

    def _clock(self):
        while not self.stopping.is_set():
            now = time.monotonic()
            with self.lock:
                due = [t for t in self.timers if t[0] <= now]
                self.timers = [t for t in self.timers if t[0] > now]
            for _, fn in due:
                with self.lock:
                    fn()
            time.sleep(0.02)

    def after(self, seconds: float, fn) -> None:
        with self.lock:
            self.timers.append((time.monotonic() + seconds, fn))

    # -- state ----------------------------------------------------------------------------
    def add_node(self, name: str, ready: bool = True) -> None:
        with self.lock:
            self.nodes[name] = {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "uid": str(uuid.uuid4()), "labels": {}},
                "spec": {},
                "status": {"conditions": [{"type": "Ready", "status": "True" if ready else
                                           "False", "reason": "KubeletReady" if ready else
                                           "KubeletNotReady"}]}}

    def set_ready(self, name: str) -> None:
        with self.lock:
            self.nodes[name]["status"]["conditions"][0].update(status="True",
                                                               reason="KubeletReady")

    def add_pod(self, ns: str, name: str, node: str, labels: dict | None = None,
                owner: tuple[str, str] | None = None, annotations: dict | None = None,
                phase: str = "Running") -> None:
        refs = []
        if owner:
            refs = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                     "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, owner[1])), "controller": True}]
        with self.lock:
            self.pods[f"{ns}/{name}"] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "uid": str(uuid.uuid4()),
                             "labels": labels or {}, "annotations": annotations or {},
                             "ownerReferences": refs},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
                "status": {"phase": phase, "conditions": [
                    {"type": "Ready", "status": "True" if phase == "Running" else "False"}]}}

    def add_replicaset(self, ns: str, name: str, labels: dict, nodes: list[str]) -> None:
        with self.lock:
            self.replicasets[f"{ns}/{name}"] = {"labels": labels, "replicas": len(nodes)}
            for i, node in enumerate(nodes):
                self.add_pod(ns, f"{name}-{i}", node, labels, ("ReplicaSet", name))

    def add_pdb(self, ns: str, name: str, selector: dict, min_available: int) -> None:
        with self.lock:
            self.pdbs.append({"namespace": ns, "name": name, "selector": selector,
                              "minAvailable": min_available})
            self.min_available[name] = self._available(self.pdbs[-1])

    def _matches(self, pdb: dict, pod: dict) -> bool:
        labels = pod["metadata"]["labels"]
        return pod["metadata"]["namespace"] == pdb["namespace"] and all(
            labels.get(k) == v for k, v in pdb["selector"].items())

    def _available(self, pdb: dict) -> int:
        return sum(1 for p in self.pods.values() if self._matches(pdb, p)
                   and p["status"]["phase"] == "Running"
                   and "deletionTimestamp" not in p["metadata"]
                   and p["status"]["conditions"][0]["status"] == "True")

    def _note_availability(self) -> None:
        for pdb in self.pdbs:
            self.min_available[pdb["name"]] = min(self.min_available[pdb["name"]],
                                                  self._available(pdb))

    def _evict(self, key: str) -> tuple[int, dict]:
        pod = self.pods.get(key)
        if pod is None:
            return 404, _status(404, "NotFound", f'pods "{key.split("/")[1]}" not found')
        for pdb in self.pdbs:
            if self._matches(pdb, pod) and "deletionTimestamp" not in pod["metadata"]:
                if self._available(pdb) - 1 < pdb["minAvailable"]:
                    return 429, _status(429, "TooManyRequests", PDB_MESSAGE)
        pod["metadata"]["deletionTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ")
        pod["status"]["conditions"][0]["status"] = "False"
        self._note_availability()
        self.after(self.termination_s, lambda: self._gone(key))
        return 201, {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}

    def _gone(self, key: str) -> None:
        pod = self.pods.pop(key, None)
        if pod is None:
            return
        refs = pod["metadata"]["ownerReferences"]
        if refs and refs[0]["kind"] == "ReplicaSet":
            ns = pod["metadata"]["namespace"]
            rs = refs[0]["name"]
            free = [n for n, v in sorted(self.nodes.items()) if not v["spec"].get("unschedulable")]
            target = self.pick(free) if free else None
            if target is None:
                return  # nowhere to schedule it: stays missing, as a Pending pod would
            name = f"{rs}-{uuid.uuid4().hex[:5]}"
            self.add_pod(ns, name, target, dict(pod["metadata"]["labels"]), ("ReplicaSet", rs),
                         phase="Pending")
            self.after(self.start_s, lambda: self._running(f"{ns}/{name}"))

    def _running(self, key: str) -> None:
        pod = self.pods.get(key)
        if pod is not None:
            pod["status"]["phase"] = "Running"
            pod["status"]["conditions"][0]["status"] = "True"

    # -- HTTP -----------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: dict, body: dict | None):
        with self.lock:
            if path in ("/version", "/version/") and method == "GET":  # kube-apiserver's fields
                return 200, {"major": "1", "minor": "35", "gitVersion": "v1.35.2",
                             "gitCommit": "0" * 40, "gitTreeState": "clean",
                             "buildDate": "2026-02-10T00:00:00Z", "goVersion": "go1.25.6",
                             "compiler": "gc", "platform": "linux/amd64"}
            m = re.fullmatch(r"/api/v1/nodes/([^/]+)", path)
            if m and method == "GET":
                node = self.nodes.get(m[1])
                return (200, node) if node else (404, _status(404, "NotFound", "no node"))
            if m and method == "PATCH" and m[1] in self.nodes:
                spec = (body or {}).get("spec", {})
                if set(spec) - {"unschedulable"} or set(body) - {"spec"}:
                    return None
                self.nodes[m[1]]["spec"].update(spec)
                return 200, self.nodes[m[1]]
            if path == "/api/v1/pods" and method == "GET":
                sel = query.get("fieldSelector", [""])[0]
                m2 = re.fullmatch(r"spec\.nodeName=(.+)", sel)
                if not m2 or set(query) - {"fieldSelector"}:
                    return None
                items = [p for p in self.pods.values() if p["spec"]["nodeName"] == m2[1]]
                return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {},
                             "items": items}
            m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/eviction", path)
            if m and method == "POST":
                if (body or {}).get("metadata", {}).get("name") != m[2]:
                    return None
                code, out = self._evict(f"{m[1]}/{m[2]}")
                self.evictions.append((f"{m[1]}/{m[2]}", code))
                return code, out
        return None

    def _handler(self):
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                answer = double._route(self.command, url.path, parse_qs(url.query), body)
                if answer is None:
                    double.unexpected.append(f"{self.command} {self.path} {raw[:200]!r}")
                    answer = (404, _status(404, "NotFound", "the test double does not serve "
                                                            "this request"))
                code, out = answer
                data = json.dumps(out).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        return Handler


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": reason, "message": message}
