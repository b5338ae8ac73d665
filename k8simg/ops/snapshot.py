"""etcd snapshots that leave the operator's machine only encrypted, and come back verified.

A snapshot holds every Secret of the cluster. :func:`take` saves one from a single healthy
member (``etcdctl snapshot save``), checks it (``etcdutl snapshot status``, or etcdctl's on the
3.4 line: etcd's own hash over the database, its revision and key count) and writes it as a
**sealed snapshot**, encrypted on this machine with the cluster's snapshot key
(``pki/etcd-snapshot.key``, AES-256); the plaintext exists only in a private temporary file
while that happens.

The sealed file (``<cluster>-etcd-<UTC time>-r<revision>.snapshot``)::

    MAGIC
    4-byte length + header: JSON (cluster, its UID, the key's ID, when, revision, key count,
                            etcd's hash, size, SHA-512 of the plaintext, ...)
    chunks: 4-byte length + AES-256-GCM(4 MiB of the database)

Each chunk's nonce is a random prefix and the chunk's index; its associated data binds the
header's SHA-256, the index and whether it is the last chunk. So a flipped bit anywhere, a
header changed, chunks reordered, a file cut short or extended, or a snapshot sealed by another
cluster's key is refused by :func:`unseal` before a byte of it is used; the plaintext's
SHA-512 is checked once more at the end. The header is readable without the key
(:func:`read_header`), so snapshots can be listed and kept or dropped (:func:`prune`) without
decrypting them.
"""

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from k8simg.errors import K8simgError
from k8simg.fsutil import atomic_stream

MAGIC = b"K8SIMG-ETCD-SNAPSHOT\x00v1\n"
CHUNK = 4 << 20
MAX_HEADER = 1 << 16
HEADER_BYTES = len(MAGIC) + 4 + MAX_HEADER  # enough of a sealed file to read its header
_NAME = re.compile(r"^(?P<cluster>[a-z0-9-]+)-etcd-(?P<when>\d{8}T\d{6}Z)-r(?P<rev>\d+)\.snapshot$")


class SnapshotError(K8simgError):
    """A snapshot could not be taken, or is not one this cluster can use."""


@dataclass(frozen=True)
class Header:
    """What a sealed snapshot says about itself (readable without the key).

    :param key_id: the first 16 hex of the SHA-256 of the key that sealed it.
    :param etcd_hash: etcd's own hash of the database (``snapshot status``).
    """

    cluster: str
    cluster_uid: str
    key_id: str
    taken_at: str
    revision: int
    total_keys: int
    etcd_hash: int
    size: int
    sha512: str
    member: str
    nonce_prefix: str
    kubernetes_version: str = ""  # the cluster's when it was taken ("" : not said)

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @property
    def age(self) -> dt.timedelta:
        return dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(self.taken_at)


_HEADER_TYPES = {"cluster": str, "cluster_uid": str, "key_id": str, "taken_at": str,
                 "revision": int, "total_keys": int, "etcd_hash": int, "size": int,
                 "sha512": str, "member": str, "nonce_prefix": str, "kubernetes_version": str}


@dataclass(frozen=True)
class Sealed:
    """A sealed snapshot: a file on this machine, or an object in a Swift container.

    :param path: the file; for a stored snapshot, its object name.
    :param where: ``swift:<container>`` for a stored snapshot; empty for a file.
    """

    path: Path
    header: Header
    where: str = ""

    @property
    def ref(self) -> str:
        """How the operator names it again (``--snapshot``): the file's path, or
        ``swift:<container>/<name>``."""
        return f"{self.where}/{self.path.name}" if self.where else str(self.path)


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"k8simg etcd snapshot key\x00" + key).hexdigest()[:16]


def _aad(header_digest: bytes, index: int, last: bool) -> bytes:
    return header_digest + struct.pack(">Q?", index, last)


