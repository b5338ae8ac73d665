"""What ``deploy``, ``destroy`` and ``upgrade`` need from a cloud: the :class:`Cloud` contract,
the typed values its calls take and return, and its errors.

A cloud call takes what it needs as arguments and returns a value (Cluster API's provider
contract: reconcile(object) -> status); no call leaves state on the cloud object for a later
one to read. The order of a deploy is :mod:`k8simg.ops.deploy`'s, not the cloud's:

    pre = cloud.prepare(nodes)                  # every problem at once; nothing created
    infra = cloud.ensure_infrastructure(pre, nodes)   # network, security, groups, API address
    cloud.prepare_node(node, infra)             # per node of a group of several, at once
    cloud.place_node(node, user_data, infra)    # per node of a group of several, in turn
    cloud.ensure_node(node, user_data, infra)   # per node, in cloud.boot_groups(nodes)
    cloud.ensure_api_members(masters, infra)
    cloud.wait_ready(nodes)
    cloud.attach_public_address(bastion, infra)
"""

import abc
import concurrent.futures as cf
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from k8simg.errors import K8simgError
from k8simg.model.cluster import ClusterDir
from k8simg.model.config import ClusterConfig
from k8simg.model.credential import CloudCredential, ServiceNetwork
from k8simg.model.plan import Node, parse_node_name

Problem = tuple[str, str]  # (dotted field, message)


class CloudError(K8simgError):
    """The cloud refused, failed, or could not be reached."""


class ObjectGone(CloudError):
    """An object of an object store is not there (any more), or is empty."""


class WaitTimeout(CloudError):
    """A resource did not reach the wanted state in time."""


def problems_text(problems: list[Problem]) -> str:
    """``problems`` as indented ``field: message`` lines, for an error message."""
    return "\n".join(f"  {f}: {m}" for f, m in problems)


class PreflightError(K8simgError):
    """The cloud cannot take this cluster; nothing was created.

    :param where: the cloud, as the message names it.
    :param problems: ``(field, message)`` for every problem found.
    """

    exit_code = 2

    def __init__(self, where: str, problems: list[Problem]):
        self.problems = problems
        super().__init__(f"preflight on {where} failed; nothing was created:\n"
                         + problems_text(problems))


class NodeFailed(K8simgError):
    """Nodes did not come up; each entry names the node and what its console showed."""

    def __init__(self, failures: list[tuple[str, str]], next_step: str = ""):
        self.failures = failures
        self.next_step = next_step
        super().__init__("\n".join(f"node {name} failed: {why}" for name, why in failures)
                         + (f"\n{next_step}" if next_step else ""))


@dataclass(frozen=True)
class Change:
    """One change a run made (or, planning, would make), as the ledger records it.

    :param action: ``create``, ``update``, ``delete``, ``replace`` or ``start``.
    :param kind: what sort of resource it is (``server``, ``load balancer``), for messages.
    :param detail: shown after the name, in parentheses.
    """

    action: str  # create, update, delete, replace, start
    kind: str
    name: str
    detail: str = ""

    def __str__(self):
        return f"{self.action:8} {self.kind:22} {self.name}" + (f"  ({self.detail})"
                                                                if self.detail else "")


@dataclass
class Ledger:
    """What a run did (or, planning, would do), thread-safe."""

    dry_run: bool = False
    changes: list[Change] = field(default_factory=list)
    progress: Callable[[str], None] = lambda _m: None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, action: str, kind: str, name: str, detail: str = "") -> None:
        """Add a :class:`Change` and report it as progress (as "would ..." in a dry run)."""
        change = Change(action, kind, name, detail)
        with self._lock:
            self.changes.append(change)
        self.progress(("would " if self.dry_run else "") + str(change).strip())


