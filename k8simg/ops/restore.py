"""``k8simg restore``: a control plane that lost its etcd quorum (its masters gone, killed, or
broken) comes back from a sealed snapshot as new masters, the way an upgrade brings new ones.

1. The plan: the snapshot is checked against the cluster (its UID and key, its Kubernetes
   release not newer than the cluster's), every master's etcd is asked, and a healthy quorum
   refuses the restore (that is an upgrade's job) unless forced. The replacements are the
   masters' next indices, recorded in ``state.json`` before anything boots, so a run killed
   anywhere and run again goes on with the same ones.
2. Every new master's config names the snapshot as a remote file (encrypted for the trip
   under a key only those configs carry; :mod:`k8simg.ops.snapshot`); the cloud serves it to
   them (the local cloud's metadata service, to those nodes alone; OpenStack, a Swift temporary
   URL). Each first boot restores the snapshot before etcd starts, as a member of the new
   masters' cluster, with its own name and peer URL: etcd's own recovery of a cluster (every
   member restored from the same snapshot, started together), so the new masters boot side by
   side and none waits for another to join it.
3. Once every new member answers healthy, and the voting members are exactly the new masters,
   the staged snapshot is removed.
4. The API load balancer is pointed at the new masters; the old masters' servers and volumes
   are removed (where masters need distinct hosts, OpenStack's hard anti-affinity, before the
   new ones boot, so that a restore needs no more hosts than the masters).
   Workers are not touched: same CA, same API address.
"""

import contextlib
import datetime as dt
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from k8simg.errors import K8simgError
from k8simg.ignition.render import EtcdRestore, render_context, render_user_data
from k8simg.model.plan import Node, client_url, next_node
from k8simg.ops import desired
from k8simg.ops.deploy import RESTORE_MARK, Deployment
from k8simg.ops.etcd import EtcdError, etcd_client, planned_endpoints
from k8simg.ops.lifecycle import Lifecycle
from k8simg.ops.membership import wait_healthy
from k8simg.ops.snapshot import (
    Header,
    SnapshotError,
    for_the_trip,
    key_id,
    read_header,
    unseal,
)
from k8simg.pki import cluster_pki
from k8simg.pki.manager import SNAPSHOT_KEY

EXIT_DONE = 0
EXIT_ABORTED = 4
MARK = RESTORE_MARK  # state.json's upgrade entry names the snapshot while a restore is under way


class RestoreAborted(K8simgError):
    """Refused before changing anything."""

    exit_code = EXIT_ABORTED


@dataclass
class RestorePlan:
    """What a restore will do.

    :param healthy: the members that answered healthy (a quorum of them refuses the restore).
    :param replace: ``(old master, new master)`` names.
    """

    snapshot: Path
    header: Header
    healthy: list[str]
    replace: list[tuple[str, str]]
    finishing: bool = False  # an interrupted run got as far as removing the old masters

    def to_json(self) -> dict:
        h = self.header
        return {"snapshot": str(self.snapshot), "revision": h.revision, "keys": h.total_keys,
                "taken_at": h.taken_at, "age_s": int(h.age.total_seconds()),
                "healthy_members": self.healthy,
                "replace": [{"node": o, "with": n} for o, n in self.replace]}


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


