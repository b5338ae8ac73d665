"""``k8simg upgrade``: roll the cluster onto the image its ``cluster.yaml`` names, by replacing
nodes, never by changing them.

Masters (or dedicated etcd members) first, one at a time, surge by one: the replacement (the
role's next index: a new name, address and certificates) boots with its etcd joining as a
learner (:func:`k8simg.etcd.replace_member`), is promoted, joins the API load balancer, then the
old member leaves etcd (leadership moved off it first), the load balancer and the cloud. Then
workers: the replacement boots and (where the API can be asked) must be Ready, the old one is
cordoned and drained (:mod:`k8simg.drain`), then deleted. Which nodes are stale is read from
the cloud (each node carries its image), and the cluster's node set in ``state.json`` follows
every step, so a killed upgrade run again goes on where it stopped and never replaces a node
twice.

Gates that cannot be observed are named as skipped, never as passed: etcd when its members
cannot be reached from here (``--skip-unobservable`` says the operator knows, e.g. on the test
cloud whose computes run nothing), the Kubernetes API on an image baked without Kubernetes.
"""

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from k8simg.errors import K8simgError
from k8simg.plan import Node, etcd_members, next_node
from k8simg.provider import Deployment

EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_ABORTED = 4  # a preflight refused; the cluster is as it was
EXIT_NOTHING = 10  # every node already runs the target image


class UpgradeAborted(K8simgError):
    """Refused before changing anything (or between whole steps): safe to retry."""

    exit_code = EXIT_ABORTED


@dataclass(frozen=True)
class Step:
    old: str
    role: str
    image: str


@dataclass
class UpgradeResult:
    target: str
    replaced: list[tuple[str, str]] = field(default_factory=list)
    skipped_gates: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_DONE if self.replaced else EXIT_NOTHING


