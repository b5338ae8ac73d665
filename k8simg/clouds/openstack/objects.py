"""Swift containers for the cluster's snapshots (:class:`~k8simg.clouds.base.ObjectContainer`).

The container is the operator's (``--to swift:NAME``); k8simg makes it when it is missing and
never removes it. What in it is the cluster's is told by each object's sealed header, by
:mod:`k8simg.ops.snapshot`, not here.
"""

import hashlib
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from k8simg.clouds.base import CloudError, ObjectContainer, ObjectGone
from k8simg.clouds.openstack.connect import Scope
from k8simg.fsutil import atomic_stream

SINGLE_PUT_MAX = 5 << 30  # Swift's default max_file_size: larger goes in segments


class SwiftContainer(ObjectContainer):
    def __init__(self, scope: Scope, name: str):
        super().__init__(name, scope.where)
        self.scope = scope

    def _call(self, what: str, fn: Callable[[], object]):
        """``fn()``, any failure of the store (none in the catalog, refused, unreachable)
        turned into a :class:`CloudError` that names the container and ``what`` failed."""
        from keystoneauth1 import exceptions as ksa
        from openstack import exceptions as osx

        try:
            return fn()
        except CloudError:
            raise
        except (osx.SDKException, ksa.ClientException, OSError, AttributeError) as e:
            # (AttributeError: openstacksdk reading a capability this Swift does not have)
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CloudError(f"{self.where}: cannot {what}: {reason}") from None

    @property
    def _store(self):
        return self.scope.conn.object_store

    def ensure(self) -> None:
        from openstack import exceptions as osx

        def make():
            try:
                self._store.get_container_metadata(self.name)
            except osx.NotFoundException:
                self._store.create_container(self.name)
                self.scope.record("create", "swift container", self.name)
        self._call("reach the container", make)

    def put(self, name: str, path: Path) -> None:
        md5 = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                md5.update(chunk)
        size = path.stat().st_size

        def upload():
            if size <= SINGLE_PUT_MAX:
                # One PUT carrying the MD5 as its ETag: Swift refuses (422) what it did not
                # receive whole, and never keeps a half of it.
                with open(path, "rb") as f:
                    r = self._store.put(self._path(name), data=f,
                                        headers={"ETag": md5.hexdigest(),
                                                 "Content-Length": str(size)})
                if r.status_code == 422:
                    raise CloudError(f"{self.where}: {name}: the store did not receive what "
                                     f"was sent (its MD5 {md5.hexdigest()} did not match)")
                if r.status_code not in (200, 201):
                    raise CloudError(f"{self.where}: {name}: upload refused: HTTP "
                                     f"{r.status_code} {r.reason}")
            else:  # a static large object of segments (openstacksdk's), checked by size
                self.scope.conn.create_object(self.name, name, filename=str(path),
                                              md5=md5.hexdigest(), generate_checksums=False)
            got = self._store.get_object_metadata(name, self.name)
            etag = (got.etag or "").strip('"')
            if int(got.content_length or 0) != size or (etag != md5.hexdigest()
                                                        and not got.is_static_large_object):
                self._store.delete_object(name, container=self.name, ignore_missing=True)
                raise CloudError(f"{self.where}: {name}: the store holds {got.content_length} "
                                 f"bytes (MD5 {etag}), not the {size} bytes (MD5 "
                                 f"{md5.hexdigest()}) sent; removed again")
        self._call(f"upload {name}", upload)

    def names(self) -> list[str]:
        return self._call("list the container",
                          lambda: sorted(o.name for o in self._store.objects(self.name)))

    def _path(self, name: str) -> str:
        return "/".join(urllib.parse.quote(p, safe="") for p in (self.name, name))

    def head(self, name: str, size: int) -> bytes:
        def first():
            r = self._store.get(self._path(name), headers={"Range": f"bytes=0-{size - 1}"},
                                stream=True)
            try:
                if r.status_code in (404, 416):  # gone (a listing lags), or empty
                    raise ObjectGone(f"{self.where}: no object {name} there"
                                     + (" (it is empty)" if r.status_code == 416 else ""))
                if r.status_code not in (200, 206):
                    raise CloudError(f"{self.where}: {name}: HTTP {r.status_code}")
                got = b""
                for chunk in r.iter_content(1 << 16):  # a server ignoring Range: no more
                    got += chunk
                    if len(got) >= size:
                        break
                return got[:size]
            finally:
                r.close()
        return self._call(f"read {name}", first)

    def get(self, name: str, dest: Path) -> None:
        def download():
            with atomic_stream(dest, 0o600) as out:
                for chunk in self._store.stream_object(name, container=self.name,
                                                       chunk_size=1 << 20):
                    out.write(chunk)
        self._call(f"download {name}", download)

    def delete(self, name: str) -> None:
        self._call(f"remove {name}", lambda: self._store.delete_object(
            name, container=self.name, ignore_missing=True))
        self.scope.record("delete", "swift object", f"{self.name}/{name}")


# -- a restore's snapshot, for the new masters' first boot -----------------------------------------

STAGED = "etcd.db.enc"
STAGE_SECONDS = 6 * 3600  # how long a staged snapshot's URL is good for: one first boot


