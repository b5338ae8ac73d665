"""A node's life in the cluster, through its cloud: booted with its Ignition config, gated on
Ready where the Kubernetes API can be asked, and retired (cordoned, drained with
PodDisruptionBudgets honoured, deleted). Scale-down (:mod:`k8simg.ops.deploy`) and the rolling
upgrade (:mod:`k8simg.ops.upgrade`) retire a node by this one path.

A gate that cannot be observed is never passed silently: it is refused, or (with
``skip_unobservable``, or on an image without Kubernetes, where nothing runs to drain) named as
skipped.
"""

import functools
from collections.abc import Callable

from k8simg.clouds.base import Cloud, Infra
from k8simg.errors import K8simgError
from k8simg.model.cluster import ClusterDir
from k8simg.model.plan import Node
from k8simg.ops.drain import ApiAccess, DrainResult, api_access, cordon, drain, wait_ready

Events = Callable[[str, dict], None]


def boot_tasks(cloud: Cloud, nodes: list[Node], user_data: dict[str, bytes],
               infra: Infra, *, dry: bool = False) -> list[Callable[[], list[str | None]]]:
    """One task per boot group of ``nodes`` (:meth:`Cloud.boot_groups`), for
    :meth:`Cloud.parallel`: a group's ports and volumes at once, its servers placed in turn,
    then each ensured; each task returns the cloud's warnings. The nodes are not waited for."""
    def in_turn(group: list[Node]) -> Callable[[], list[str | None]]:
        def boot() -> list[str | None]:
            if len(group) > 1 and not dry:
                cloud.parallel([functools.partial(cloud.prepare_node, n, infra)
                                for n in group])
                for n in group:
                    cloud.place_node(n, user_data.get(n.name), infra)
            return [cloud.ensure_node(n, user_data.get(n.name), infra) for n in group]
        return boot
    return [in_turn(g) for g in cloud.boot_groups(nodes)]


class Unobservable(K8simgError):
    """Refused before deleting anything: the Kubernetes API cannot be asked to drain."""

    exit_code = 4


class Lifecycle:
    """Boot, gate and retire nodes of one cluster.

    :param has_kubernetes: whether the nodes' image carries Kubernetes.
    :param skip_unobservable: go on where a gate cannot be observed (named as skipped).
    :param timeout: seconds a boot, a Ready gate or a drain may take.
    :param kube: makes the Kubernetes API client (default: the cluster's admin kubeconfig).
    :param events: receives ``(event, details)``: ``node-up``, ``node-ready``,
        ``gate-skipped``, ``drain-progress``.
    """

    def __init__(self, cluster: ClusterDir, cloud: Cloud, *, has_kubernetes: bool,
                 skip_unobservable: bool = False, timeout: float = 1800,
                 kube: Callable[[], object] | None = None, events: Events = lambda _e, _d: None):
        self.cluster = cluster
        self.cloud = cloud
        self.has_kubernetes = has_kubernetes
        self.skip = skip_unobservable
        self.timeout = timeout
        self.make_kube = kube
        self.emit = events
        self.skipped: list[str] = []
        self._access: ApiAccess | None = None

    def access(self) -> ApiAccess:
        """The API client, or why it cannot be asked (asked once)."""
        if self._access is None:
            self._access = api_access(self.cluster, self.cloud.cfg,
                                      has_kubernetes=self.has_kubernetes, make=self.make_kube)
        return self._access

    def require_api(self, subject: str) -> ApiAccess:
        """The API access, where nodes must be drained before they go.

        :param subject: what the refusal says was not done (and to which nodes).

        :raises Unobservable: when it cannot be asked, Kubernetes runs on the nodes, and
            ``skip_unobservable`` was not given.
        """
        access = self.access()
        if access.api is None and not (self.skip or access.nothing_runs):
            raise Unobservable(
                f"{subject}: the Kubernetes API cannot be asked to drain them "
                f"({access.why_not}). Run again once it answers, or with --skip-unobservable to "
                "delete them undrained (only where nothing runs Kubernetes)")
        return access

    def skip_gate(self, gate: str, why: str) -> None:
        """Name ``gate`` as skipped (once in :attr:`skipped`) and tell the events why
        (``gate-skipped``)."""
        if gate not in self.skipped:
            self.skipped.append(gate)
        self.emit("gate-skipped", {"gate": gate, "why": why})

    def boot(self, node: Node, user_data: bytes, infra: Infra) -> str | None:
        """Boot ``node`` and wait until the cloud says it is up.

        :returns: the cloud's warning about the node, if any.
        :raises NodeFailed: when its boot fails.
        """
        warning = self.cloud.ensure_node(node, user_data, infra)
        self.cloud.wait_ready([node])
        self.emit("node-up", {"node": node.name})
        return warning

    def boot_all(self, nodes: list[Node], user_data: dict[str, bytes], infra: Infra
                 ) -> list[str]:
        """Boot ``nodes`` side by side (as a deploy boots them) and wait until the cloud says
        each is up.

        :returns: the cloud's warnings about them.
        :raises NodeFailed: naming those whose boot fails.
        """
        said = self.cloud.parallel(boot_tasks(self.cloud, nodes, user_data, infra))
        self.cloud.wait_ready(nodes)
        for n in nodes:
            self.emit("node-up", {"node": n.name})
        return [w for group in said for w in group if w]

    def ready_gate(self, node: Node, gate: str = "node-ready") -> None:
        """The node registered and Ready (for a master: its API server and kubelet up), or
        the gate named as skipped where the API cannot be asked.

        :raises Unobservable: where it cannot be asked and skipping was not allowed.
        """
        access = self.require_api(f"{node.name} was not gated on Ready")
        if access.api is None:
            self.skip_gate(gate, access.why_not)
            return
        wait_ready(access.api, node.name, timeout=self.timeout)
        self.emit("node-ready", {"node": node.name})

    def retire(self, nodes: list[Node | str], subject: str,
               before_delete: Callable[[str, DrainResult | None], None] = lambda _n, _r: None
               ) -> None:
        """Cordon every one of ``nodes`` first (so that pods evicted from one do not land on
        the next to go), then drain and delete each in turn.

        :param subject: what a refusal says was not done, naming the nodes.
        :param before_delete: told each node's drain (None: not drained) before it is deleted.
        :raises Unobservable: before anything changed, when they cannot be drained.
        :raises DrainError: when a drain does not finish in time (the node stays cordoned).
        """
        names = [n if isinstance(n, str) else n.name for n in nodes]
        access = self.require_api(subject)
        if access.api is None:
            self.skip_gate("drain", access.why_not)
        else:
            from kubernetes import client

            core = client.CoreV1Api(access.api)
            for name in names:
                cordon(core, name)
        for name in names:
            done = None
            if access.api is not None:
                done = drain(access.api, name, timeout=self.timeout,
                             progress=lambda m: self.emit("drain-progress", {"message": m}))
            before_delete(name, done)
            self.cloud.delete_node(name)