def seal(plain: Path, dest: Path, key: bytes, **fields) -> Header:
    """Encrypt the database ``plain`` into ``dest`` (0600, in place only once whole).

    :param fields: the header's fields but the key's ID, size, SHA-512 and nonce prefix.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    sha = hashlib.sha512()
    with open(plain, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    header = Header(key_id=key_id(key), size=plain.stat().st_size, sha512=sha.hexdigest(),
                    nonce_prefix=os.urandom(8).hex(), **fields)
    raw = header.to_json()
    digest, prefix, aead = hashlib.sha256(raw).digest(), bytes.fromhex(header.nonce_prefix), \
        AESGCM(key)
    with atomic_stream(dest, 0o600) as out, open(plain, "rb") as f:
        out.write(MAGIC + struct.pack(">I", len(raw)) + raw)
        index, chunk = 0, f.read(CHUNK)
        while True:
            following = f.read(CHUNK)
            last = not following
            ct = aead.encrypt(prefix + struct.pack(">I", index), chunk,
                              _aad(digest, index, last))
            out.write(struct.pack(">I", len(ct)) + ct)
            if last:
                break
            index, chunk = index + 1, following
    return header


def read_header(path: Path) -> Header:
    """The header of a sealed snapshot.

    :raises SnapshotError: naming the file when it is not one.
    """
    try:
        with open(path, "rb") as f:
            return parse_header(f.read(HEADER_BYTES), str(path))
    except OSError as e:
        raise SnapshotError(f"{path}: not a readable k8simg etcd snapshot ({e})") from None


def parse_header(data: bytes, where: str) -> Header:
    """The header in the first bytes of a sealed snapshot (at least its header's; all of
    them: :data:`HEADER_BYTES`).

    :param where: how messages name the snapshot.
    :raises SnapshotError: naming ``where`` when it is not one.
    """
    try:
        if data[:len(MAGIC)] != MAGIC:
            raise SnapshotError(f"{where}: not a k8simg etcd snapshot")
        (n,) = struct.unpack(">I", data[len(MAGIC):len(MAGIC) + 4])
        if n > MAX_HEADER:
            raise SnapshotError(f"{where}: not a k8simg etcd snapshot (header of {n} bytes)")
        raw = data[len(MAGIC) + 4:len(MAGIC) + 4 + n]
        if len(raw) != n:
            raise ValueError("cut short in its header")
        header = Header(**json.loads(raw))
    except (struct.error, ValueError, TypeError) as e:
        raise SnapshotError(f"{where}: not a readable k8simg etcd snapshot ({e})") from None
    wrong = [f for f, kind in _HEADER_TYPES.items() if type(getattr(header, f)) is not kind]
    try:
        bytes.fromhex(header.nonce_prefix)
        if dt.datetime.fromisoformat(header.taken_at).tzinfo is None:
            raise ValueError("no time zone")
    except (TypeError, ValueError):
        wrong.append("nonce_prefix or taken_at")
    if wrong or not re.fullmatch(r"(\d+\.\d+\.\d+)?", header.kubernetes_version):
        raise SnapshotError(f"{where}: not a readable k8simg etcd snapshot (its header's "
                            f"{', '.join(wrong) or 'kubernetes_version'} is malformed)")
    return header


def unseal(path: Path, dest: Path | None, key: bytes, cluster_uid: str) -> Header:
    """Decrypt a sealed snapshot of the cluster ``cluster_uid`` into ``dest`` (0600), which
    appears only once every chunk authenticated and the SHA-512 matched (nothing is left there
    otherwise; the chunks read so far go to a 0600 part file beside it, removed). Without
    ``dest``, the whole file is checked and nothing is written.

    :raises SnapshotError: naming the file and why it is refused.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header = read_header(path)
    if header.cluster_uid != cluster_uid or header.key_id != key_id(key):
        raise SnapshotError(
            f"{path}: taken from cluster {header.cluster} (UID {header.cluster_uid}, key "
            f"{header.key_id}); this cluster's PKI (UID {cluster_uid}, key {key_id(key)}) "
            "cannot decrypt it")
    raw = header.to_json()
    digest, prefix, aead = hashlib.sha256(raw).digest(), bytes.fromhex(header.nonce_prefix), \
        AESGCM(key)
    sha = hashlib.sha512()
    tmp = None
    try:
        if dest is not None:
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            os.fchmod(fd, 0o600)
            out = os.fdopen(fd, "wb")
        else:
            out = open(os.devnull, "wb")  # noqa: SIM115 (closed below)
        with out, open(path, "rb") as f:
            f.seek(len(MAGIC))
            (n,) = struct.unpack(">I", f.read(4))
            if f.read(n) != raw:  # the header as parsed is the header as sealed
                raise SnapshotError(f"{path}: its header is not in canonical form: refused")
            index = 0
            while True:
                size = f.read(4)
                if len(size) < 4:
                    raise SnapshotError(f"{path}: cut short after {index} chunks (truncated?): "
                                        "refused")
                (m,) = struct.unpack(">I", size)
                if m > CHUNK + 16:
                    raise SnapshotError(f"{path}: chunk {index} claims {m} bytes, more than a "
                                        "chunk holds: refused")
                ct = f.read(m)
                if len(ct) != m:
                    raise SnapshotError(f"{path}: cut short in chunk {index} (truncated?): "
                                        "refused")
                last = f.peek(1)[:1] == b""
                try:
                    chunk = aead.decrypt(prefix + struct.pack(">I", index), ct,
                                         _aad(digest, index, last))
                except InvalidTag:
                    raise SnapshotError(
                        f"{path}: chunk {index} does not authenticate (changed, reordered, or "
                        "the file cut short or extended): refused") from None
                sha.update(chunk)
                out.write(chunk)
                if last:
                    break
                index += 1
        if sha.hexdigest() != header.sha512:
            raise SnapshotError(f"{path}: SHA-512 of the decrypted database does not match its "
                                "header: refused")
        if tmp is not None:
            os.replace(tmp, dest)
    except OSError as e:
        raise SnapshotError(f"{path}: cannot be read or unsealed ({e})") from None
    finally:
        if tmp is not None:  # moved into place when whole; otherwise removed
            Path(tmp).unlink(missing_ok=True)
    return header