class Upgrade:
    """One cluster's rolling upgrade through its provider.

    :param events: receives ``(event, details)`` for every step (CI's JSON lines).
    :param skip_unobservable: go on where a gate cannot be observed (named as skipped).
    :param kube: makes the Kubernetes API client (default: from the cluster's admin.conf).
    """

    def __init__(self, deployment: Deployment, *, max_surge: int = 1, max_unavailable: int = 0,
                 skip_unobservable: bool = False, timeout: float = 1800,
                 events: Callable[[str, dict], None] = lambda _e, _d: None,
                 kube: Callable[[], object] | None = None):
        if max_surge < 0 or max_unavailable < 0 or max_surge + max_unavailable < 1:
            raise UpgradeAborted("--max-surge and --max-unavailable cannot both be 0: no worker "
                                 "could ever be replaced")
        self.d = deployment
        self.p = deployment.provider
        self.cluster = deployment.cluster
        self.cfg = deployment.cfg
        self.max_surge = max_surge
        self.max_unavailable = max_unavailable
        self.skip = skip_unobservable
        self.timeout = timeout
        self.emit = events
        self.kube_client = kube

    # ------------------------------------------------------------------ planning
    def plan(self) -> tuple[str, list[Step]]:
        """The target image and the nodes to replace, in order (etcd members first).

        :raises UpgradeAborted: when the cloud's preflight fails (nothing changed).
        """
        problems = self.p.preflight(self.d.nodes)
        if problems:
            raise UpgradeAborted(f"preflight on {self.p.where} failed; nothing was changed:\n"
                                 + "\n".join(f"  {f}: {m}" for f, m in problems))
        target = self.p.target_image()
        have = {n.name: n for n in self.p.nodes()}
        steps = []
        order = {"etcd": 0, "master": 1, "worker": 2, "bastion": 3}
        for node in sorted(self.cluster.nodes(self.cfg), key=lambda n: (order[n.role], n.index)):
            status = have.get(node.name)
            if status is None or status.image == target:
                continue
            steps.append(Step(node.name, node.role, status.image))
        return target, steps

    # ------------------------------------------------------------------ running
    def run(self) -> UpgradeResult:
        target, steps = self.plan()
        result = UpgradeResult(target)
        state = self.cluster.state().get("upgrade")
        if not steps and not state:
            self.emit("nothing-to-do", {"image": target})
            return result
        self.emit("plan", {"image": target, "replace": [s.old for s in steps]})
        self.cluster.save_state(upgrade={**(state or {}), "image": target})
        if self.cluster.state().get("nodes") is None:
            self.cluster.save_nodes(self.cluster.nodes(self.cfg))
        self.p.ensure_infrastructure(self.cluster.nodes(self.cfg))
        self.p.ensure_api_address()
        # First what a killed run left half done (an old node gone, its replacement not up),
        # so capacity is whole again before anything else leaves.
        self.finish_interrupted(result)
        if state:
            self.ensure_bastion(result)
        masters = [s for s in steps if s.role in ("master", "etcd")]
        stacked = [n for n in self.cluster.nodes(self.cfg) if n.role in ("master", "etcd")]
        if masters and len([n for n in stacked if n.role == "master"]) == 1 \
                and not self.cfg.dedicated_etcd:
            self.emit("warning", {"message": "single master: the Kubernetes API is down from "
                                  "the moment the old master leaves the load balancer until "
                                  "the new one answers"})
        with contextlib.ExitStack() as open_:
            etcd = self.etcd(result, open_) if masters else None
            if etcd is not None:
                self.snapshot(etcd)
            for step in masters:
                self.replace_control_plane(step, etcd, result)
        workers = [s for s in steps if s.role == "worker"]
        size = self.max_surge + self.max_unavailable
        for i in range(0, len(workers), size):
            self.replace_workers(workers[i:i + size], result)
        for step in steps:
            if step.role == "bastion":
                self.replace_bastion(step, result)
        self.cluster.drop_state("upgrade")
        self.emit("done", {"image": target, "replaced": [list(r) for r in result.replaced],
                           "skipped_gates": result.skipped_gates})
        return result

    def skipped(self, result: UpgradeResult, gate: str, why: str) -> None:
        if gate not in result.skipped_gates:
            result.skipped_gates.append(gate)
        self.emit("gate-skipped", {"gate": gate, "why": why})

    def etcd(self, result: UpgradeResult, open_: contextlib.ExitStack):
        """An etcd client through the provider's way in (the local cloud's namespace, the
        bastion's SSH tunnel on OpenStack), open until ``open_`` closes; or None (gates
        skipped)."""
        try:
            return open_.enter_context(self.p.etcd_client("apiserver-etcd-client"))
        except K8simgError as e:
            if not self.skip:
                raise UpgradeAborted(f"etcd cannot be reached from here ({e}); replacing "
                                     "masters without its membership changes would break it. "
                                     "--skip-unobservable only where nothing runs etcd") from None
            self.skipped(result, "etcd", str(e))
            return None

    def snapshot(self, etcd) -> None:
        from k8simg.etcd import planned_endpoints

        dest = self.cluster.path / "backups" / time.strftime("etcd-%Y%m%dT%H%M%SZ.db",
                                                             time.gmtime())
        dest.parent.mkdir(mode=0o700, exist_ok=True)
        etcd.snapshot(dest, planned_endpoints(self.cluster)[0])
        self.emit("etcd-snapshot", {"path": str(dest)})

    def _add_node(self, role: str) -> Node:
        """The replacement joins the node set (and gets its certificates) before it exists,
        so a run killed from here on finds it in the state."""
        nodes = self.cluster.nodes(self.cfg)
        new = next_node(self.cfg, role, nodes)
        self.cluster.save_nodes([*nodes, new])
        self.cluster.pki(self.cfg).ensure()
        return new

    def _replacement_for(self, old: str, role: str) -> Node:
        """The replacement an earlier, interrupted run chose for ``old``, or a new one."""
        state = self.cluster.state()
        chosen = (state.get("upgrade") or {}).get("replacing", {})
        if old in chosen:
            return next(n for n in self.cluster.nodes(self.cfg) if n.name == chosen[old])
        new = self._add_node(role)
        up = self.cluster.state().get("upgrade") or {}
        up.setdefault("replacing", {})[old] = new.name
        self.cluster.save_state(upgrade=up)
        return new

    def _drop_node(self, name: str) -> None:
        nodes = [n for n in self.cluster.nodes(self.cfg) if n.name != name]
        self.cluster.save_nodes(nodes)
        up = self.cluster.state().get("upgrade") or {}
        up.get("replacing", {}).pop(name, None)
        self.cluster.save_state(upgrade=up)

    def user_data(self, node: Node) -> bytes:
        from k8simg.ignition.render import render_context, render_user_data

        nodes = self.cluster.nodes(self.cfg)
        joining = frozenset({node.name}) if node in etcd_members(nodes, self.cfg) else frozenset()
        return render_user_data(render_context(self.cluster, nodes=nodes, joining=joining), node)

    def boot(self, node: Node) -> None:
        self.p.ensure_node(node, self.user_data(node))
        self.p.wait_ready([node])
        self.emit("node-up", {"node": node.name})

    def masters_now(self, without: str | None = None) -> list[Node]:
        return [n for n in self.cluster.nodes(self.cfg)
                if n.role == "master" and n.name != without]

    def replace_control_plane(self, step: Step, etcd, result: UpgradeResult) -> None:
        from k8simg.etcd import replace_member

        old = next(n for n in self.cluster.nodes(self.cfg) if n.name == step.old)
        new = self._replacement_for(old.name, old.role)
        self.emit("replace", {"node": old.name, "with": new.name, "role": old.role})
        is_master = old.role == "master"

        def swap_in_lb():
            if is_master:
                self.ready_gate(new, result, gate="kubernetes-api")
                self.p.ensure_api_members(self.masters_now())  # old and new
                self.emit("lb-member-added", {"node": new.name})
                self.p.ensure_api_members(self.masters_now(without=old.name))
                self.emit("lb-member-removed", {"node": old.name})

        def stop(node):
            self.p.delete_node(node.name)

        if etcd is not None and old in etcd_members(self.cluster.nodes(self.cfg), self.cfg):
            from k8simg.etcd import client_url

            voters = len(etcd_members(self.cluster.nodes(self.cfg), self.cfg)) - 1
            replace_member(
                etcd, old, new, voters=voters, timeout=self.timeout,
                start=lambda n, _initial: self.boot(n), stop=stop,
                endpoints=lambda: [client_url(n) for n in etcd_members(
                    self.cluster.nodes(self.cfg), self.cfg)],
                before_remove=swap_in_lb,
                events=lambda e, d: self.emit(f"etcd-{e}", d))
        else:
            self.boot(new)
            swap_in_lb()
            stop(old)
        self.emit("deleted", {"node": old.name})
        self._drop_node(old.name)
        result.replaced.append((old.name, new.name))

    def kube(self):
        """A Kubernetes API client with the cluster's admin kubeconfig, or None when the API
        cannot be asked (then the reason is in :attr:`no_api`)."""
        if hasattr(self, "_kube"):
            return self._kube
        from k8simg.drain import api_access

        access = api_access(self.cluster, self.cfg, self.p.warnings, self.kube_client)
        self._kube, self.no_api = access.api, access.why_not
        if self._kube is None and not self.skip and not access.nothing_runs:
            raise UpgradeAborted(f"the Kubernetes API cannot be asked: {self.no_api}; workers "
                                 "would be deleted undrained. --skip-unobservable only where "
                                 "nothing runs Kubernetes")
        return self._kube

    def replace_workers(self, batch: list[Step], result: UpgradeResult) -> None:
        """One batch of up to maxSurge + maxUnavailable workers, as a Deployment rolls: the
        first maxUnavailable old nodes are drained and deleted before their replacements
        exist (capacity dips by that many), then every replacement boots, and each remaining
        old node goes once its replacement is Ready (capacity peaks maxSurge above)."""
        olds = [next(n for n in self.cluster.nodes(self.cfg) if n.name == s.old) for s in batch]
        pairs = [(old, self._replacement_for(old.name, old.role)) for old in olds]
        for old, new in pairs:
            self.emit("replace", {"node": old.name, "with": new.name, "role": old.role})
        early = pairs[:self.max_unavailable]
        for old, _new in early:
            # Its replacement stays recorded until it is up: a run killed in between boots it.
            self.retire(old, result)
        self.p.parallel([lambda n=new: self.boot(n) for _, new in pairs])
        for old, new in pairs:
            self.ready_gate(new, result)
            if (old, new) not in early:
                self.retire(old, result)
            self._drop_node(old.name)
            result.replaced.append((old.name, new.name))

    def ready_gate(self, node: Node, result: UpgradeResult, gate: str = "node-ready") -> None:
        """The node registered and Ready (for a master: its API server and kubelet up)."""
        api = self.kube()
        if api is None:
            self.skipped(result, gate, self.no_api)
            return
        from k8simg.drain import wait_ready

        wait_ready(api, node.name, timeout=self.timeout)
        self.emit("node-ready", {"node": node.name})

    def retire(self, old: Node, result: UpgradeResult) -> None:
        """Cordon and drain (where the API can be asked), then delete."""
        api = self.kube()
        if api is None:
            self.skipped(result, "drain", self.no_api)
        else:
            from k8simg.drain import drain

            done = drain(api, old.name, timeout=self.timeout,
                         progress=lambda m: self.emit("drain-progress", {"message": m}))
            self.emit("drained", {"node": old.name, "evicted": done.evicted,
                                  "unmanaged": done.unmanaged, "refusals": done.refusals})
        self.p.delete_node(old.name)
        self.emit("deleted", {"node": old.name})

    def replace_bastion(self, step: Step, result: UpgradeResult) -> None:
        """In place, last: its name, address and floating IP are the cluster's fixed way in
        (and its host key, from the PKI, stays the same, so operators' known_hosts holds).
        SSH to the cluster is down while it boots; nothing the cluster serves depends on it."""
        node = next(n for n in self.cluster.nodes(self.cfg) if n.name == step.old)
        self.emit("replace", {"node": node.name, "with": node.name, "role": node.role})
        self.emit("warning", {"message": f"{node.name} is replaced in place: SSH to the "
                              "cluster is unavailable until the new one is up"})
        self.p.delete_node(node.name)
        self.emit("deleted", {"node": node.name})
        self.boot(node)
        self.p.finish(self.cluster.nodes(self.cfg))
        result.replaced.append((node.name, node.name))

    def ensure_bastion(self, result: UpgradeResult) -> None:
        """A run killed between the old bastion's deletion and the new one's boot."""
        bastion = [n for n in self.cluster.nodes(self.cfg) if n.role == "bastion"]
        if bastion and bastion[0].name not in {n.name for n in self.p.nodes()}:
            self.emit("resume", {"node": bastion[0].name, "with": bastion[0].name})
            self.boot(bastion[0])
            self.p.finish(self.cluster.nodes(self.cfg))
            result.replaced.append((bastion[0].name, bastion[0].name))

    def finish_interrupted(self, result: UpgradeResult) -> None:
        """A replacement chosen by an interrupted run whose old node is already gone."""
        up = self.cluster.state().get("upgrade") or {}
        have = {n.name for n in self.p.nodes()}
        for old, new in list(up.get("replacing", {}).items()):
            if old not in have:
                node = next(n for n in self.cluster.nodes(self.cfg) if n.name == new)
                self.emit("resume", {"node": old, "with": new})
                self.boot(node)
                if node.role == "worker":
                    self.ready_gate(node, result)
                self._drop_node(old)
                result.replaced.append((old, new))

