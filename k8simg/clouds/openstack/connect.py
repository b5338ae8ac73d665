"""The connection to an OpenStack cloud, and the plumbing every service module shares: one
cluster's :class:`Scope` (its connection per thread, its identity, where changes are recorded),
waits that name their failure states, tagging, and the "at most one" lookup.

A cluster is known by its UID, never by its name (two cluster directories may share a name in
one project). Everything it creates carries the UID: as the tag ``k8simg-uid-<uid>`` (Nova,
Neutron, Octavia), in Cinder metadata (``k8simg-uid``), and in the name of what has neither
(server groups, the application credential). Neutron takes tags only after a create, so a
Neutron resource also carries the UID in its description from the create on: one a kill left
untagged is still provably the cluster's. Every listing is scoped to the cluster's project,
so admin credentials see no other project's resources either.

Clusters made before UIDs carried the tag ``k8simg-cluster-<name>``; such a cluster gets a UID
on its next deploy, which adopts (:mod:`k8simg.clouds.openstack.adopt`) what carries its old
tag and no UID.
"""

import base64
import threading
import time
from collections.abc import Callable

from k8simg.clouds.base import CloudError, Ledger, WaitTimeout
from k8simg.model.config import ClusterConfig

SERVER_MICROVERSION = "2.67"  # server tags at create (2.52), BDM volume_type (2.67)
TAG_PREFIX = "k8simg-uid-"
LEGACY_TAG_PREFIX = "k8simg-cluster-"
UID_KEY = "k8simg-uid"  # Cinder and Nova metadata, and the description marker


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


def share_session(conn):
    """Another connection to ``conn``'s cloud on the same keystone session: its token, its
    catalog and the endpoints it has discovered, so a thread's connection authenticates
    nothing. openstacksdk's connections are not shared between threads; the session is
    (keystoneauth locks its token)."""
    import openstack.connection

    sibling = openstack.connection.Connection(config=conn.config)
    # The session is the first connection's to close, when it goes: a sibling collected
    # earlier (by the garbage collector, in any thread) would close it under the others.
    finalizer = getattr(sibling, "_finalizer", None)
    if finalizer is not None:
        finalizer.detach()
    return sibling


def cluster_tag(uid: str) -> str:
    """The tag every resource of the cluster with UID ``uid`` carries."""
    return f"{TAG_PREFIX}{uid}"


def legacy_tag(name: str) -> str:
    """The tag of a cluster made before UIDs, named ``name``."""
    return f"{LEGACY_TAG_PREFIX}{name}"


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
    :param uid: reads the cluster's UID (None before a cluster from before UIDs has one).
    :param connect: makes a connection (tests give a fake's).
    :param share: another connection from the first one, for another thread
        (:func:`share_session`); None: each thread's is made by ``connect``.
    """

    def __init__(self, cloud: str | None, cfg: ClusterConfig, ledger: Ledger, *,
                 uid: Callable[[], str | None], timeout: float = 900, poll: float = 1.0,
                 connect: Callable[[str | None], object] = connect,
                 share: Callable[[object], object] | None = None):
        self.cloud = cloud
        self.cfg = cfg
        self.name = cfg.name
        self._uid_of = uid
        self._uid: str | None = None
        self.ledger = ledger
        self.timeout = timeout
        self.poll = poll
        self._connect = connect
        self._share = share
        self._made: list = []  # every thread's, the first one's session shared; alive as
        #                        long as this scope (the session refers back to them)
        self._made_lock = threading.Lock()
        self._local = threading.local()

    @property
    def uid(self) -> str:
        """The cluster's UID.

        :raises CloudError: for a cluster made before UIDs that no deploy has adopted yet.
        """
        if self._uid is None:
            self._uid = self._uid_of()  # deploy gives a cluster from before UIDs one
        if self._uid is None:
            raise CloudError(
                f"cluster {self.name} has no UID yet (it was made before k8simg knew clusters "
                f"by UID): run `k8simg deploy` (or `k8simg destroy`) on it once, not as a plan; "
                f"it adopts the resources tagged {legacy_tag(self.name)} that no other cluster "
                "has claimed")
        return self._uid

    @property
    def tag(self) -> str:
        """The tag every resource of the cluster carries."""
        return cluster_tag(self.uid)

    @property
    def marker(self) -> str:
        """What ends the description of each Neutron resource the cluster creates."""
        return f"{UID_KEY}={self.uid}"

    def describe(self, what: str) -> str:
        """The description of a Neutron resource: for people, and the UID for :meth:`owns`."""
        return f"k8simg cluster {self.name}: {what} {self.marker}"

    @property
    def project_id(self) -> str:
        """The project every listing is scoped to."""
        return self.conn.network.get_project_id()

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
        """One connection per thread (openstacksdk connections are not shared safely), all
        on the first one's keystone session where ``share`` is given."""
        c = getattr(self._local, "conn", None)
        if c is None:
            with self._made_lock:
                if self._made and self._share is not None:
                    c = self._share(self._made[0])
                else:
                    c = self._connect(self.cloud)
                self._made.append(c)
            c.compute.default_microversion = SERVER_MICROVERSION
            self._local.conn = c
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
        a resource left untagged by a kill in between is known by its description.

        :param record: whether to record the tagging (a fresh creation is recorded already).
        """
        if self.tag not in (getattr(res, "tags", None) or []):
            if record:
                self.record("update", "tag", res.name or res.id, self.tag)
            if not self.dry:
                self.conn.network.set_tags(res, [*(res.tags or []), self.tag])
        return res

    def volumes(self) -> list:
        """The cluster's volumes (Cinder has no tags: the UID is in their metadata; filtered
        here, as Cinder's metadata query filter is not reliably exposed to members)."""
        return [v for v in self.conn.block_storage.volumes()
                if (v.metadata or {}).get(UID_KEY) == self.uid]

    def owns(self, res) -> bool:
        """Whether the Neutron resource ``res`` is the cluster's: tagged with its UID, or
        carrying no UID tag and the cluster's marker in its description (a kill fell between
        its create and its tagging). Names prove nothing: another cluster may share them."""
        tags = res.tags or []
        if self.tag in tags:
            return True
        if any(t.startswith(TAG_PREFIX) for t in tags):
            return False  # another cluster's
        return (getattr(res, "description", None) or "").endswith(self.marker)

    def mine(self, items, kind: str, name: str):
        """:meth:`one` of the resources in ``items`` that are the cluster's (:meth:`owns`)."""
        return self.one([x for x in items if self.owns(x)], kind, name)
