"""``k8simg upgrade``: roll the cluster onto the image its ``cluster.yaml`` names, by replacing
nodes, never by changing them.

Masters (or dedicated etcd members) first, one at a time, surge by one: the replacement (the
role's next index: a new name, address and certificates) boots with its etcd joining as a
learner (:func:`k8simg.ops.membership.replace_member`), is promoted, joins the API load balancer, then the
old member leaves etcd (leadership moved off it first), the load balancer and the cloud. Then
workers: the replacement boots and (where the API can be asked) must be Ready, the old one is
cordoned and drained (:mod:`k8simg.ops.drain`), then deleted. Which nodes are stale is read from
the cloud (each node carries its image), and the cluster's node set in ``state.json`` follows
every step, so a killed upgrade run again goes on where it stopped and never replaces a node
twice.

Gates that cannot be observed are named as skipped, never as passed: etcd when its members
cannot be reached from here (``--skip-unobservable`` says the operator knows, e.g. on the test
cloud whose computes run nothing), the Kubernetes API on an image baked without Kubernetes.
"""

import contextlib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from k8simg.clouds.base import Infra, Preflight, problems_text
from k8simg.errors import K8simgError
from k8simg.ignition.render import render_context, render_user_data
from k8simg.model.cluster import ClusterDir
from k8simg.model.plan import Node, client_url, etcd_members, next_node, peer_url
from k8simg.ops import desired
from k8simg.ops.deploy import RESTORE_MARK, Deployment
from k8simg.ops.desired import Staleness
from k8simg.ops.drain import DrainResult
from k8simg.ops.etcd import Member, etcd_client, version_skew
from k8simg.ops.lifecycle import Lifecycle, boot_tasks
from k8simg.ops.membership import by_peer, preflight, remove_lost_members, replace_member
from k8simg.ops.skew import skew_problems
from k8simg.ops.snapshot import SnapshotError, take
from k8simg.pki import cluster_pki

EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_ABORTED = 4  # a preflight refused; the cluster is as it was
EXIT_NOTHING = 10  # every node already runs the target image
ORDER = {"etcd": 0, "master": 1, "worker": 2, "bastion": 3}


class UpgradeAborted(K8simgError):
    """Refused before changing anything (or between whole steps): safe to retry."""

    exit_code = EXIT_ABORTED


@dataclass(frozen=True)
class Step:
    """One node to replace.

    :param old: the node's name.
    :param image: the image it runs now (as the cloud names images).
    :param why: why it is stale (:class:`k8simg.ops.desired.Staleness`).
    """

    old: str
    role: str
    image: str
    why: Staleness | None = None