@dataclass(frozen=True)
class ImageFacts:
    """The image new nodes boot from, as the cloud found it.

    :param ref: how :class:`NodeStatus` names images (a Glance ID; locally the qcow2's name
        and the first 12 hex of its sha256).
    :param name: for messages.
    :param has_kubernetes: False for an image baked without Kubernetes (its nodes run etcd and
        containerd, no kubelet: there is no API to ask).
    :param kubernetes_version: the Kubernetes release it was baked for, as its manifest says
        (None: it does not say).
    :param etcd_version: the etcd it carries, as its manifest says (None: it does not say).
    :param etcd_source: where that etcd came from: ``debian`` (the offline image's Debian
        etcd 3.4, which upstream no longer maintains) or the etcd image it was taken from.
    :param etcd_join: its etcd unit waits until the cluster lists a joining member (the image's
        etcd-join): a node may boot before its member is added (``--control-plane-surge``).
    """

    ref: str
    name: str
    has_kubernetes: bool = True
    kubernetes_version: str | None = None
    etcd_version: str | None = None
    etcd_source: str | None = None
    etcd_join: bool = False


@dataclass(frozen=True)
class Preflight:
    """What :meth:`Cloud.prepare` found: every problem, and the image (None when not found);
    where Services of type LoadBalancer go, when the cloud has made that already."""

    problems: list[Problem]
    image: ImageFacts | None
    service_network: ServiceNetwork | None = None


@dataclass(frozen=True)
class Infra:
    """What nodes need before any of them boots, as a cloud made it. Clouds subclass it with
    their own resources; the orchestration reads only these fields.

    :param api_address: the API's externally reachable address when it differs from the
        planned VIP (it goes into the API server's certificate); None otherwise.
    :param service_network: where Services of type LoadBalancer get their load balancers
        (the cloud controller manager's; None where the cloud has none, or in a dry run).
    """

    api_address: str | None = None
    service_network: ServiceNetwork | None = None


@dataclass(frozen=True)
class NodeStatus:
    """A node as the cloud sees it.

    :param state: the cloud's word (OpenStack's server status; locally ``booting``, ``ready``,
        ``failed`` or ``stopped``).
    :param image: what it was booted from, as :attr:`ImageFacts.ref` names images.
    :param console_file: its serial console log on this machine, where there is one (the
        local cloud); :meth:`Cloud.console_log` reads it on every cloud.
    :param config: the digest of the config it was booted with (:func:`config_of`); empty
        for a node booted before k8simg recorded it.
    """

    name: str
    role: str
    index: int
    state: str
    address: str | None
    image: str
    generation: int = 1
    console_file: Path | None = None
    config: str = ""


def config_of(user_data: bytes | None) -> str:
    """The digest a node's cloud keeps of the config it boots with (``""`` for none): over
    its files, units and users, bootstrap-only values left out
    (:mod:`k8simg.ignition.digest`)."""
    if user_data is None:
        return ""
    from k8simg.ignition.digest import config_digest, file_digests

    return config_digest(file_digests(user_data))


@dataclass(frozen=True)
class DestroyResult:
    """What :meth:`Cloud.destroy` removed, and what it could not.

    :param left: each with the error that kept it; empty when everything went.
    """

    removed: list[str]
    left: list[str]


@dataclass(frozen=True)
class Reach:
    """How commands on this machine reach the nodes' private addresses.

    :param wrap: turns an argv into one that runs where the addresses are routed (the local
        cloud's namespace).
    :param route: turns a node's URL into the one to dial (a tunnel's local end).
    """

    wrap: Callable[[list[str]], list[str]] = lambda argv: argv
    route: Callable[[str], str] = lambda url: url


class ObjectContainer(abc.ABC):
    """A container of the cloud's object store (Swift), where a cluster's snapshots are kept
    off its nodes. The container is the operator's to name and may hold other things: what is
    the cluster's in it is told by each object's content, not by this class.

    Every method raises :class:`CloudError` naming the container when the store cannot be
    reached or refuses.
    """

    def __init__(self, name: str, where: str):
        self.name = name
        self.where = f"swift:{name} on {where}"

    @abc.abstractmethod
    def ensure(self) -> None:
        """The container exists (made when it does not)."""

    @abc.abstractmethod
    def put(self, name: str, path: Path) -> None:
        """Store the file ``path`` as ``name``; the store's checksum of what it received
        must match the file's, else the object is removed again."""

    @abc.abstractmethod
    def names(self) -> list[str]:
        """Every object's name in the container, sorted."""

    @abc.abstractmethod
    def head(self, name: str, size: int) -> bytes:
        """The first ``size`` bytes of ``name`` (fewer when it is shorter)."""

    @abc.abstractmethod
    def get(self, name: str, dest: Path) -> None:
        """The object ``name`` into the file ``dest`` (0600, in place only once whole)."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove ``name``; one already gone is no error."""


