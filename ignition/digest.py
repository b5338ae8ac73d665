"""What a node's config holds, as digests: each file (and unit, user, filesystem) by path, and
one digest of it all, so that a node's config can be compared with what it would get now
(:mod:`k8simg.ops.desired`) and a plan can say which files changed, never what they hold.

Values that follow the cluster's membership rather than its definition are left out of the
comparison: the etcd member list a node started with (``ETCD_INITIAL_CLUSTER``,
``ETCD_INITIAL_CLUSTER_STATE``, and whom a joining member asks for it,
``K8SIMG_ETCD_JOIN_ENDPOINTS``: a running member never reads them again) and the etcd servers
an API server was given (``--etcd-servers``): both change whenever another member is replaced,
and each replacement is rendered with the membership as it is then. Compared, they would make
every replacement leave the other masters stale, and an upgrade would never end.

What a restoring member's first boot alone uses (the snapshot Ignition fetches, the key for it,
the unit that restores it: gone once used) is left out too: the member is not stale for having
been the one that restored.
"""

import base64
import datetime as dt
import gzip
import hashlib
import json
import re
import urllib.parse

from k8simg.ignition.image import ETCD_ENV, ETCD_RESTORE_ENV, RESTORE_SOURCE

MEMBERSHIP = {ETCD_ENV: ("ETCD_INITIAL_CLUSTER=", "ETCD_INITIAL_CLUSTER_STATE=",
                        "K8SIMG_ETCD_JOIN_ENDPOINTS="),
              "/etc/kubernetes/manifests/kube-apiserver.yaml": ("--etcd-servers=",)}
FIRST_BOOT_ONLY = {RESTORE_SOURCE, ETCD_RESTORE_ENV, "unit:k8simg-etcd-restore.service"}


def decode_source(contents: dict) -> bytes:
    """The bytes an Ignition ``contents`` (a data URL, maybe gzip'd) stands for.

    :raises ValueError: for a remote source (its bytes are not in the config).
    """
    if not contents["source"].startswith("data:"):
        raise ValueError(f"{contents['source'][:60]}: a remote source, not a data URL")
    header, _, payload = contents["source"].partition(",")
    data = base64.b64decode(payload) if header.endswith(";base64") else \
        urllib.parse.unquote_to_bytes(payload)
    if contents.get("compression") == "gzip":
        data = gzip.decompress(data)
    return data


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digests(user_data: bytes) -> dict[str, str]:
    """Path (or ``unit:``, ``user:``, ``filesystem:`` name) -> SHA-256 of what the config puts
    there (with its mode, or whether the unit is enabled).

    :raises ValueError: when ``user_data`` is not an Ignition config.
    """
    doc = json.loads(user_data)
    out = {}
    for f in doc.get("storage", {}).get("files", []):
        if f["path"] in FIRST_BOOT_ONLY:
            continue
        data = decode_source(f["contents"]) if "contents" in f else b""
        skipped = MEMBERSHIP.get(f["path"])
        if skipped:
            data = b"".join(ln for ln in data.splitlines(True)
                            if not any(m in ln.decode(errors="replace") for m in skipped))
        out[f["path"]] = _sha(f"{f.get('mode', 0o644):o}\n".encode() + data)
    for d in doc.get("storage", {}).get("directories", []):
        out[d["path"]] = _sha(f"directory {d.get('mode', 0o755):o}".encode())
    for fs in doc.get("storage", {}).get("filesystems", []):
        out[f"filesystem:{fs.get('device')}"] = _sha(json.dumps(fs, sort_keys=True).encode())
    for u in doc.get("systemd", {}).get("units", []):
        if f"unit:{u['name']}" in FIRST_BOOT_ONLY:
            continue
        out[f"unit:{u['name']}"] = _sha(json.dumps(u, sort_keys=True).encode())
    for u in doc.get("passwd", {}).get("users", []):
        out[f"user:{u['name']}"] = _sha(json.dumps(u, sort_keys=True).encode())
    return out


def config_digest(files: dict[str, str]) -> str:
    """One digest of :func:`file_digests`' result."""
    return _sha("".join(f"{p}\0{d}\n" for p, d in sorted(files.items())).encode())


def changed_paths(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """The paths whose content differs, or that one side has and the other not, sorted."""
    return sorted(p for p in before.keys() | now.keys() if before.get(p) != now.get(p))


_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
_EMBEDDED = re.compile(rb"client-certificate-data: *([A-Za-z0-9+/=]+)")


def earliest_leaf_expiry(user_data: bytes) -> dt.datetime | None:
    """When the first of the leaf certificates a config carries expires (files, and the
    client certificates kubeconfigs embed); CA certificates are not counted."""
    from cryptography import x509

    doc = json.loads(user_data)
    found = []
    for f in doc.get("storage", {}).get("files", []):
        if f["path"] in FIRST_BOOT_ONLY:
            continue
        data = decode_source(f["contents"]) if "contents" in f else b""
        pems = _PEM.findall(data) + [base64.b64decode(m) for m in _EMBEDDED.findall(data)]
        for pem in pems:
            for block in _PEM.findall(pem) or [pem]:
                try:
                    cert = x509.load_pem_x509_certificate(block)
                except ValueError:
                    continue
                try:
                    is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
                except x509.ExtensionNotFound:
                    is_ca = False
                if not is_ca:
                    found.append(cert.not_valid_after_utc)
    return min(found) if found else None