@dataclass
class UpgradeResult:
    """What an upgrade did.

    :param target: the image the cluster was rolled onto (as the cloud names images).
    :param replaced: ``(old, new)`` node names in the order replaced (a bastion, replaced in place,
        keeps its name).
    :param skipped_gates: the gates that could not be observed and were skipped.
    """

    target: str
    replaced: list[tuple[str, str]] = field(default_factory=list)
    skipped_gates: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The command's exit status: :data:`EXIT_DONE` when nodes were replaced,
        :data:`EXIT_NOTHING` when none needed to be."""
        return EXIT_DONE if self.replaced else EXIT_NOTHING


class Upgrade:
    """One cluster's rolling upgrade on its cloud.

    :param events: receives ``(event, details)`` for every step (CI's JSON lines).
    :param skip_unobservable: go on where a gate cannot be observed (named as skipped).
    :param kube: makes the Kubernetes API client (default: from the cluster's admin.conf).
    """

    def __init__(self, deployment: Deployment, *, max_surge: int = 1, max_unavailable: int = 0,
                 skip_unobservable: bool = False, timeout: float = 1800,
                 events: Callable[[str, dict], None] = lambda _e, _d: None,
                 kube: Callable[[], object] | None = None, allow_downgrade: bool = False,
                 renew_certs_within: int | None = None, control_plane_surge: int = 1):
        if max_surge < 0 or max_unavailable < 0 or max_surge + max_unavailable < 1:
            raise UpgradeAborted("--max-surge and --max-unavailable cannot both be 0: no worker "
                                 "could ever be replaced")
        if control_plane_surge < 1:
            raise UpgradeAborted("--control-plane-surge must be at least 1: a master's "
                                 "replacement boots before the old master goes")
        self.d = deployment
        self.cloud = deployment.cloud
        self.cluster = deployment.cluster
        self.cfg = deployment.cfg
        self.max_surge = max_surge
        self.max_unavailable = max_unavailable
        self.control_plane_surge = control_plane_surge
        self.skip = skip_unobservable
        self.timeout = timeout
        self.emit = events
        self.kube = kube
        self.allow_downgrade = allow_downgrade
        self.renew_certs_within = renew_certs_within
        self.found_service_network = None  # what the cloud's preflight found (see plan)
        # control-plane nodes an interrupted run was replacing whose servers are gone (see
        # lost_control_plane): left out of renders, voters, endpoints and the load balancer
        self.lost: set[str] = set()

    def nodes(self) -> list[Node]:
        """The cluster's node set as it is now (every step of the upgrade changes it)."""
        return self.cluster.nodes(self.cfg)

    def node(self, name: str) -> Node:
        """The node named ``name`` in the node set as it is now (it must be there)."""
        return next(n for n in self.nodes() if n.name == name)

    # ------------------------------------------------------------------ planning
    def prepare(self) -> Preflight:
        """The cloud's preflight.

        :raises UpgradeAborted: naming every problem (nothing changed).
        """
        pre = self.cloud.prepare(self.nodes())
        if pre.problems:
            raise UpgradeAborted(f"preflight on {self.cloud.where} failed; nothing was "
                                 f"changed:\n{problems_text(pre.problems)}")
        skew = skew_problems(self.cfg.kubernetes_version, pre.image,
                             self.cluster.state.kubernetes_version,
                             allow_downgrade=self.allow_downgrade)
        if skew:
            raise UpgradeAborted("Kubernetes' version skew policy refuses this upgrade; "
                                 "nothing was changed:\n" + "\n".join(f"  {p}" for p in skew))
        return pre

    def plan(self, pre: Preflight | None = None) -> tuple[str, list[Step]]:
        """The target image and the stale nodes to replace (another image, or a config that
        is not what they would be rendered now), in order (etcd members first).

        :raises UpgradeAborted: when the cloud's preflight fails (nothing changed).
        """
        pre = pre or self.prepare()
        target = pre.image.ref
        # where Services' load balancers go, for a cluster deployed before deploy recorded it
        self.found_service_network = pre.service_network
        statuses = self.cloud.nodes()
        have = {n.name: n for n in statuses}
        found = desired.staleness(statuses, self.renders(set(have)), self.cluster.state,
                                  target)
        steps = []
        for node in sorted(self.nodes(), key=lambda n: (ORDER[n.role], n.index)):
            status = have.get(node.name)
            if status is None or not found[node.name].stale:
                continue
            steps.append(Step(node.name, node.role, status.image, found[node.name]))
        return target, steps

    def renew_stale_certificates(self) -> list[str]:
        """Reissue the certificates whose SANs the definition has outgrown (an extra API
        name), keys kept; the nodes carrying them are then stale. Returns them."""
        stale = cluster_pki(self.cluster, self.cfg).renew_outgrown(
            kubeconfig_dir=self.cluster.kubeconfig_dir)
        if stale:
            self.emit("certificates-renewed", {"certificates": stale,
                                               "why": "their SANs lacked what cluster.yaml asks"})
        return stale

    def renew_expiring_certificates(self) -> list[str]:
        """With ``renew_certs_within``: reissue the leaves that expire within that many days
        (keys kept); the nodes carrying them are then stale, and this run replaces them."""
        if self.renew_certs_within is None:
            return []
        pki = cluster_pki(self.cluster, self.cfg)
        leaves, cas = pki.expiring(self.renew_certs_within)
        for ca in cas:
            self.emit("warning", {"message": f"CA {ca} expires within "
                                             f"{self.renew_certs_within} days; rotating a CA "
                                             "is not done by k8simg yet"})
        if leaves:
            pki.renew(leaves, kubeconfig_dir=self.cluster.kubeconfig_dir)
            self.emit("certificates-renewed", {"certificates": leaves,
                                               "why": f"expiring within "
                                                      f"{self.renew_certs_within} days"})
        return leaves

    def renders(self, names: set[str]) -> dict[str, bytes]:
        """The configs the nodes ``names`` would get now. The certificates the run renews once
        its gates have passed (SANs the definition has outgrown, or expiring within
        ``renew_certs_within``) are renewed for the plan in a scratch copy of the cluster
        directory (inside it, removed afterwards), so the plan is what the run does."""
        source = self.cluster
        pki = cluster_pki(self.cluster, self.cfg)
        expiring = (pki.expiring(self.renew_certs_within)[0]
                    if self.renew_certs_within is not None else [])
        with contextlib.ExitStack() as stack:
            if pki.stale_sans() or expiring:
                scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(
                    dir=self.cluster.path, prefix=".plan-")))
                for name in ("cluster.yaml", "state.json", "pki", "openstack"):
                    src = self.cluster.path / name
                    if src.is_dir():
                        shutil.copytree(src, scratch / name, symlinks=True)
                    elif src.exists():
                        shutil.copy2(src, scratch / name)
                source = ClusterDir(scratch)
                cluster_pki(source, self.cfg).renew_outgrown(also=tuple(expiring))
            ctx = render_context(source, nodes=self.nodes())
            ctx.service_network = ctx.service_network or self.found_service_network
            return {n.name: render_user_data(ctx, n) for n in self.nodes() if n.name in names}

    # ------------------------------------------------------------------ running
    def run(self) -> UpgradeResult:
        """Replace every node not on the target image; resumes an interrupted run.

        :raises UpgradeAborted: before changing anything, when a preflight refuses.
        """
        under_way = self.cluster.state.upgrade
        if under_way and under_way.image.startswith(RESTORE_MARK):
            raise UpgradeAborted(f"a {under_way.image} is unfinished: run `k8simg restore "
                                 f"{self.cluster.path} --snapshot ...` with the same snapshot "
                                 "to finish it first; nothing was changed")
        pre = self.prepare()
        target, steps = self.plan(pre)
        if self.control_plane_surge > 1 and not pre.image.etcd_join \
                and any(s.role in ("master", "etcd") for s in steps):
            raise UpgradeAborted(
                f"--control-plane-surge {self.control_plane_surge}: the image {pre.image.name} "
                "does not say its etcd waits for its turn (baked by a k8simg without etcd-join: "
                "a master booted ahead would start etcd with a member list etcd refuses). "
                "Re-bake it, or leave --control-plane-surge at 1; nothing was changed")
        result = UpgradeResult(target)
        state = self.cluster.state
        resuming = state.upgrade is not None
        if not steps and not resuming:
            self.emit("nothing-to-do", {"image": target})
            return result
        self.emit("plan", {"image": target, "replace": [s.old for s in steps],
                           "why": {s.old: s.why.reason() for s in steps if s.why}})
        life = Lifecycle(self.cluster, self.cloud, has_kubernetes=pre.image.has_kubernetes,
                         skip_unobservable=self.skip, timeout=self.timeout, kube=self.kube,
                         events=self.emit)
        masters = [s for s in steps if s.role in ("master", "etcd")]
        # The infrastructure first (a reconcile: e.g. the rule that lets the bastion reach
        # etcd), then what a killed run left half done (an old node gone, its replacement not
        # up; the bastion deleted, not yet booted), so capacity and the way in are whole again
        # before anything is asked or anything else leaves.
        infra = self.cloud.ensure_infrastructure(pre, self.nodes())
        if infra.service_network is not None and state.service_network is None:
            state.set_service_network(infra.service_network)  # as deploy records it
        if resuming:
            state.begin_upgrade(target)
            self.finish_interrupted(life, infra, result)
            self.ensure_bastion(life, infra, result)
            masters = self.lost_control_plane(masters)
        with contextlib.ExitStack() as open_:
            # What cannot be observed refuses here, before any node of this run is touched:
            # etcd first, then the Kubernetes API that drains and gates.
            etcd = self.etcd(life, open_) if masters else None
            if etcd is not None:
                # the started members' (a replacement booted ahead by a killed run serves
                # nothing until its turn: asking it costs etcdctl's whole deadline; nor does
                # a lost node's)
                started = [u for m in self.live(etcd.members(self.etcd_endpoints()))
                           if m.started for u in m.client_urls]
                versions = [st.version for st in etcd.status(started)]
                skew = version_skew(versions, pre.image.etcd_version)
                if skew:
                    raise UpgradeAborted(f"{skew}; nothing was changed")
            if any(s.role in ("master", "worker") for s in steps):
                life.require_api("the upgrade replaced nothing ("
                                 + ", ".join(s.old for s in steps) + ")")
            # The gates passed: now the certificates the plan counted on are renewed (a
            # refusal above leaves the cluster directory as it was, too).
            self.renew_stale_certificates()
            self.renew_expiring_certificates()
            state.begin_upgrade(target)
            if state.node_keys is None:
                self.cluster.save_nodes(self.nodes())
            if masters and len([n for n in self.nodes() if n.role == "master"]) == 1 \
                    and not self.cfg.dedicated_etcd:
                self.emit("warning", {"message": "single master: the Kubernetes API is down "
                                      "from the moment the old master leaves the load balancer "
                                      "until the new one answers"})
            if len(masters) > 1 and self.control_plane_surge > 1 \
                    and self.cloud.masters_on_distinct_hosts:
                ahead = min(self.control_plane_surge, len(masters))
                self.emit("warning", {"message": f"{ahead} masters' replacements boot at once "
                                      "and masters must be on distinct hosts (hard "
                                      f"anti-affinity): that needs {ahead} hosts more than "
                                      "the cluster has masters (where there are fewer, "
                                      "a boot finds no host and fails: choose a smaller "
                                      "--control-plane-surge there)"})
            if etcd is not None:
                self.snapshot(etcd)
                remove_lost_members(etcd, [n for n in etcd_members(self.nodes(), self.cfg)
                                           if n.name in self.lost],
                                    self.etcd_endpoints(),
                                    events=lambda e, d: self.emit(f"etcd-{e}", d))
            for i, step in enumerate(masters):
                if self.control_plane_surge > 1:
                    self.boot_ahead(masters[i:i + self.control_plane_surge], etcd, infra)
                self.replace_control_plane(step, etcd, life, infra, result)
        # etcd's way in (the bastion's tunnel) is closed: workers need none.
        workers = [s for s in steps if s.role == "worker"]
        size = self.max_surge + self.max_unavailable
        for i in range(0, len(workers), size):
            self.replace_workers(workers[i:i + size], life, infra, result)
        for step in steps:
            if step.role == "bastion":
                self.replace_bastion(step, life, infra, result)
        state.end_upgrade()
        if pre.image.has_kubernetes:
            state.set_kubernetes_version(self.cfg.kubernetes_version)
        result.skipped_gates = list(life.skipped)
        self.emit("done", {"image": target, "replaced": [list(r) for r in result.replaced],
                           "skipped_gates": result.skipped_gates})
        return result

    def etcd(self, life: Lifecycle, open_: contextlib.ExitStack):
        """An etcd client through the cloud's way in (the local cloud's namespace, the
        bastion's SSH tunnel on OpenStack), open until ``open_`` closes; or None (gate
        skipped)."""
        try:
            return open_.enter_context(etcd_client(self.cloud, "apiserver-etcd-client"))
        except K8simgError as e:
            if not self.skip:
                raise UpgradeAborted(f"etcd cannot be reached from here ({e}); replacing "
                                     "masters without its membership changes would break it. "
                                     "--skip-unobservable only where nothing runs etcd") from None
            life.skip_gate("etcd", str(e))
            return None

    def snapshot(self, etcd) -> None:
        """Take a sealed etcd snapshot into the cluster's backups directory (encrypted with the
        cluster's snapshot key, :mod:`k8simg.ops.snapshot`) before any membership change.

        :raises SnapshotError: when etcd cannot be snapshotted.
        """
        # a started voter: on a re-run the first etcd node may be one whose member the killed
        # run removed already, or a replacement not through its turn
        member = next((m for m in self.live(etcd.members(self.etcd_endpoints()))
                       if m.started and not m.learner), None)
        if member is None:
            raise SnapshotError("etcd lists no started voting member to take a snapshot from")
        sealed = take(etcd, member.client_urls[0], member.name, self.cluster.backups_dir,
                      cluster=self.cfg.name, cluster_uid=self.cluster.state.ensure_uid(),
                      key=cluster_pki(self.cluster, self.cfg).snapshot_key(),
                      kubernetes_version=self.cluster.state.kubernetes_version
                      or self.cfg.kubernetes_version)
        self.emit("etcd-snapshot", {"path": str(sealed.path), "revision": sealed.header.revision})

    def _replacement_for(self, old: str, role: str) -> Node:
        """The replacement an earlier, interrupted run chose for ``old``, or a new one: it
        joins the node set (and gets its certificates) before it exists, so a run killed from
        here on finds it in the state."""
        chosen = self.cluster.state.upgrade.replacing
        if old in chosen:
            return self.node(chosen[old])
        nodes = self.nodes()
        new = next_node(self.cfg, role, nodes)
        self.cluster.save_nodes([*nodes, new])
        cluster_pki(self.cluster, self.cfg).ensure()
        self.cluster.state.set_replacing(old, new.name)
        return new

    def _drop_node(self, name: str) -> None:
        self.cluster.save_nodes([n for n in self.nodes() if n.name != name])
        self.cluster.state.set_replacing(name, None)
        self.lost.discard(name)

    def user_data(self, node: Node) -> bytes:
        """``node``'s Ignition config against the node set as it is now (a new etcd member's joins
        the running cluster); the file digests of it are kept for later plans."""
        nodes = [n for n in self.nodes() if n.name not in self.lost]
        joining = frozenset({node.name}) if node in etcd_members(nodes, self.cfg) else frozenset()
        data = render_user_data(render_context(self.cluster, nodes=nodes, joining=joining), node)
        desired.record(self.cluster.state, {node.name: data}, self.cloud.nodes())
        return data

    def boot(self, node: Node, life: Lifecycle, infra: Infra) -> None:
        """Boot ``node`` with its config and wait until the cloud says it is up.

        :raises NodeFailed: when its boot fails.
        """
        life.boot(node, self.user_data(node), infra)

    def masters_now(self, without: str | None = None, joining: str | None = None
                    ) -> list[Node]:
        """The API load balancer's members: the masters in the node set as it is now, except
        the one named ``without``, lost ones and replacements not through their turn but
        ``joining`` (this turn's: one booted ahead serves no API until its etcd has joined,
        and a load balancer may send it requests before its health check says so)."""
        pending = self.pending() - {joining}
        return [n for n in self.nodes() if n.role == "master" and n.name != without
                and n.name not in self.lost and n.name not in pending]

    def voters(self) -> int:
        """The voting members etcd has when whole: the etcd nodes, less the replacements
        chosen and not yet through their turn (at most one of them is a member: this turn's)
        and the lost ones (their members removed first)."""
        pending = self.pending()
        return len([n for n in self.etcd_nodes() if n.name not in pending])

    def pending(self) -> set[str]:
        """The replacements chosen and not yet through their turn."""
        return set(self.cluster.state.upgrade.replacing.values())

    def etcd_nodes(self) -> list[Node]:
        """The node set's etcd members, less the lost ones."""
        return [n for n in etcd_members(self.nodes(), self.cfg) if n.name not in self.lost]

    def etcd_endpoints(self) -> list[str]:
        return [client_url(n) for n in self.etcd_nodes()]

    def live(self, members: list[Member]) -> list[Member]:
        """``members`` less those of lost nodes (listed until their removal, never answering)."""
        gone = {peer_url(self.node(n)) for n in self.lost}
        return [m for m in members if not gone & set(m.peer_urls)]

    def lost_control_plane(self, steps: list[Step]) -> list[Step]:
        """``steps`` (the control plane's), with a turn for each master or etcd node an
        interrupted run was replacing whose server is now gone, in the order the turns go.

        A turn of this upgrade removes a node's member before deleting its server; a server
        can also go another way (deleted by hand, lost with its host) while a killed run
        waits to be run again, or a run can be killed between the deletion and the record of
        it. Either way the node is lost: its member, if etcd still lists it, is removed
        before the turns go on (:func:`remove_lost_members`, only while the others are
        healthy), and its replacement joins in its turn, as any other."""
        have = {n.name for n in self.cloud.nodes()}
        for old, new in self.cluster.state.upgrade.replacing.items():
            node = self.node(old)
            if old not in have and node.role in ("master", "etcd"):
                self.emit("resume", {"node": old, "with": new, "lost": True})
                self.lost.add(old)
                steps = [*steps, Step(old, node.role, "", None)]
        return sorted(steps, key=lambda s: (ORDER[s.role], self.node(s.old).index))

    def boot_ahead(self, steps: list[Step], etcd, infra: Infra) -> None:
        """Boot the replacements of ``steps`` (the control plane's next ones, this turn's
        first) now, not each in its turn, and do not wait for them: a booted node's etcd
        waits until its turn adds it as a member (the image's etcd-join), then joins with the
        member list as it is then. The membership changes stay one at a time; the boots, the
        slow part, overlap (``--control-plane-surge``: at most that many servers above the
        cluster's size, while their old nodes run).

        :raises EtcdAbort: when etcd is not fit for a membership change (then nothing new was
            booted).
        """
        have = {n.name for n in self.cloud.nodes()}
        olds = [self.node(s.old) for s in steps]
        news = [self._replacement_for(old.name, old.role) for old in olds]
        if etcd is not None and any(n.name not in have for n in news):
            # this turn's replacement may be a voter already (an interrupted run's), beside
            # the old member or after its removal
            members = etcd.members(self.etcd_endpoints())
            mine = by_peer(members, news[0])
            joined = mine is not None and not mine.learner
            old_listed = by_peer(members, olds[0]) is not None
            preflight(etcd, self.etcd_endpoints(), self.voters() + (joined and old_listed))
        ahead = [(old, new) for old, new in zip(olds, news, strict=True)
                 if new.name not in have]
        for old, new in ahead:
            self.emit("boot-ahead", {"node": new.name, "for": old.name})
        # rendered one by one (each records its digests in the state), booted side by side
        # as a deploy boots: the cloud's boot groups (OpenStack: ports and volumes at once,
        # servers of an anti-affinity group placed in turn, then each waited for at once)
        data = {new.name: self.user_data(new) for _, new in ahead}
        said = self.cloud.parallel(boot_tasks(self.cloud, [new for _, new in ahead], data, infra))
        for warning in [w for group in said for w in group if w]:
            self.emit("warning", {"message": warning})

    def replace_control_plane(self, step: Step, etcd, life: Lifecycle, infra: Infra,
                              result: UpgradeResult) -> None:
        """Replace the master or dedicated etcd member of ``step`` by a new node, surge by one: it
        boots (its etcd joining as a learner, then promoted), a new master joins the API load
        balancer once its API answers, then the old node leaves etcd, the load balancer and the cloud.

        :param etcd: the etcd client; None where the etcd gate is skipped (no membership changes).
        :raises EtcdAbort: when etcd is not fit for a membership change (nothing changed).
        :raises NodeFailed: when the new node does not boot.
        """
        old = self.node(step.old)
        new = self._replacement_for(old.name, old.role)
        self.emit("replace", {"node": old.name, "with": new.name, "role": old.role})

        swapped = []

        def swap_in_lb():
            swapped.append(True)
            if old.role == "master":
                life.ready_gate(new, gate="kubernetes-api")
                self.cloud.ensure_api_members(self.masters_now(joining=new.name),
                                              infra)  # old and new
                self.emit("lb-member-added", {"node": new.name})
                self.cloud.ensure_api_members(
                    self.masters_now(without=old.name, joining=new.name), infra)
                self.emit("lb-member-removed", {"node": old.name})

        def stop(node):
            self.cloud.delete_node(node.name)

        if etcd is not None and old in etcd_members(self.nodes(), self.cfg):
            replace_member(
                etcd, old, new, voters=self.voters(), timeout=self.timeout,
                start=lambda n, _initial: self.boot(n, life, infra), stop=stop,
                endpoints=self.etcd_endpoints,
                before_remove=swap_in_lb,
                events=lambda e, d: self.emit(f"etcd-{e}", d))
            if not swapped:
                # no member left to remove: a lost node's turn, or one whose removal a killed
                # run made (after its swap: done again, the same members)
                swap_in_lb()
        else:
            self.boot(new, life, infra)
            swap_in_lb()
            stop(old)
        self.emit("deleted", {"node": old.name})
        self._drop_node(old.name)
        result.replaced.append((old.name, new.name))

    def replace_workers(self, batch: list[Step], life: Lifecycle, infra: Infra,
                        result: UpgradeResult) -> None:
        """One batch of up to maxSurge + maxUnavailable workers, as a Deployment rolls: the
        first maxUnavailable old nodes are drained and deleted before their replacements
        exist (capacity dips by that many), then every replacement boots, and each remaining
        old node goes once its replacement is Ready (capacity peaks maxSurge above)."""
        olds = [self.node(s.old) for s in batch]
        pairs = [(old, self._replacement_for(old.name, old.role)) for old in olds]
        for old, new in pairs:
            self.emit("replace", {"node": old.name, "with": new.name, "role": old.role})
        early = pairs[:self.max_unavailable]
        for old, _new in early:
            # Its replacement stays recorded until it is up: a run killed in between boots it.
            self.retire(old, life)
        self.cloud.parallel([lambda n=new: self.boot(n, life, infra) for _, new in pairs])
        for old, new in pairs:
            life.ready_gate(new)
            if (old, new) not in early:
                self.retire(old, life)
            self._drop_node(old.name)
            result.replaced.append((old.name, new.name))

    def retire(self, old: Node, life: Lifecycle) -> None:
        """Cordon and drain (where the API can be asked), then delete."""
        def drained(name: str, done: DrainResult | None) -> None:
            if done is not None:
                self.emit("drained", {"node": name, "evicted": done.evicted,
                                      "unmanaged": done.unmanaged, "refusals": done.refusals})

        life.retire([old], f"{old.name} was not replaced", before_delete=drained)
        self.emit("deleted", {"node": old.name})

    def replace_bastion(self, step: Step, life: Lifecycle, infra: Infra,
                        result: UpgradeResult) -> None:
        """In place, last: its name, address and floating IP are the cluster's fixed way in
        (and its host key, from the PKI, stays the same, so operators' known_hosts holds).
        SSH to the cluster is down while it boots; nothing the cluster serves depends on it."""
        node = self.node(step.old)
        self.emit("replace", {"node": node.name, "with": node.name, "role": node.role})
        self.emit("warning", {"message": f"{node.name} is replaced in place: SSH to the "
                              "cluster is unavailable until the new one is up"})
        self.cloud.delete_node(node.name)
        self.emit("deleted", {"node": node.name})
        self.boot(node, life, infra)
        self.d.attach_bastion(infra)
        result.replaced.append((node.name, node.name))

    def ensure_bastion(self, life: Lifecycle, infra: Infra, result: UpgradeResult) -> None:
        """A run killed between the old bastion's deletion and the new one's boot."""
        bastion = [n for n in self.nodes() if n.role == "bastion"]
        if bastion and bastion[0].name not in {n.name for n in self.cloud.nodes()}:
            self.emit("resume", {"node": bastion[0].name, "with": bastion[0].name})
            self.boot(bastion[0], life, infra)
            self.d.attach_bastion(infra)
            result.replaced.append((bastion[0].name, bastion[0].name))

    def finish_interrupted(self, life: Lifecycle, infra: Infra, result: UpgradeResult) -> None:
        """A worker's replacement chosen by an interrupted run whose old node is already gone
        (the control plane's: :meth:`lost_control_plane`)."""
        have = {n.name for n in self.cloud.nodes()}
        for old, new in list(self.cluster.state.upgrade.replacing.items()):
            node = self.node(new)
            if old not in have and node.role not in ("master", "etcd"):
                self.emit("resume", {"node": old, "with": new})
                self.boot(node, life, infra)
                life.ready_gate(node)
                self._drop_node(old)
                result.replaced.append((old, new))