class Cloud(abc.ABC):
    """One cloud's verbs for one cluster.

    :param cluster: the cluster directory (its definition is ``cfg``).
    :param ledger: where every change (or, in a dry run, planned change) is recorded.
    :param concurrency: how many independent creations run at once.
    :param timeout: seconds any single wait may take.
    :param ssh_keys: the operator's private keys for the bastion (none: the agent).
    """

    #: how messages name the cloud
    where: str = "the cloud"
    #: whether the masters must be on distinct hosts (a hard anti-affinity group): then a
    #: restore removes a lost master before its replacement boots, so that it needs one host
    #: more than the masters, as an upgrade does, not twice as many
    masters_on_distinct_hosts: bool = False

    def __init__(self, cluster: ClusterDir, cfg: ClusterConfig, *, ledger: Ledger | None = None,
                 concurrency: int = 8, timeout: float = 900, ssh_keys: tuple = ()):
        self.cluster = cluster
        self.cfg = cfg
        self.name = cfg.name
        self.ledger = ledger or Ledger()
        self.concurrency = concurrency
        self.timeout = timeout
        self.ssh_keys = tuple(ssh_keys)

    @property
    def dry(self) -> bool:
        """Whether this is a dry run: changes are recorded in the ledger, not made."""
        return self.ledger.dry_run

    def progress(self, message: str) -> None:
        """Tell the operator ``message`` (through the ledger's progress callback)."""
        self.ledger.progress(message)

    def parallel(self, tasks: list[Callable[[], object]]) -> list:
        """Run ``tasks`` concurrently; every task finishes, then the first error is raised.

        :returns: the tasks' results, in order.
        """
        if self.concurrency <= 1 or len(tasks) <= 1:
            return [t() for t in tasks]
        with cf.ThreadPoolExecutor(self.concurrency) as pool:
            futures = [pool.submit(t) for t in tasks]
            cf.wait(futures)
        errors = [f.exception() for f in futures if f.exception()]
        if errors:
            raise errors[0]
        return [f.result() for f in futures]

    def status(self, name: str, role: str, **kw) -> NodeStatus:
        """A :class:`NodeStatus` for the node ``name``, its index parsed from the name."""
        parsed = parse_node_name(self.name, name)
        return NodeStatus(name, role, parsed[1] if parsed else 0, **kw)

    # -- what a cloud implements ----------------------------------------------------------------
    @abc.abstractmethod
    def prepare(self, nodes: list[Node]) -> Preflight:
        """Every reason this cloud cannot take ``nodes``, and the image they boot from;
        creates nothing."""

    def stand_in_credential(self) -> CloudCredential | None:
        """The in-cluster cloud credential's stand-in (same shape) for sizing user_data before
        it exists; None when the cluster has none."""
        return None

    @abc.abstractmethod
    def ensure_infrastructure(self, pre: Preflight, nodes: list[Node]) -> Infra:
        """Whatever ``nodes`` need before any of them boots (network, security, groups, the
        API's address).

        :param pre: a :meth:`prepare` with no problems.
        """

    def boot_groups(self, nodes: list[Node]) -> list[list[Node]]:
        """Nodes that must boot one after another share a group; groups run concurrently."""
        return [[n] for n in nodes]

    def prepare_node(self, node: Node, infra: Infra) -> None:  # noqa: B027  (most: nothing)
        """What ``node``'s server needs and its placement does not depend on (OpenStack: its
        port and volume), made ahead: nodes that boot one after another (a group of
        :meth:`boot_groups`) then wait on each other's servers only. Idempotent; not called in
        a dry run (:meth:`ensure_node` makes whatever is missing)."""

    def place_node(self, node: Node, user_data: bytes, infra: Infra) -> None:
        """Create ``node``'s server and return once the cloud has chosen its host, so that the
        next member of its boot group can be placed (OpenStack, whose scheduler sees a
        member's host only once a compute has claimed it); :meth:`ensure_node` then waits
        for it to run. Not called in a dry run. By default, :meth:`ensure_node`."""
        self.ensure_node(node, user_data, infra)

    @abc.abstractmethod
    def ensure_node(self, node: Node, user_data: bytes | None, infra: Infra) -> None:
        """The node exists and runs (``user_data`` is None only in a dry run)."""

    def wait_ready(self, nodes: list[Node]) -> None:  # noqa: B027  (most clouds: nothing)
        """Wait until ``nodes`` have booted.

        :raises NodeFailed: naming those that will not.
        """

    @abc.abstractmethod
    def ensure_api_members(self, masters: list[Node], infra: Infra) -> None:
        """The API load balancer exists with exactly ``masters`` as members."""

    def attach_public_address(self, node: Node, infra: Infra) -> str | None:
        """Give ``node`` (the bastion) its public address, moved to it when it was replaced.

        :returns: the address, or None where the cloud has none (a dry run, the local cloud).
        """
        return None

    @abc.abstractmethod
    def nodes(self) -> list[NodeStatus]:
        """The cluster's nodes as the cloud has them, sorted by name."""

    @abc.abstractmethod
    def delete_node(self, name: str) -> None:
        """Remove the node ``name`` and what is its alone (port, volume, disk); waits until
        it is gone."""

    @abc.abstractmethod
    def console_log(self, name: str) -> str:
        """The node's serial console as the cloud keeps it (the whole log).

        :raises CloudError: when the node has none.
        """

    @abc.abstractmethod
    def destroy(self) -> DestroyResult:
        """Remove everything the cluster has in this cloud; what could not be removed is in
        :attr:`DestroyResult.left`."""

    def ingress_address(self) -> str | None:
        """Where clients reach the cluster's ingress (ingress-nginx's Service), where the
        cloud gives it an address of its own; None where it has none (yet)."""
        return None

    def restore_unsupported(self) -> str | None:
        """Why a restore cannot run on this cloud yet (None: it can); see
        :meth:`stage_restore`."""
        return (f"a restore on {self.where} needs somewhere its new masters fetch the "
                "snapshot from (Swift, on OpenStack), which k8simg has not yet")

    def stage_restore(self, nodes: list[str], path: Path) -> str:
        """Put the file ``path`` (a snapshot encrypted for the trip) where the restoring nodes
        ``nodes`` fetch it at first boot; returns its URL. What an earlier staging of the same
        restore put there stays until :meth:`unstage_restore` (a node it was staged for may
        still be booting).

        :raises CloudError: when this cloud cannot serve one yet.
        """
        raise CloudError(self.restore_unsupported() or "")

    def unstage_restore(self, nodes: list[str]) -> None:  # noqa: B027  (nothing staged)
        """Remove what :meth:`stage_restore` put there for ``nodes``; nothing staged is no
        error."""

    def object_container(self, name: str) -> ObjectContainer:
        """The container ``name`` of the cloud's object store (nothing is made or asked yet).

        :raises CloudError: when this cloud has no object store.
        """
        raise CloudError(f"{self.where} has no object store to keep snapshots in "
                         f"(swift:{name}): keep them in a folder (--to DIR)")

    def unreachable(self) -> str | None:
        """Why this machine can never reach the nodes' private addresses, by the cluster's
        own design; None when :meth:`reach` can (once the nodes are up)."""
        return f"the nodes' network on {self.where} is not reachable from here"

    @contextlib.contextmanager
    def reach(self) -> Iterator[Reach]:
        """How this machine reaches the nodes' private addresses, open for the ``with`` block.

        :raises CloudError: when they cannot be reached from here.
        """
        raise CloudError(f"the nodes' network on {self.where} is not reachable from here")
        yield Reach()  # pragma: no cover  (a generator for contextmanager)
