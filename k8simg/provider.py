"""What ``deploy``, ``destroy`` (and ``upgrade``) need from a cloud, and the one orchestration
that drives it, the same for OpenStack (``k8simg.openstack.deploy``) and the local QEMU cloud
(``k8simg.local.provider``).

A provider turns task-level verbs into its cloud's resources: make sure the cluster's
infrastructure exists, give the API its address, make sure one node exists (booted with its
Ignition config), keep the API load balancer's members, list the nodes it has, delete one, and
destroy everything. :class:`Deployment` decides what happens in which order: preflight (every
problem at once, nothing created), infrastructure, the API address into the certificates, every
node's config rendered, nodes booted (the provider says which must boot one after another),
the load balancer's members, nodes beyond the plan removed, the kubeconfigs written.
"""

import abc
import concurrent.futures as cf
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from k8simg.cluster import ClusterDir
from k8simg.errors import K8simgError, RenderError
from k8simg.plan import Node

if TYPE_CHECKING:
    from k8simg.etcd import Etcd


@dataclass(frozen=True)
class Change:
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
        change = Change(action, kind, name, detail)
        with self._lock:
            self.changes.append(change)
        self.progress(("would " if self.dry_run else "") + str(change).strip())


class PreflightError(K8simgError):
    """The cloud cannot take this cluster; nothing was created.

    :param where: the cloud, as the message names it.
    :param problems: ``(field, message)`` for every problem found.
    """

    exit_code = 2

    def __init__(self, where: str, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__(f"preflight on {where} failed; nothing was created:\n"
                         + "\n".join(f"  {f}: {m}" for f, m in problems))


class NodeFailed(K8simgError):
    """Nodes did not come up; each entry names the node and what its console showed."""

    def __init__(self, failures: list[tuple[str, str]]):
        self.failures = failures
        super().__init__("\n".join(f"node {name} failed: {why}" for name, why in failures))


@dataclass
class DeployResult:
    changes: list
    api_endpoint: str | None = None
    kubeconfig: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class DestroyResult:
    removed: list[str]
    left: list[str]


@dataclass(frozen=True)
class NodeStatus:
    """A node as the cloud sees it.

    :param state: the cloud's word (OpenStack's server status; locally ``booting``, ``ready``,
        ``failed`` or ``stopped``).
    :param image: what it was booted from (Glance ID; locally the image file and its sha256).
    :param console: where its serial console is (a file locally; the cloud's console API).
    """

    name: str
    role: str
    state: str
    address: str | None
    image: str
    generation: int = 1
    console: str = ""

    @property
    def index(self) -> int:
        tail = self.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else 0


class Provider(abc.ABC):
    """One cloud's verbs for one cluster.

    :param dry_run: record what would change, touch nothing.
    :param concurrency: how many independent creations run at once.
    :param timeout: seconds any single wait may take.
    """

    #: how messages name the cloud
    where: str = "the cloud"

    def __init__(self, cluster: ClusterDir, *, dry_run: bool = False, concurrency: int = 8,
                 timeout: float = 900, progress: Callable[[str], None] = lambda _m: None,
                 ssh_keys: tuple = ()):
        self.cluster = cluster
        self.ssh_keys = tuple(ssh_keys)  # the operator's keys for the bastion (none: the agent)
        self.cfg = cluster.load()
        self.name = self.cfg.name
        self.ledger = Ledger(dry_run=dry_run, progress=progress)
        self.progress = progress
        self.concurrency = concurrency
        self.timeout = timeout
        self.warnings: list[str] = []

    @property
    def dry(self) -> bool:
        return self.ledger.dry_run

    def parallel(self, tasks: list[Callable[[], object]]) -> list:
        """Run ``tasks`` concurrently; every task finishes, then the first error is raised."""
        if self.concurrency <= 1 or len(tasks) <= 1:
            return [t() for t in tasks]
        with cf.ThreadPoolExecutor(self.concurrency) as pool:
            futures = [pool.submit(t) for t in tasks]
            cf.wait(futures)
        errors = [f.exception() for f in futures if f.exception()]
        if errors:
            raise errors[0]
        return [f.result() for f in futures]

    # -- what a provider implements ----------------------------------------------------------
    @abc.abstractmethod
    def preflight(self, nodes: list[Node]) -> list[tuple[str, str]]:
        """Every reason this cloud cannot take the plan, as ``(field, message)``; creates
        nothing. Warnings go to :attr:`warnings`."""

    def stand_in_credential(self):
        """The in-cluster cloud credential's stand-in (same shape) for sizing user_data before
        it exists; None when the cluster has none."""
        return None

    @abc.abstractmethod
    def ensure_infrastructure(self, nodes: list[Node]) -> None:
        """Whatever the nodes need before any of them boots (network, security, groups)."""

    @abc.abstractmethod
    def ensure_api_address(self) -> str | None:
        """The API's externally reachable address, when it differs from the planned VIP (it
        goes into the API server's certificate); None otherwise."""

    def boot_groups(self, nodes: list[Node]) -> list[list[Node]]:
        """Nodes that must boot one after another share a group; groups run concurrently."""
        return [[n] for n in nodes]

    @abc.abstractmethod
    def ensure_node(self, node: Node, user_data: bytes | None) -> None:
        """The node exists and runs (``user_data`` is None only in a dry run)."""

    def wait_ready(self, nodes: list[Node]) -> None:  # noqa: B027  (most clouds: nothing)
        """Wait until ``nodes`` have booted; raise :class:`NodeFailed` naming those that
        will not."""

    @abc.abstractmethod
    def ensure_api_members(self, masters: list[Node]) -> None:
        """The API load balancer exists with exactly ``masters`` as members."""

    @abc.abstractmethod
    def target_image(self) -> str:
        """The image new nodes boot from, as :class:`NodeStatus` names images (after
        :meth:`preflight`)."""

    @abc.abstractmethod
    def nodes(self) -> list[NodeStatus]:
        """The cluster's nodes as the cloud has them."""

    @abc.abstractmethod
    def delete_node(self, name: str) -> None:
        """Remove the node ``name`` and what is its alone (port, volume, disk)."""

    def finish(self, nodes: list[Node]) -> None:  # noqa: B027  (most clouds: nothing)
        """After every node is up (e.g. the bastion's floating IP)."""

    @abc.abstractmethod
    def destroy(self) -> DestroyResult:
        """Remove everything the cluster has in this cloud."""

    def in_network(self, argv: list[str]) -> list[str]:
        """``argv`` wrapped so it runs where the nodes' private addresses are reachable.

        :raises K8simgError: when this provider cannot reach them from here.
        """
        raise K8simgError(f"the nodes' network on {self.where} is not reachable from here "
                          "(on OpenStack it is reached through the bastion)")

    @contextlib.contextmanager
    def etcd_client(self, identity: str = "healthcheck-client") -> Iterator["Etcd"]:
        """An etcd client that reaches the members from the operator's machine, open for the
        ``with`` block.

        :raises K8simgError: when the members cannot be reached from here.
        """
        from k8simg.etcd import Etcd

        self.in_network(["true"])
        yield Etcd(self.cluster.pki_dir, wrap=self.in_network, identity=identity)


class Deployment:
    """``deploy`` and ``destroy`` of one cluster through its provider."""

    def __init__(self, cluster: ClusterDir, provider: Provider, *,
                 skip_unobservable: bool = False, drain_timeout: float = 600,
                 kube: Callable[[], object] | None = None):
        """:param skip_unobservable: remove surplus workers undrained when the Kubernetes API
            cannot be asked (said in the warnings), instead of refusing to.
        :param kube: makes the Kubernetes API client (default: from the admin kubeconfig)."""
        self.cluster = cluster
        self.provider = provider
        self.cfg = provider.cfg
        self.nodes = cluster.nodes(self.cfg)
        self.skip_unobservable = skip_unobservable
        self.drain_timeout = drain_timeout
        self.kube = kube

    @classmethod
    def for_cluster(cls, cluster: ClusterDir, cloud: str | None = None, *,
                    skip_unobservable: bool = False, drain_timeout: float = 600,
                    kube: Callable[[], object] | None = None, **kw) -> "Deployment":
        """The deployment on the cluster's cloud (``cloud`` overrides ``cloud:``); ``kw`` go
        to the provider."""
        cfg = cluster.load()
        target = cloud or cfg.cloud
        if target == "local":
            from k8simg.local.provider import LocalProvider

            provider: Provider = LocalProvider(cluster, **kw)
        else:
            from k8simg.openstack.deploy import OpenStackProvider

            provider = OpenStackProvider(cluster, target, **kw)
        return cls(cluster, provider, skip_unobservable=skip_unobservable,
                   drain_timeout=drain_timeout, kube=kube)

    @property
    def ledger(self) -> Ledger:
        return self.provider.ledger

    @property
    def dry(self) -> bool:
        return self.provider.dry

    # ------------------------------------------------------------------ deploy
    def preflight(self) -> None:
        p = self.provider
        problems = p.preflight(self.nodes)
        problems += self.user_data_problems()
        if problems:
            raise PreflightError(p.where, problems)
        for w in p.warnings:
            p.progress(f"warning: {w}")

    def user_data_problems(self) -> list[tuple[str, str]]:
        """Every node's config is rendered and sized before anything is created (certificates
        for new nodes are generated first; nothing else changes)."""
        from k8simg.ignition.render import render_context, render_user_data

        pki = self.cluster.pki()
        if self.dry:
            if not (self.cluster.pki_dir / "ca.crt").exists() or pki.missing():
                self.provider.warnings.append(
                    "certificates for new nodes do not exist yet: their user_data sizes are "
                    "checked when deploy generates them")
                return []
        else:
            created = pki.ensure().created
            if created:
                self.provider.progress(f"generated {len(created)} keys and certificates")
        try:
            ctx = render_context(self.cluster)
        except RenderError as e:
            return [("pki", str(e))]
        if ctx.credential is None:
            ctx.credential = self.provider.stand_in_credential()
        problems = []
        for node in self.nodes:
            try:
                render_user_data(ctx, node)
            except RenderError as e:
                problems.append((f"user_data.{node.name}", str(e).removeprefix(f"{node.name}: ")))
        return problems

    def refresh_pki(self, address: str | None) -> None:
        """Put the API's external address into the state and the API server's certificate."""
        if self.dry or address is None:
            return
        if self.cluster.state().get("api_floating_ip") != address:
            self.cluster.save_state(api_floating_ip=address)
        pki = self.cluster.pki()
        result = pki.ensure()
        if result.created:
            self.provider.progress(f"generated {len(result.created)} keys and certificates")
        if result.stale:
            self.ledger.record("update", "certificate", ", ".join(result.stale),
                               f"SANs now include {address}")
            pki.renew(sorted({s.split("@")[0] for s in result.stale}))

    def render(self) -> dict[str, bytes]:
        from k8simg.ignition.render import render_context, render_user_data

        ctx = render_context(self.cluster)
        return {n.name: render_user_data(ctx, n) for n in self.nodes}

    def deploy(self) -> DeployResult:
        """Create or reconcile everything; a second run changes nothing.

        :raises PreflightError: before anything is created.
        :raises NodeFailed: naming the nodes that did not boot (the rest is in place).
        """
        p = self.provider
        upgrading = self.cluster.state().get("upgrade")
        if upgrading:
            raise K8simgError(f"an upgrade to {upgrading.get('image')} is in progress "
                              f"({self.cluster.state_path}); run `k8simg upgrade "
                              f"{self.cluster.path}` to finish it before deploying")
        self.preflight()
        p.ensure_infrastructure(self.nodes)
        self.refresh_pki(p.ensure_api_address())
        user_data = self.render() if not self.dry else {}
        masters = [n for n in self.nodes if n.role == "master"]

        def in_turn(group):
            return lambda: [p.ensure_node(n, user_data.get(n.name)) for n in group]

        p.parallel([in_turn(g) for g in p.boot_groups(self.nodes)]
                   + [lambda: p.ensure_api_members(masters)])
        if not self.dry:
            p.wait_ready(self.nodes)
        p.finish(self.nodes)
        pki = None if self.dry else self.cluster.pki()
        if pki is not None:
            pki.write_kubeconfigs(self.cluster.kubeconfig_dir)
        # Last: it may refuse (no API to drain through) with everything else in place.
        self.remove_surplus()
        result = DeployResult(self.ledger.changes, warnings=p.warnings)
        if pki is not None:
            result.api_endpoint = pki.ctx.api_server_url
            result.kubeconfig = str(self.cluster.kubeconfig_dir / "admin.conf")
        return result

    def remove_surplus(self) -> None:
        """Scale down: workers beyond ``workers.count`` go, newest (highest index) first, each
        cordoned and drained first (PodDisruptionBudgets honoured, ``k8simg.drain``) as the
        upgrade retires a worker.

        :raises K8simgError: when the Kubernetes API cannot be asked on nodes that run
            Kubernetes, before any worker is deleted (``skip_unobservable`` deletes them
            undrained, and says so in the warnings).
        """
        planned = {n.name for n in self.nodes}
        surplus = sorted((s for s in self.provider.nodes() if s.role == "worker" and
                          s.name not in planned), key=lambda s: s.index, reverse=True)
        if not surplus:
            return
        if self.dry:
            for s in surplus:
                self.ledger.record("delete", "server", s.name,
                                   "beyond workers.count; to be drained first")
            return
        from k8simg.drain import api_access, cordon, drain

        access = api_access(self.cluster, self.cfg, self.provider.warnings, self.kube)
        names = ", ".join(s.name for s in surplus)
        if access.api is None:
            if not (self.skip_unobservable or access.nothing_runs):
                raise K8simgError(
                    f"workers beyond workers.count ({names}) were not removed: the Kubernetes "
                    f"API cannot be asked to drain them ({access.why_not}). Run again once it "
                    "answers, or with --skip-unobservable to delete them undrained")
            warning = f"workers {names} removed without draining: {access.why_not}"
            self.provider.warnings.append(warning)
            self.provider.progress(f"warning: {warning}")
        else:
            # All of them first, so that pods evicted from one do not land on the next to go.
            from kubernetes import client

            core = client.CoreV1Api(access.api)
            for s in surplus:
                cordon(core, s.name)
        for s in surplus:
            detail = "beyond workers.count"
            if access.api is not None:
                done = drain(access.api, s.name, timeout=self.drain_timeout,
                             progress=self.provider.progress)
                detail += (f"; drained: {len(done.evicted)} pod(s) evicted"
                           + (f", {done.refusals} eviction(s) waited for a disruption budget"
                              if done.refusals else ""))
            else:
                detail += "; not drained"
            self.ledger.record("delete", "server", s.name, detail)
            self.provider.delete_node(s.name)

    def destroy(self) -> DestroyResult:
        return self.provider.destroy()
