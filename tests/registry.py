"""A real container registry on loopback (Debian's docker-registry, the CNCF distribution
registry) and small OCI images the tests build themselves, pushed to it with skopeo."""

import gzip
import hashlib
import http.client
import io
import json
import subprocess
import tarfile
import threading
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.support import free_ports, processes, wait_until

STAND_IN_LABEL = "io.k8simg.test-stand-in"


@dataclass(frozen=True)
class Registry:
    host: str  # 127.0.0.1:port

    def mirror_of(self, source: str) -> str:
        """The mirror URL serving ``source``'s repositories under ``<host>/<source>/``."""
        return f"http://{self.host}/{source}"


@contextmanager
def registry(root: Path):
    """docker-registry on a free loopback port, storing under ``root``; stopped on exit."""
    (port,) = free_ports(1)
    conf = root / "registry.yml"
    root.mkdir(parents=True, exist_ok=True)
    conf.write_text(json.dumps({  # YAML is a superset of JSON
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")},
                    "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"}}))
    with processes() as start, open(root / "registry.log", "w") as log:
        proc = start(["docker-registry", "serve", str(conf)], stdout=log,
                     stderr=subprocess.STDOUT)

        def up():
            assert proc.poll() is None, (root / "registry.log").read_text()
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).status == 200

        wait_until(up, 20, "docker-registry to answer")
        yield Registry(f"127.0.0.1:{port}")


def _blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _layer(files: dict[str, bytes | str]) -> bytes:
    """A layer's tar: ``bytes`` a regular file, ``str`` a symbolic link to it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                t.addfile(info)
                continue
            info.size, info.mode = len(data), 0o755
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _image_manifest(layout: Path, files: dict[str, bytes], labels: dict[str, str],
                    arch: str, entrypoint: list[str] | None,
                    more_layers: tuple[dict, ...] = ()) -> dict:
    raws = [_layer(f) for f in (files, *more_layers)]
    layers = [_blob(layout, gzip.compress(raw, mtime=0, compresslevel=1)) for raw in raws]
    config = {"architecture": arch, "os": "linux",
              "config": {"Labels": labels, **({"Entrypoint": entrypoint} if entrypoint else {})},
              "rootfs": {"type": "layers",
                         "diff_ids": ["sha256:" + hashlib.sha256(r).hexdigest() for r in raws]}}
    cfg = _blob(layout, json.dumps(config, sort_keys=True).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            **layer} for layer in layers]}
    return {"mediaType": manifest["mediaType"],
            **_blob(layout, json.dumps(manifest, sort_keys=True).encode()),
            "platform": {"os": "linux", "architecture": arch}}


def build_image(layout: Path, files: dict[str, bytes], *, labels: dict[str, str] | None = None,
                arches: tuple[str, ...] = ("amd64",), entrypoint: list[str] | None = None,
                more_layers: tuple[dict, ...] = ()) -> dict:
    """Write an OCI image layout holding one image (or, with several ``arches``, a
    multi-platform index); returns ``{"digest": top-level digest, "platforms": {arch: digest}}``.

    :param more_layers: layers over ``files``' (a ``.wh.<name>`` entry is a whiteout; a
        ``str`` value a symbolic link).
    """
    labels = labels or {}
    descs = [_image_manifest(layout, {**files, "arch": arch.encode()}, labels, arch, entrypoint,
                             more_layers)
             for arch in arches]
    if len(descs) == 1:
        top = {k: descs[0][k] for k in ("mediaType", "digest", "size")}
    else:
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": descs}
        top = {"mediaType": index["mediaType"],
               **_blob(layout, json.dumps(index, sort_keys=True).encode())}
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps(
        {"schemaVersion": 2, "manifests": [{**top, "annotations": {
            "org.opencontainers.image.ref.name": "latest"}}]}))
    return {"digest": top["digest"], "platforms": {d["platform"]["architecture"]: d["digest"]
                                                   for d in descs}}


def push(layout: Path, dest: str) -> None:
    """``skopeo copy`` the layout's image (all platforms) to ``dest`` (host/repo:tag)."""
    subprocess.run(["skopeo", "copy", "--quiet", "--all", "--preserve-digests",
                    "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{dest}"],
                   check=True, capture_output=True)


def stand_in(layout: Path, ref: str) -> dict:
    """A tiny image clearly labelled as a test stand-in for ``ref`` (which cannot be pulled
    on this machine)."""
    note = f"k8simg TEST STAND-IN for {ref}: not the real image\n".encode()
    return build_image(layout, {"k8simg-test-stand-in": note},
                       labels={STAND_IN_LABEL: ref})


@contextmanager
def tampering_proxy(upstream: str):
    """An HTTP proxy on loopback in front of ``upstream`` (host:port) that flips one byte of
    every blob it serves: a registry whose content no longer matches its digests."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self._forward(head=True)

        def do_GET(self):
            self._forward(head=False)

        def _forward(self, head):
            conn = http.client.HTTPConnection(upstream, timeout=10)
            conn.putrequest("HEAD" if head else "GET", self.path, skip_accept_encoding=True)
            for k, v in self.headers.items():  # repeated headers (Accept) kept apart
                if k.lower() != "host":
                    conn.putheader(k, v)
            conn.endheaders()
            r = conn.getresponse()
            body = r.read()
            if "/blobs/sha256:" in self.path and body and not head:
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            self.send_response(r.status)
            for k, v in r.getheaders():
                if k.lower() not in ("transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Connection", "close")
            self.end_headers()
            if not head:
                self.wfile.write(body)
            conn.close()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