def restore_container(s: Scope) -> str:
    """The container a restore stages its snapshot in: the cluster's own, by its UID."""
    return f"k8simg-restore-{s.uid}"


def temp_url(endpoint: str, container: str, name: str, key: str, expires: int) -> str:
    """A Swift temporary URL for GET of ``container/name`` until ``expires`` (Unix time),
    signed with HMAC-SHA256 (SHA-1, what openstacksdk signs with, is deprecated in Swift's
    tempurl and disabled on some clouds)."""
    import hmac

    base = urllib.parse.urlsplit(endpoint)
    path = f"{urllib.parse.unquote(base.path).rstrip('/')}/{container}/{name}"  # signed unquoted
    sig = hmac.new(key.encode(), f"GET\n{expires}\n{path}".encode(), hashlib.sha256).hexdigest()
    return (f"{base.scheme}://{base.netloc}{urllib.parse.quote(path)}"
            f"?temp_url_sig={sig}&temp_url_expires={expires}")


def stage(s: Scope, path: Path) -> str:
    """Upload ``path`` (a snapshot encrypted for the trip) into the cluster's restore container
    under a name of its own, and return the temporary URL the restoring masters fetch it from
    at first boot.

    The container exists only while a restore is under way (:func:`unstage` removes it). Made
    anew, it gets a new random temp-URL key; found (a killed restore run again), its key is
    kept, so that a master the killed run booted still fetches what its config names, while
    the masters booted now get the new upload. Once the restore is done, the container and
    every URL into it are gone."""
    import secrets
    import time

    from openstack import exceptions as osx

    name = restore_container(s)
    c = SwiftContainer(s, name)

    def key_of() -> str | None:
        try:
            return s.conn.object_store.get_container_metadata(name).meta_temp_url_key
        except osx.NotFoundException:
            return None
    key = c._call("read its temporary URL key", key_of)
    c.ensure()
    if not key:
        key = secrets.token_hex(32)
        c._call("set its temporary URL key",
                lambda: s.conn.object_store.set_container_temp_url_key(name, key))
    obj = f"{secrets.token_hex(8)}/{STAGED}"
    c.put(obj, path)
    endpoint = c._call("find its endpoint", lambda: s.conn.object_store.get_endpoint())
    return temp_url(endpoint, name, obj, key, int(time.time()) + STAGE_SECONDS)


def unstage(s: Scope) -> None:
    """Remove what :func:`stage` put there (every upload of the restore), then the container."""
    from openstack import exceptions as osx

    name = restore_container(s)
    c = SwiftContainer(s, name)

    def left() -> list[str] | None:
        try:
            return [o.name for o in s.conn.object_store.objects(name)]
        except osx.NotFoundException:  # removed by an earlier run: a resumed restore
            return None
    objs = c._call("list the container", left)
    if objs is None:
        return
    for obj in objs:
        c.delete(obj)
    c._call("remove the container", lambda: s.conn.object_store.delete_container(
        name, ignore_missing=True))
    s.record("delete", "swift container", name)


def staged(s: Scope) -> list[str]:
    """What of the cluster's restore container is there (for destroy): its objects, and the
    container itself last (``""``); nothing where the cloud has no Swift at all.

    :raises CloudError: when Swift is there but cannot be asked (refused, unreachable).
    """
    from keystoneauth1 import exceptions as ksa
    from openstack import exceptions as osx

    name = restore_container(s)
    try:
        names = [o.name for o in s.conn.object_store.objects(name)]
    except osx.NotFoundException:
        return []
    except (osx.EndpointNotFound, osx.ServiceDisabledException, ksa.EndpointNotFound,
            ksa.EmptyCatalog):
        return []  # no object store in this cloud: nothing of ours can be in one
    except (osx.SDKException, ksa.ClientException, OSError) as e:
        raise CloudError(f"swift:{name} on {s.where}: cannot be listed: {e}") from None
    return [*names, ""]


def restore_unsupported(s: Scope) -> str | None:
    """Why a restore cannot stage its snapshot on this cloud (None: it can): no Swift, or one
    whose temporary URLs are off or take no HMAC-SHA256 (its ``/info``)."""
    from keystoneauth1 import exceptions as ksa
    from openstack import exceptions as osx

    why = "a restore stages the snapshot for the new masters there"
    try:
        info = s.conn.object_store.get_info()
    except (osx.EndpointNotFound, osx.ServiceDisabledException, ksa.EndpointNotFound,
            ksa.EmptyCatalog):
        return f"{s.where} has no object store (Swift): {why}"
    except (osx.SDKException, ksa.ClientException, OSError) as e:
        return f"{s.where}'s Swift cannot be asked ({e}): {why}"
    tempurl = info.tempurl
    if tempurl is None:
        return f"{s.where}'s Swift has no temporary URLs (tempurl middleware): {why}"
    if "sha256" not in (tempurl.get("allowed_digests") or ["sha1", "sha256", "sha512"]):
        return (f"{s.where}'s Swift signs temporary URLs only with "
                f"{', '.join(tempurl['allowed_digests'])}, not SHA-256: {why}")
    return None