class Restore:
    """One cluster's restore from ``snapshot`` on its cloud.

    :param force: restore even though etcd has a healthy quorum.
    :param skip_unobservable: where etcd cannot be asked at all (a test cloud whose servers run
        nothing), go on, with ``force`` (nobody can tell the quorum is lost), as if no member
        were healthy, and boot the new masters without waiting on their etcd (named as the
        skipped gate ``etcd``). Never on a real cluster.
    :param events: receives ``(event, details)`` (CI's JSON lines).
    """

    def __init__(self, deployment: Deployment, snapshot: Path, *, force: bool = False,
                 skip_unobservable: bool = False, timeout: float = 1800,
                 events: Callable[[str, dict], None] = lambda _e, _d: None):
        self.d = deployment
        self.cloud = deployment.cloud
        self.cluster = deployment.cluster
        self.cfg = deployment.cfg
        self.snapshot = Path(snapshot)
        self.force = force
        self.skip = skip_unobservable
        self.timeout = timeout
        self.emit = events

    def nodes(self) -> list[Node]:
        return self.cluster.nodes(self.cfg)

    # ------------------------------------------------------------------ planning
    def check_snapshot(self) -> Header:
        """:raises RestoreAborted: when the snapshot is not this cluster's, or is newer than
        its Kubernetes release."""
        try:
            header = read_header(self.snapshot)
        except SnapshotError as e:
            raise RestoreAborted(str(e)) from None
        uid = self.cluster.state.uid
        pki = cluster_pki(self.cluster, self.cfg)
        if not (pki.root / SNAPSHOT_KEY).is_file():
            raise RestoreAborted(f"{pki.root / SNAPSHOT_KEY} is missing: no snapshot was ever "
                                 "sealed for this cluster; nothing was changed")
        key = pki.snapshot_key()
        if header.cluster_uid != uid or header.key_id != key_id(key):
            raise RestoreAborted(
                f"{self.snapshot}: taken from cluster {header.cluster} (UID "
                f"{header.cluster_uid}); this cluster ({self.cfg.name}, UID {uid}) cannot "
                "decrypt it; nothing was changed")
        if header.kubernetes_version and \
                _minor(header.kubernetes_version) > _minor(self.cfg.kubernetes_version):
            raise RestoreAborted(
                f"{self.snapshot}: taken under Kubernetes {header.kubernetes_version}, newer "
                f"than the cluster's {self.cfg.kubernetes_version}: an older API server must "
                "not serve what a newer one stored; nothing was changed")
        return header

    def plan(self) -> RestorePlan:
        """:raises RestoreAborted: when the restore is refused (nothing changed)."""
        if self.cfg.dedicated_etcd:
            raise RestoreAborted("a restore of dedicated etcd members is not supported yet; "
                                 "nothing was changed")
        why_not = self.cloud.restore_unsupported()
        if why_not:
            raise RestoreAborted(f"{why_not}; nothing was changed")
        header = self.check_snapshot()
        try:  # every chunk authenticated now, not once the new masters are chosen
            unseal(self.snapshot, None, cluster_pki(self.cluster, self.cfg).snapshot_key(),
                   self.cluster.state.uid)
        except SnapshotError as e:
            raise RestoreAborted(f"{e}; nothing was changed") from None
        chosen = self.chosen()
        names = {n.name for n in self.nodes()}
        # in the order first chosen: the new masters' order, and the events', stay the same
        resumed = sorted(chosen.items(), key=lambda kv: int(kv[1].rsplit("-", 1)[1]))
        if chosen and not any(old in names for old in chosen):
            return RestorePlan(self.snapshot, header, [], resumed, True)
        endpoints = planned_endpoints(self.cluster)
        try:
            with etcd_client(self.cloud) as etcd:
                healthy = [e.endpoint for e in etcd.health(endpoints) if e.healthy]
        except (K8simgError, EtcdError) as e:
            if not (self.skip and self.force):
                raise RestoreAborted(
                    f"etcd's members cannot be asked from here ({e}); a restore needs the "
                    "cluster's network" + ("; with --skip-unobservable it goes on only with "
                                           "--force too (nobody can tell its quorum is lost)"
                                           if self.skip else "") + "; nothing was changed"
                ) from None
            self.emit("gate-skipped", {"gate": "etcd", "why": str(e)})
            healthy = []
        if len(healthy) > len(endpoints) // 2 and not self.force and not chosen:
            raise RestoreAborted(
                f"etcd has a healthy quorum ({len(healthy)} of {len(endpoints)} members): "
                "replacing masters is an upgrade's job (`k8simg upgrade`); --force restores "
                "anyway, losing every write since the snapshot; nothing was changed")
        if chosen:
            return RestorePlan(self.snapshot, header, healthy, resumed)
        replace, taken = [], list(self.nodes())
        for old in [n for n in self.nodes() if n.role == "master"]:
            new = next_node(self.cfg, "master", taken)
            taken.append(new)
            replace.append((old.name, new.name))
        return RestorePlan(self.snapshot, header, healthy, replace)

    def chosen(self) -> dict[str, str]:
        """The replacements an interrupted restore of the same snapshot chose.

        :raises RestoreAborted: when an upgrade, or a restore of another snapshot, is
            unfinished.
        """
        up = self.cluster.state.upgrade
        if up is None:
            return {}
        if not up.image.startswith(MARK):
            raise RestoreAborted(f"an upgrade to {up.image} is unfinished: run `k8simg "
                                 f"upgrade {self.cluster.path}` to finish it first")
        if up.image != MARK + self.snapshot.name:
            raise RestoreAborted(f"a {up.image} is unfinished: run the restore again with "
                                 "that snapshot to finish it first; nothing was changed")
        return dict(up.replacing)

    # ------------------------------------------------------------------ running
    def run(self) -> RestorePlan:
        """Restore; see the module's docstring. Run again after an interruption, it goes on.

        :raises RestoreAborted: when refused before anything changed.
        """
        plan = self.plan()
        state = self.cluster.state
        self.emit("plan", plan.to_json())
        if plan.finishing:  # killed after the old masters went: only the record is left
            state.end_upgrade()
            self.emit("done", {"masters": [n for _, n in plan.replace],
                               "revision": plan.header.revision})
            return plan
        pre = self.cloud.prepare(self.nodes())
        if pre.problems:
            raise RestoreAborted("preflight failed; nothing was changed: "
                                 + "; ".join(f"{f}: {m}" for f, m in pre.problems))
        started = dt.datetime.now(dt.UTC)
        for stale in self.cluster.path.glob(".restore-*"):  # a killed run's trip, in the clear
            shutil.rmtree(stale, ignore_errors=True)
        # The replacements are recorded in one write, then join the node set in another: a run
        # killed between them finds the same names again.
        state.begin_upgrade(MARK + plan.snapshot.name)
        state.set_replacing_all(dict(plan.replace))
        nodes = self.nodes()
        for _old, new_name in plan.replace:
            if new_name not in {n.name for n in nodes}:
                new = next_node(self.cfg, "master", nodes)
                if new.name != new_name:
                    raise RestoreAborted(f"{state.path} names {new_name} as a replacement, but "
                                         f"the node set's next master is {new.name}: resolve "
                                         "it by hand")
                nodes.append(new)
        self.cluster.save_nodes(nodes)
        news = [next(n for n in nodes if n.name == new_name) for _, new_name in plan.replace]
        cluster_pki(self.cluster, self.cfg).ensure()
        olds = [n for n in nodes if n.name in dict(plan.replace)]
        others = [n for n in nodes if n.role != "master"]
        infra = self.cloud.ensure_infrastructure(pre, [*others, *news])
        life = Lifecycle(self.cluster, self.cloud, has_kubernetes=pre.image.has_kubernetes,
                         timeout=self.timeout, events=self.emit)
        deleted: set[str] = set()
        got = {s.name: s.state for s in self.cloud.nodes()}
        # not there, their first boot failed (the cloud replaces them), or stopped (started)
        booting = [n for n in news if got.get(n.name) in (None, "failed", "ERROR", "stopped")]
        if booting:
            key = cluster_pki(self.cluster, self.cfg).snapshot_key()
            with tempfile.TemporaryDirectory(dir=self.cluster.path, prefix=".restore-") as tmp:
                trip = for_the_trip(plan.snapshot, key, state.uid, Path(tmp) / "etcd.db.enc")
                url = self.cloud.stage_restore([n.name for n in booting], trip.path)
            self.emit("snapshot-staged", {"nodes": [n.name for n in booting], "url": url,
                                          "sha512": trip.sha512})
            # Every new master restores the same snapshot as a member of the new masters'
            # cluster (etcd's own recovery of a cluster): they start together, none waits
            # for another to join it.
            ctx = render_context(self.cluster, nodes=[*others, *news])
            data = {}
            for n in booting:
                ctx.restore = EtcdRestore(n.name, url, trip.sha512, trip.key, trip.iv)
                data[n.name] = render_user_data(ctx, n)
            desired.record(state, data, self.cloud.nodes())
            if self.cloud.masters_on_distinct_hosts:
                # Masters need distinct hosts (OpenStack's hard anti-affinity): the lost ones
                # go first, so that a restore needs no more hosts than the masters (they are
                # lost already: the quorum is gone, or the restore forced).
                for old in [o for o in olds if o.name in got]:
                    self.cloud.delete_node(old.name)
                    deleted.add(old.name)
                    self.emit("deleted", {"node": old.name})
            life.boot_all(booting, data, infra)
            self.emit("restored-members-booted", {"nodes": [n.name for n in booting]})
        if [n for n in news if n not in booting]:  # booted by a killed run: still booting?
            self.cloud.wait_ready([n for n in news if n not in booting])
        with contextlib.ExitStack() as open_:
            try:
                etcd = open_.enter_context(etcd_client(self.cloud, "apiserver-etcd-client"))
            except K8simgError as e:
                if not self.skip:
                    raise
                self.emit("gate-skipped", {"gate": "etcd", "why": str(e)})
                etcd = None
            if etcd is not None:
                for n in news:
                    wait_healthy(etcd, client_url(n), self.timeout)
                voters = sorted(m.name for m in etcd.members([client_url(n) for n in news])
                                if not m.learner)
                if voters != sorted(n.name for n in news):
                    raise EtcdError(f"the restored etcd's voting members are {voters}, not "
                                    f"{sorted(n.name for n in news)}: resolve it by hand")
            self.cloud.unstage_restore([n.name for n in news])
            self.emit("etcd-restored", {"nodes": [n.name for n in news],
                                        "revision": plan.header.revision,
                                        **({} if etcd else {"observed": False})})
        self.cloud.ensure_api_members(news, infra)
        self.emit("lb-members", {"nodes": [n.name for n in news]})
        for old in olds:
            if old.name not in deleted and old.name in got:
                self.cloud.delete_node(old.name)
                self.emit("deleted", {"node": old.name})
        self.cluster.save_nodes([n for n in self.nodes() if n.name not in {o.name for o in olds}])
        state.end_upgrade()
        seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
        self.emit("done", {"masters": [n.name for n in news], "revision": plan.header.revision,
                           "seconds": round(seconds)})
        return plan