@dataclass(frozen=True)
class Trip:
    """A snapshot encrypted for the trip to the restoring masters (AES-256-CTR under a key made
    for it, which only their configs carry; the configs' SHA-512 of the file is its integrity,
    checked by Ignition before a node decrypts it)."""

    path: Path
    sha512: str
    key: str
    iv: str
    header: Header


def for_the_trip(sealed: Path, key: bytes, cluster_uid: str, dest: Path) -> Trip:
    """Unseal ``sealed`` (refused as :func:`unseal` refuses) and encrypt it again for the trip as
    ``dest`` (0600); the plaintext exists only in a private temporary file meanwhile.

    :raises SnapshotError: when the sealed snapshot is refused.
    """
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    trip_key, iv = os.urandom(32), os.urandom(16)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".trip.") as tmp:
        plain = Path(tmp) / "etcd.db"
        header = unseal(sealed, plain, key, cluster_uid)
        enc = Cipher(algorithms.AES(trip_key), modes.CTR(iv)).encryptor()
        sha = hashlib.sha512()
        part = Path(tmp) / "trip"
        with open(plain, "rb") as f, open(part, "wb") as out:
            os.fchmod(out.fileno(), 0o600)
            while chunk := f.read(CHUNK):
                ct = enc.update(chunk)
                sha.update(ct)
                out.write(ct)
            ct = enc.finalize()
            sha.update(ct)
            out.write(ct)
        os.replace(part, dest)
    return Trip(dest, sha.hexdigest(), trip_key.hex(), iv.hex(), header)


# -- etcd's side ---------------------------------------------------------------------------

def snapshot_tool() -> list[str]:
    """What reads and restores snapshot files here: ``etcdutl`` (3.5 on), or on the 3.4 line,
    which has none, ``etcdctl``."""
    found = shutil.which("etcdutl")
    if found:
        try:
            if subprocess.run([found, "version"], capture_output=True, timeout=30
                              ).returncode == 0:
                return [found]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return ["etcdctl"]


