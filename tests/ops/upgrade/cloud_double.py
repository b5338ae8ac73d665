"""A TEST DOUBLE of a cloud for the worker roll's ordering: servers are entries in a dict, and
each one "boots" by registering as a Node in the Kubernetes API double (NotReady, then Ready a
moment later), as a real kubelet would. It records every boot and delete with the worker count
at that moment, so a test can check the capacity bounds maxSurge and maxUnavailable promise.
The real clouds' code paths are tested elsewhere (the OpenStack test cloud, the local cloud).
"""

import threading

from k8simg.clouds.base import Cloud, DestroyResult, ImageFacts, Infra, NodeStatus, Preflight
from k8simg.model.plan import Node


class Killed(BaseException):
    """Stands for the upgrade process being killed (not an error the upgrade could catch)."""


class CloudDouble(Cloud):
    where = "the cloud test double"

    def __init__(self, cluster, api, image: str, *, kill_before: tuple[str, str] | None = None):
        super().__init__(cluster, cluster.load(), concurrency=4)
        self.api = api
        self.image = image
        self.servers: dict[str, NodeStatus] = {}
        self.log: list[tuple[str, str, int]] = []  # (boot|delete, node, workers after it)
        self.kill_before = kill_before
        self.lock = threading.Lock()

    def place(self, node: Node, image: str) -> None:
        """A node of the cluster as deployed before the upgrade."""
        self.servers[node.name] = NodeStatus(node.name, node.role, node.index, "ACTIVE",
                                             str(node.address), image)
        if node.role != "bastion":
            self.api.add_node(node.name)

    def workers(self) -> int:
        return sum(1 for s in self.servers.values() if s.role == "worker")

    def _maybe_killed(self, verb: str, name: str) -> None:
        if self.kill_before == (verb, name):
            self.kill_before = None
            raise Killed(f"killed before {verb} {name}")

    # -- the Cloud interface ---------------------------------------------------------------
    def prepare(self, nodes) -> Preflight:
        return Preflight([], ImageFacts(self.image, self.image))

    def ensure_infrastructure(self, pre, nodes) -> Infra:
        return Infra()

    def ensure_node(self, node: Node, user_data, infra) -> None:
        if node.name in self.servers:
            return
        self._maybe_killed("boot", node.name)
        assert user_data, f"{node.name} booted without its Ignition config"
        self.servers[node.name] = NodeStatus(node.name, node.role, node.index, "ACTIVE",
                                             str(node.address), self.image)
        with self.lock:
            self.log.append(("boot", node.name, self.workers()))
        self.api.add_node(node.name, ready=False)
        self.api.after(0.3, lambda: self.api.set_ready(node.name))

    def ensure_api_members(self, masters, infra) -> None:
        pass

    def nodes(self) -> list[NodeStatus]:
        return list(self.servers.values())

    def delete_node(self, name: str) -> None:
        if name not in self.servers:
            return
        self._maybe_killed("delete", name)
        del self.servers[name]
        with self.lock:
            self.log.append(("delete", name, self.workers()))
        with self.api.lock:
            self.api.nodes.pop(name, None)

    def console_log(self, name: str) -> str:
        raise NotImplementedError("the test double has no consoles")

    def destroy(self) -> DestroyResult:
        raise NotImplementedError("not part of an upgrade")
