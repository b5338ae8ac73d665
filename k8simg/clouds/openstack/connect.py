"""The connection to an OpenStack cloud, and the plumbing every service module shares: one
cluster's :class:`Scope` (its connection per thread, its tag, where changes are recorded),
waits that name their failure states, tagging, and the "at most one" lookup.

Everything created carries the cluster's tag (metadata where a service has no tags, the name
where it has neither), so a re-run finds it and destroy misses nothing.
"""

import base64
import threading
import time
from collections.abc import Callable

from k8simg.clouds.base import CloudError, Ledger, WaitTimeout
from k8simg.model.config import ClusterConfig

SERVER_MICROVERSION = "2.67"  # server tags at create (2.52), BDM volume_type (2.67)
TAG_PREFIX = "k8simg-cluster-"


def connect(cloud: str | None):
    """A connection to ``cloud`` from clouds.yaml (or the ``OS_*`` environment when None).

    :raises CloudError: naming the cloud when it is not configured or does not answer.
    """
    import openstack
    from keystoneauth1 import exceptions as ksa
    from openstack import exceptions as osx

    try:
        conn = openstack.connect(cloud=cloud)
        conn.authorize()
    except osx.ConfigException as e:
        raise CloudError(f"cloud {cloud!r}: {e}") from None
    except (ksa.ClientException, osx.SDKException) as e:
        raise CloudError(f"cloud {cloud or '(from OS_* variables)'}: cannot authenticate: "
                         f"{e}") from None
    return conn


def cluster_tag(cluster: str) -> str:
    """The tag every resource of cluster ``cluster`` carries."""
    return f"{TAG_PREFIX}{cluster}"


def wait_for(what: str, fetch: Callable[[], object], *, ok: set[str], failures: set[str],
             attribute: str = "status", timeout: float = 600, interval: float = 1.0,
             describe: Callable[[object], str] = lambda _r: ""):
    """Poll ``fetch`` until ``attribute`` is in ``ok``. A resource the API no longer returns
    has the state ``GONE``.

    :param failures: the states that end the wait at once (never empty: a wait that cannot
        fail early waits out its whole timeout on a resource that has failed).
    :raises CloudError: when it reaches one of ``failures`` (with ``describe``'s detail).
    :raises WaitTimeout: naming ``what`` and the last state seen.
    """
    if not failures:
        raise ValueError(f"waiting for {what}: name the states that mean it failed")
    deadline = time.monotonic() + timeout
    while True:
        res = fetch()
        state = getattr(res, attribute, None) if res is not None else "GONE"
        if state in ok:
            return res
        if state in failures:
            detail = describe(res)
            raise CloudError(f"{what} went to {state}" + (f": {detail}" if detail else ""))
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what} to become "
                              f"{'/'.join(sorted(ok))} (last seen {state})")
        time.sleep(interval)


def server_fault(server) -> str:
    """Nova's fault message for ``server``; empty when it has none."""
    fault = getattr(server, "fault", None) or {}
    return fault.get("message", "") if isinstance(fault, dict) else str(fault)


def b64(data: bytes) -> str:
    """``data`` base64-encoded as text (as Nova takes user_data)."""
    return base64.b64encode(data).decode()


class Scope:
    """One cluster on one cloud, as every service module's functions take it.

    :param cloud: the cloud's name in clouds.yaml (None: the ``OS_*`` variables).
    :param connect: makes a connection (tests give a fake's).
    """

    def __init__(self, cloud: str | None, cfg: ClusterConfig, ledger: Ledger, *,
                 timeout: float = 900, poll: float = 1.0,
                 connect: Callable[[str | None], object] = connect):
        self.cloud = cloud
        self.cfg = cfg
        self.name = cfg.name
        self.tag = cluster_tag(cfg.name)
        self.ledger = ledger
        self.timeout = timeout
        self.poll = poll
        self._connect = connect
        self._local = threading.local()

    @property
    def where(self) -> str:
        """How messages name the cloud."""
        return f"cloud {self.cloud!r}"

    @property
    def dry(self) -> bool:
        """Whether this is a dry run: changes are recorded, not made."""
        return self.ledger.dry_run

    @property
    def conn(self):
        """One connection per thread (openstacksdk connections are not shared safely)."""
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = self._connect(self.cloud)
            c.compute.default_microversion = SERVER_MICROVERSION
        return c

    def wait(self, what: str, fetch: Callable[[], object], **kw):
        """:func:`wait_for` with the cluster's timeout and poll interval."""
        return wait_for(what, fetch, timeout=self.timeout, interval=self.poll, **kw)

    def record(self, action: str, kind: str, name: str, detail: str = "") -> None:
        """Record a change (or, in a dry run, a planned one) in the cluster's ledger."""
        self.ledger.record(action, kind, name, detail)

    def one(self, items, kind: str, name: str):
        """The one resource in ``items``, or None.

        :raises CloudError: when there are several (the cluster's names are unique).
        """
        items = list(items)
        if len(items) > 1:
            raise CloudError(f"{kind} {name!r}: {len(items)} found, expected at most one; "
                             "remove the duplicates (or run destroy)")
        return items[0] if items else None

    def tagged(self, res, record: bool = True):
        """Tag a Neutron resource right after creating it (Neutron takes no tags in a POST);
        a resource left untagged by a kill in between is found again by its name.

        :param record: whether to record the tagging (a fresh creation is recorded already).
        """
        if self.tag not in (getattr(res, "tags", None) or []):
            if record:
                self.record("update", "tag", res.name or res.id, self.tag)
            if not self.dry:
                self.conn.network.set_tags(res, [*(res.tags or []), self.tag])
        return res

    def volumes(self) -> list:
        """The cluster's volumes (Cinder has no tags; k8simg marks them in metadata, and
        filters here: Cinder's metadata query filter is not reliably exposed to members)."""
        return [v for v in self.conn.block_storage.volumes()
                if (v.metadata or {}).get(self.tag) == "true"]

    def owns(self, res, names: set[str]) -> bool:
        """Tagged with this cluster, or untagged and named exactly as this cluster names it
        (``names``: a kill can fall between a create and its tagging). A prefix match would
        take ``prod-eu``'s resources for ``prod``'s."""
        tags = res.tags or []
        if self.tag in tags:
            return True
        if any(t.startswith(TAG_PREFIX) for t in tags):
            return False  # another cluster's
        return res.name in names