def status(db: Path, tool: list[str] | None = None) -> dict:
    """etcd's own check of a snapshot database: ``{"hash", "revision", "totalKey",
    "totalSize"}`` (``etcdutl snapshot status``; on the 3.4 line, which has no etcdutl,
    ``etcdctl snapshot status``). It fails on a database whose hash does not verify.

    :raises SnapshotError: with etcd's words.
    """
    tool = tool or snapshot_tool()
    try:
        r = subprocess.run([*tool, "snapshot", "status", str(db), "-w", "json"],
                           capture_output=True,
                text=True, timeout=300, env={"ETCDCTL_API": "3", "PATH": os.environ.get(
                    "PATH", "/usr/bin:/bin")})
    except FileNotFoundError:
        raise SnapshotError("etcdctl not found: install the Debian package etcd-client") from None
    except subprocess.TimeoutExpired:
        raise SnapshotError(f"{db}: `{tool[0]} snapshot status` gave no answer in 300 s") \
            from None
    if r.returncode != 0:
        raise SnapshotError(f"{db}: etcd finds it unusable: "
                            f"{(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    try:
        got = json.loads(r.stdout)
        return {k: int(got[k]) for k in ("hash", "revision", "totalKey", "totalSize")}
    except (ValueError, KeyError, TypeError) as e:
        raise SnapshotError(f"{db}: `{tool[0]} snapshot status` said {r.stdout!r} ({e})") from None


def snapshot_name(cluster: str, when: dt.datetime, revision: int) -> str:
    return f"{cluster}-etcd-{when.strftime('%Y%m%dT%H%M%SZ')}-r{revision}.snapshot"


def take(etcd, endpoint: str, member: str, dest_dir: Path, *, cluster: str, cluster_uid: str,
         key: bytes, kubernetes_version: str = "", tool: list[str] | None = None,
         progress: Callable[[str], None] = lambda _m: None,
         clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> Sealed:
    """Save a snapshot from ``endpoint`` (one healthy member), check it, and seal it into
    ``dest_dir``; the plaintext never stays on disk.

    :param etcd: a :class:`k8simg.ops.etcd.Etcd` that reaches ``endpoint``.
    :raises SnapshotError: when etcd gives none, or what it gave does not check.
    """
    from k8simg.ops.etcd import EtcdError

    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    when = clock()
    for stale in dest_dir.glob(".snapshot.*"):  # a killed run's plaintext (hours old: not a
        try:                                    # snapshot being taken right now)
            if when.timestamp() - stale.stat().st_mtime > 6 * 3600:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".snapshot.") as tmp:
        plain = Path(tmp) / "etcd.db"
        progress(f"saving a snapshot from {member} ({endpoint})")
        try:
            etcd.snapshot(plain, endpoint)
        except EtcdError as e:
            raise SnapshotError(str(e)) from None
        st = status(plain, tool)
        progress(f"snapshot at revision {st['revision']}: {st['totalKey']} keys, "
                 f"{st['totalSize']} bytes, etcd hash {st['hash']:08x}; encrypting")
        dest = dest_dir / snapshot_name(cluster, when, st["revision"])
        header = seal(plain, dest, key, cluster=cluster, cluster_uid=cluster_uid,
                      taken_at=when.isoformat(timespec="seconds"), revision=st["revision"],
                      total_keys=st["totalKey"], etcd_hash=st["hash"], member=member,
                      kubernetes_version=kubernetes_version)
    return Sealed(dest, header)


def listing(folder: Path, cluster_uid: str) -> list[Sealed]:
    """The sealed snapshots of the cluster ``cluster_uid`` in ``folder``, oldest first (others'
    and files that are not snapshots are left out)."""
    out = []
    for p in sorted(Path(folder).glob("*.snapshot")) if Path(folder).is_dir() else []:
        if not _NAME.match(p.name):
            continue
        try:
            h = read_header(p)
        except SnapshotError:
            continue
        if h.cluster_uid == cluster_uid:
            out.append(Sealed(p, h))
    return sorted(out, key=lambda s: (s.header.taken_at, s.path.name))


def prune(folder: Path, cluster_uid: str, keep: int, key: str | None = None) -> list[Path]:
    """Remove all but the ``keep`` newest of the cluster's sealed snapshots in ``folder``;
    returns what was removed.

    :param key: the ID of the key the cluster seals with now: only its snapshots count and go
        (one sealed with another key is not this one's to drop).
    """
    old = _beyond(listing(folder, cluster_uid), keep, key)
    for s in old:
        s.path.unlink()
    return [s.path for s in old]


def _beyond(found: list[Sealed], keep: int, key: str | None) -> list[Sealed]:
    """Of ``found`` (oldest first), those sealed with ``key`` (any, for None) but the ``keep``
    newest of them: what a retention of ``keep`` removes."""
    if keep < 1:
        raise SnapshotError("keep: at least 1 (the snapshot just taken)")
    return [s for s in found if key is None or s.header.key_id == key][:-keep]


def restore_data_dir(db: Path, data_dir: Path, *, name: str, peer_url: str,
                     initial_cluster: list[tuple[str, str]], token: str,
                     tool: list[str] | None = None) -> None:
    """Make a member's data directory from a (checked, unsealed) snapshot database, as etcd
    does it (``etcdutl snapshot restore``; ``etcdctl`` on the 3.4 line): the keys and their
    revisions are the snapshot's, the membership is ``initial_cluster``'s.

    :raises SnapshotError: with etcd's words; ``data_dir`` is not left behind half-made.
    """
    tool = tool or snapshot_tool()
    if data_dir.exists():
        raise SnapshotError(f"{data_dir}: exists; a restore makes a new member's data")
    argv = [*tool, "snapshot", "restore", str(db), f"--name={name}",
            f"--data-dir={data_dir}", f"--initial-advertise-peer-urls={peer_url}",
            "--initial-cluster=" + ",".join(f"{n}={u}" for n, u in initial_cluster),
            f"--initial-cluster-token={token}"]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                           env={"ETCDCTL_API": "3",
                                "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    except (OSError, subprocess.TimeoutExpired) as e:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise SnapshotError(f"restore of {db} for {name}: {tool[0]}: {e}") from None
    if r.returncode != 0:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise SnapshotError(f"restore of {db} for {name}: {(r.stderr or r.stdout).strip()}")


# -- in Swift -------------------------------------------------------------------------------

SWIFT = "swift:"


def swift_ref(text: str | Path | None) -> tuple[str, str] | None:
    """``swift:CONTAINER`` or ``swift:CONTAINER/NAME`` as (container, name or ""); None for
    anything else (a folder or a file).

    :raises SnapshotError: for ``swift:`` naming no container.
    """
    if text is None or not str(text).startswith(SWIFT):
        return None
    container, _, name = str(text)[len(SWIFT):].partition("/")
    if not container or "/" in name:
        raise SnapshotError(f"{text}: expected swift:CONTAINER (or swift:CONTAINER/NAME for "
                            "one snapshot)")
    return container, name


def _stored_header(container, name: str) -> Header:
    """A stored snapshot's header, read from its first bytes (a second read only for a
    header longer than the first gave)."""
    where = f"{container.where}/{name}"
    first = container.head(name, 4096)
    if first[:len(MAGIC)] == MAGIC and len(first) >= len(MAGIC) + 4:
        (n,) = struct.unpack(">I", first[len(MAGIC):len(MAGIC) + 4])
        if len(MAGIC) + 4 + n > len(first) and n <= MAX_HEADER:
            first = container.head(name, len(MAGIC) + 4 + n)
    return parse_header(first, where)


def stored_listing(container, cluster_uid: str) -> list[Sealed]:
    """The sealed snapshots of the cluster ``cluster_uid`` in a Swift container, oldest
    first, from their headers (others', and objects that are not snapshots, left out)."""
    from k8simg.clouds.base import ObjectGone

    out = []
    for name in container.names():
        if not _NAME.match(name):
            continue
        try:
            h = _stored_header(container, name)
        except (SnapshotError, ObjectGone):  # not one; or gone since the listing, or empty
            continue
        if h.cluster_uid == cluster_uid:
            out.append(Sealed(Path(name), h, f"{SWIFT}{container.name}"))
    return sorted(out, key=lambda s: (s.header.taken_at, s.path.name))


def stored_prune(container, cluster_uid: str, keep: int, key: str | None = None) -> list[str]:
    """:func:`prune` for a Swift container; returns the names removed."""
    old = _beyond(stored_listing(container, cluster_uid), keep, key)
    for s in old:
        container.delete(s.path.name)
    return [s.ref for s in old]


def fetch_stored(container, name: str, dest_dir: Path, cluster_uid: str) -> Sealed:
    """The stored snapshot ``name`` downloaded into ``dest_dir`` (0600, replacing a file of
    that name there); its header must name the cluster ``cluster_uid``.

    :raises SnapshotError: when it is not a snapshot, or another cluster's.
    """
    header = _stored_header(container, name)
    if header.cluster_uid != cluster_uid:
        raise SnapshotError(f"{container.where}/{name}: taken from cluster {header.cluster} "
                            f"(UID {header.cluster_uid}), not this one")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    dest = dest_dir / Path(name).name
    container.get(name, dest)
    return Sealed(dest, read_header(dest))


# -- the cluster's -------------------------------------------------------------------------

def snapshot_cluster(cluster, cloud, dest_dir: Path | str | None = None,
                     keep: int | None = None, progress: Callable[[str], None] = lambda _m: None
                     ) -> tuple[Sealed, list[str]]:
    """A sealed snapshot of the cluster's etcd, taken from a healthy member reached the cloud's
    way (the local cloud's namespace, the bastion's tunnel), into ``dest_dir`` (default: the
    cluster's ``backups/``), or uploaded to the cloud's Swift container ``swift:NAME`` (sealed
    here first; the container is reached before anything is taken); then, with ``keep``, all
    but the ``keep`` newest of the cluster's snapshots there removed. Returns the snapshot and
    what was removed.

    :raises SnapshotError: when no member is healthy, or the snapshot does not check.
    :raises CloudError: when the Swift container cannot be reached or written.
    """
    from k8simg.errors import PkiError
    from k8simg.pki import cluster_pki

    if keep is not None and keep < 1:
        raise SnapshotError("keep: at least 1 (the snapshot just taken)")
    swift = swift_ref(dest_dir)
    if swift and swift[1]:
        raise SnapshotError(f"{dest_dir}: --to takes a container (swift:CONTAINER); a "
                            "snapshot's name is its cluster's, time's and revision's")
    cfg = cluster.load()
    uid = cluster.state.uid
    if uid is None:
        raise SnapshotError(f"{cluster.path}: no UID in state.json: the cluster was never "
                            "deployed, so it has no etcd to take a snapshot of")
    try:
        key = cluster_pki(cluster, cfg).snapshot_key(create=False)
    except PkiError as e:
        raise SnapshotError(str(e)) from None
    if swift:
        # Reached (and made) before anything is taken: a store that cannot be had changes
        # nothing, and no plaintext is ever made for it.
        container = cloud.object_container(swift[0])
        container.ensure()
        cluster.backups_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in cluster.backups_dir.glob(".upload.*"):  # a killed run's (its plaintext
            try:                                              # too): hours old, not ours
                if time.time() - stale.stat().st_mtime > 6 * 3600:
                    shutil.rmtree(stale, ignore_errors=True)
            except OSError:
                pass
        with tempfile.TemporaryDirectory(dir=cluster.backups_dir, prefix=".upload.") as tmp:
            sealed = _take_from_cluster(cluster, cloud, cfg, uid, key, Path(tmp), progress)
            progress(f"uploading {sealed.path.name} ({sealed.header.size} bytes sealed) "
                     f"to {container.where}")
            container.put(sealed.path.name, sealed.path)
        sealed = Sealed(Path(sealed.path.name), sealed.header, f"{SWIFT}{container.name}")
        removed = stored_prune(container, uid, keep, key_id(key)) if keep else []
    else:
        dest_dir = Path(dest_dir) if dest_dir else cluster.backups_dir
        sealed = _take_from_cluster(cluster, cloud, cfg, uid, key, dest_dir, progress)
        removed = [str(p) for p in prune(dest_dir, uid, keep, key_id(key))] if keep else []
    for p in removed:
        progress(f"removed {Path(p).name} (keeping the {keep} newest)")
    return sealed, removed


def _take_from_cluster(cluster, cloud, cfg, uid: str, key: bytes, dest_dir: Path,
                       progress: Callable[[str], None]) -> Sealed:
    """:func:`take` from the first healthy member of the cluster's etcd."""
    from k8simg.ops.etcd import EtcdError, etcd_client, planned_endpoints

    endpoints = planned_endpoints(cluster)
    with etcd_client(cloud) as etcd:
        try:
            healthy = [e.endpoint for e in etcd.health(endpoints) if e.healthy]
            names = {u: m.name for m in etcd.members(healthy) for u in m.client_urls} \
                if healthy else {}
        except EtcdError as e:
            raise SnapshotError(f"etcd cannot be asked: {e}") from None
        if not healthy:
            raise SnapshotError(f"no etcd member of {cfg.name} is healthy "
                                f"({', '.join(endpoints)}): nothing to take a snapshot from")
        return take(etcd, healthy[0], names.get(healthy[0], healthy[0]), dest_dir,
                    cluster=cfg.name, cluster_uid=uid, key=key,
                    kubernetes_version=cluster.state.kubernetes_version
                    or cfg.kubernetes_version, progress=progress)
