"""``deploy`` and ``destroy``: the one orchestration over a cloud (:mod:`k8simg.clouds`), the
same for OpenStack and the local QEMU cloud.

The order of a deploy: preflight (every problem at once, nothing created: the cloud's checks,
every node's config rendered and sized), infrastructure (the API's address into the
certificates), every node's config rendered, nodes booted (the cloud says which must boot one
after another), the load balancer's members, the bastion's public address, the kubeconfigs,
the control plane healthy (bounded; every etcd member), and last the workers beyond the plan
retired (:mod:`k8simg.ops.lifecycle`).
"""

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from k8simg.clouds import open_cloud
from k8simg.clouds.base import (
    Change,
    Cloud,
    CloudError,
    DestroyResult,
    ImageFacts,
    Infra,
    Ledger,
    NodeFailed,
    NodeStatus,
    Preflight,
    PreflightError,
    Problem,
)
from k8simg.errors import K8simgError, RenderError
from k8simg.ignition.render import render_context, render_user_data
from k8simg.model.cluster import ClusterDir
from k8simg.model.credential import ServiceNetwork
from k8simg.model.manifest import DEBIAN_ETCD_SOURCE
from k8simg.model.plan import node_key
from k8simg.ops import desired, readyz
from k8simg.ops.desired import Staleness
from k8simg.ops.drain import DrainResult
from k8simg.ops.etcd import (
    EtcdctlMissing,
    EtcdError,
    etcd_client,
    planned_endpoints,
    wait_healthy,
)
from k8simg.ops.lifecycle import Lifecycle, boot_tasks
from k8simg.ops.skew import skew_problems
from k8simg.pki import cluster_pki


@dataclass
class DeployResult:
    """What a deploy did, and how to reach the cluster.

    :param changes: every change made (or, in a dry run, planned).
    :param image: the image the nodes boot from, as the cloud found it.
    :param api_endpoint: the API server's URL (None in a dry run).
    :param kubeconfig: the admin kubeconfig's path (None in a dry run).
    """

    changes: list[Change]
    image: ImageFacts | None = None
    api_endpoint: str | None = None
    kubeconfig: str | None = None
    ingress: str | None = None  # ingress-nginx's address, once the cloud gave it one
    warnings: list[str] = field(default_factory=list)
    stale: list[Staleness] = field(default_factory=list)


class ControlPlaneUnhealthy(K8simgError):
    """The nodes are up, but etcd did not answer healthy in time; everything else is in
    place."""

    def __init__(self, cluster_path, timeout: float, sick: list[str]):
        self.sick = sick
        super().__init__(
            f"etcd is not healthy {timeout:.0f} s after the nodes came up:\n"
            + "\n".join(f"  {x}" for x in sick)
            + f"\neverything else is in place: `k8simg deploy {cluster_path}` waits again, "
              f"`k8simg console {cluster_path} NODE` shows a node's boot")


# What state.json's upgrade entry says while a restore (k8simg.ops.restore) is under way.
RESTORE_MARK = "restore from "


def image_warning(image: ImageFacts | None) -> str | None:
    """What an operator is told about the image nodes boot from, built from its facts."""
    if image is None:
        return None
    said = []
    if not image.has_kubernetes:
        said.append(f"image {image.name} was baked without Kubernetes binaries: its nodes run "
                    "etcd and containerd, no kubelet")
    if image.etcd_source == DEBIAN_ETCD_SOURCE:
        said.append(f"image {image.name} carries Debian's etcd {image.etcd_version or '3.4'}, a "
                    "line upstream no longer maintains and Kubernetes no longer tests against "
                    "(an image baked with Kubernetes carries the etcd kubeadm pins)")
    return "; ".join(said) or None


class Deployment:
    """``deploy`` and ``destroy`` of one cluster on its cloud.

    :param skip_unobservable: remove surplus workers undrained when the Kubernetes API cannot
        be asked (said in the warnings), instead of refusing to.
    :param kube: makes the Kubernetes API client (default: from the admin kubeconfig).
    :param health_timeout: seconds ``deploy`` waits, once the nodes are up, for every etcd
        member to answer healthy, then for the API server (0: it does not wait; the command
        line waits by default).
    :param wait_api: whether that wait includes the API server's ``/readyz`` (where the
        image carries Kubernetes).
    """

    def __init__(self, cluster: ClusterDir, cloud: Cloud, *, skip_unobservable: bool = False,
                 drain_timeout: float = 600, kube: Callable[[], object] | None = None,
                 health_timeout: float = 0, wait_api: bool = True):
        self.cluster = cluster
        self.cloud = cloud
        self.cfg = cloud.cfg
        self.nodes = cluster.nodes(self.cfg)
        self.skip_unobservable = skip_unobservable
        self.drain_timeout = drain_timeout
        self.health_timeout = health_timeout
        self.wait_api = wait_api
        self.kube = kube
        self.warnings: list[str] = []

    @classmethod
    def for_cluster(cls, cluster: ClusterDir, cloud: str | None = None, *, dry_run: bool = False,
                    progress: Callable[[str], None] = lambda _m: None,
                    skip_unobservable: bool = False, drain_timeout: float = 600,
                    kube: Callable[[], object] | None = None, health_timeout: float = 0,
                    wait_api: bool = True, **kw) -> "Deployment":
        """The deployment on the cluster's cloud.

        :param cloud: overrides ``cloud:`` in its definition.
        :param kw: go to the cloud (``concurrency``, ``timeout``, ``ssh_keys``).
        """
        cfg = cluster.load()
        return cls(cluster, open_cloud(cluster, cfg, cloud, dry_run=dry_run, progress=progress,
                                       **kw),
                   skip_unobservable=skip_unobservable, drain_timeout=drain_timeout, kube=kube,
                   health_timeout=health_timeout, wait_api=wait_api)

    @property
    def ledger(self) -> Ledger:
        """Where the cloud records every change (or, in a dry run, planned change)."""
        return self.cloud.ledger

    @property
    def dry(self) -> bool:
        """Whether this is a dry run: nothing is changed."""
        return self.cloud.dry

    def warn(self, message: str) -> None:
        """Tell the operator ``message`` now, and keep it for the result's warnings."""
        self.warnings.append(message)
        self.cloud.progress(f"warning: {message}")

    # ------------------------------------------------------------------ deploy
    def preflight(self) -> Preflight:
        """The cloud's checks and every node's config, all problems at once.

        :raises PreflightError: naming every problem; nothing was created.
        """
        pre = self.cloud.prepare(self.nodes)
        # the image carries the release cluster.yaml names (moving a running cluster to
        # another is an upgrade's, which applies the whole skew policy)
        problems = pre.problems + [("image", p) for p in skew_problems(
            self.cfg.kubernetes_version, pre.image, None)]
        problems += self.user_data_problems()
        if problems:
            raise PreflightError(self.cloud.where, problems)
        if warning := image_warning(pre.image):
            self.warn(warning)
        return pre

    def user_data_problems(self) -> list[Problem]:
        """Every node's config is rendered and sized before anything is created (certificates
        for new nodes are generated first; nothing else changes)."""
        pki = cluster_pki(self.cluster, self.cfg)
        if self.dry:
            if not (self.cluster.pki_dir / "ca.crt").exists() or pki.missing():
                self.warn("certificates for new nodes do not exist yet: their user_data sizes "
                          "are checked when deploy generates them")
                return []
        else:
            created = pki.ensure().created
            if created:
                self.cloud.progress(f"generated {len(created)} keys and certificates")
        try:
            ctx = render_context(self.cluster)
        except K8simgError as e:
            return [("pki", str(e))]
        if ctx.credential is None:
            ctx.credential = self.cloud.stand_in_credential()
        if ctx.service_network is None and not self.cfg.is_local:
            ctx.service_network = ServiceNetwork.stand_in()  # deploy makes the subnet next
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
        self.cluster.state.set_addresses(api=address)
        pki = cluster_pki(self.cluster, self.cfg)
        result = pki.ensure()
        if result.created:
            self.cloud.progress(f"generated {len(result.created)} keys and certificates")
        if result.stale:
            self.ledger.record("update", "certificate", ", ".join(result.stale),
                               f"SANs now include {address}")
            pki.renew_outgrown(result.stale)

    def render(self) -> dict[str, bytes]:
        """Every node's Ignition config, by node name."""
        ctx = render_context(self.cluster)
        return {n.name: render_user_data(ctx, n) for n in self.nodes}

    def desired_state(self, statuses: list[NodeStatus]) -> dict[str, Staleness]:
        """Each of ``statuses`` as current or stale against the image ``cluster.yaml`` names
        and the config each node would be rendered now (nothing is written)."""
        pre = self.cloud.prepare(self.nodes)
        ctx = render_context(self.cluster)
        # a cluster deployed before deploy recorded it: as the cloud has it
        ctx.service_network = ctx.service_network or pre.service_network
        names = {st.name for st in statuses}
        rendered = {n.name: render_user_data(ctx, n) for n in self.nodes if n.name in names}
        return desired.staleness(statuses, rendered, self.cluster.state,
                                 pre.image.ref if pre.image else None)

    def attach_bastion(self, infra: Infra) -> None:
        """The bastion's public address, on the bastion as it is now (recorded in the state)."""
        for node in self.nodes:
            if node.role == "bastion":
                address = self.cloud.attach_public_address(node, infra)
                if address is not None and not self.dry:
                    self.cluster.state.set_addresses(bastion=address)

    def deploy(self) -> DeployResult:
        """Create or reconcile everything; a second run changes nothing.

        :raises PreflightError: before anything is created.
        :raises NodeFailed: naming the nodes that did not boot (the rest is in place).
        """
        cloud = self.cloud
        upgrading = self.cluster.state.upgrade
        if upgrading and upgrading.image.startswith(RESTORE_MARK):
            raise K8simgError(f"a {upgrading.image} is unfinished ({self.cluster.state.path}); "
                              f"run `k8simg restore {self.cluster.path} --snapshot ...` with "
                              "the same snapshot to finish it before deploying")
        if upgrading:
            raise K8simgError(f"an upgrade to {upgrading.image} is in progress "
                              f"({self.cluster.state.path}); run `k8simg upgrade "
                              f"{self.cluster.path}` to finish it before deploying")
        if not self.dry:
            # A cluster from before UIDs gets one now, and its cloud adopts its old resources.
            self.cluster.state.ensure_uid(legacy=True)
            recorded = self.cluster.state.node_keys
            if recorded is not None and recorded != [node_key(n) for n in self.nodes]:
                # the set an upgrade or a restore recorded, its workers scaled to
                # workers.count: recorded before any is made or removed
                self.cluster.save_nodes(self.nodes)
        pre = self.preflight()
        infra = cloud.ensure_infrastructure(pre, self.nodes)
        self.refresh_pki(infra.api_address)
        if infra.service_network is not None and not self.dry:
            self.cluster.state.set_service_network(infra.service_network)
        user_data = self.render() if not self.dry else {}
        if user_data:
            desired.record(self.cluster.state, user_data, cloud.nodes())
        masters = [n for n in self.nodes if n.role == "master"]

        said = cloud.parallel([*boot_tasks(cloud, self.nodes, user_data, infra, dry=self.dry),
                               lambda: cloud.ensure_api_members(masters, infra)])
        for warning in [w for group in said[:-1] for w in group if w]:
            self.warn(warning)
        if not self.dry:
            try:
                cloud.wait_ready(self.nodes)
            except NodeFailed as e:
                raise NodeFailed(e.failures, next_step=(
                    f"next: fix what the console shows, then run `k8simg deploy "
                    f"{self.cluster.path}` again: it replaces each node whose boot failed, "
                    f"and waits again for one still booting")) from None
        self.attach_bastion(infra)
        pki = None if self.dry else cluster_pki(self.cluster, self.cfg)
        if pki is not None:
            pki.write_kubeconfigs(self.cluster.kubeconfig_dir)
        # It may refuse (no API to drain through) with everything else in place.
        self.remove_surplus(pre.image)
        if not self.dry and pre.image is not None and pre.image.has_kubernetes \
                and self.cluster.state.kubernetes_version is None:
            # what the nodes run from now on (an upgrade moves it, by the skew policy)
            self.cluster.state.set_kubernetes_version(self.cfg.kubernetes_version)
        stale = []
        if user_data:  # what a deploy does not change: the nodes that run
            found = desired.staleness(cloud.nodes(), user_data, self.cluster.state,
                                      pre.image.ref if pre.image else None)
            stale = [found[n.name] for n in self.nodes if n.name in found and found[n.name].stale]
            if stale:
                self.warn(f"{len(stale)} node(s) are stale and keep running as they are; "
                          f"`k8simg upgrade {self.cluster.path}` replaces them: "
                          + "; ".join(f"{x.node} {x.reason()}" for x in stale))
        self.wait_healthy()  # last: everything else is in place and recorded
        self.wait_api_ready(pre.image)
        result = DeployResult(self.ledger.changes, pre.image, warnings=self.warnings,
                              stale=stale)
        if pki is not None:
            result.api_endpoint = pki.ctx.api_server_url
            result.kubeconfig = str(self.cluster.kubeconfig_dir / "admin.conf")
            result.ingress = cloud.ingress_address()
        return result

    def wait_api_ready(self, image: ImageFacts | None) -> None:
        """Bounded by ``health_timeout``, after etcd's gate: where the image carries
        Kubernetes, the API server answers ``/readyz`` through the API's load balancer (its
        floating IP on OpenStack; the VIP, from the namespace, on the local cloud).

        :raises ApiNotReady: with its last answer.
        """
        if self.dry or not self.health_timeout or not self.wait_api or image is None \
                or not image.has_kubernetes:
            return
        url, ca, crt, key = cluster_pki(self.cluster, self.cfg).client_credentials("admin")
        self.cloud.progress(f"waiting for the API server: /readyz at {url} "
                            f"(up to {self.health_timeout:.0f} s)")
        with (self.cloud.reach() if self.cfg.is_local else contextlib.nullcontext()) as way:
            took = readyz.wait_ready(url, ca, crt, key, timeout=self.health_timeout,
                                     progress=self.cloud.progress,
                                     wrap=way.wrap if way is not None else lambda argv: argv)
        self.cloud.progress(f"API server: ready after {took:.0f} s")

    def wait_healthy(self) -> None:
        """Bounded by ``health_timeout``: the control plane is healthy when deploy returns,
        every etcd member answering over TLS (asked as ``k8simg etcd health`` asks: from the
        local cloud's namespace, through the bastion on OpenStack, whose way in is tried
        again until the deadline, as the bastion may still be booting). Where the cluster's
        design gives this machine no way in (no bastion), a warning says it was not asked.

        :raises ControlPlaneUnhealthy: naming the members that did not answer healthy.
        :raises EtcdctlMissing: at once, when etcdctl is not installed here.
        """
        if self.dry or not self.health_timeout:
            return
        endpoints = planned_endpoints(self.cluster)
        if not endpoints:
            return
        if why := self.cloud.unreachable():
            self.warn(f"etcd's health was not asked ({why}); deploy did not wait for it")
            return
        self.cloud.progress(f"waiting for etcd: {len(endpoints)} member(s) healthy "
                            f"(up to {self.health_timeout:.0f} s)")
        started = time.monotonic()
        deadline = started + self.health_timeout
        said = None
        while True:
            try:
                with etcd_client(self.cloud) as etcd:
                    eps = wait_healthy(etcd, endpoints, max(deadline - time.monotonic(), 0),
                                       self.cloud.progress)
                break
            except EtcdctlMissing:
                raise
            except (CloudError, EtcdError) as e:  # no way in yet, or no answer at the end
                if time.monotonic() >= deadline:
                    raise ControlPlaneUnhealthy(self.cluster.path, self.health_timeout,
                                                [f"not reached: {e}"]) from None
                if str(e) != said:
                    self.cloud.progress(f"etcd: not reached yet ({e}); waiting")
                    said = str(e)
                time.sleep(5)
        sick = [f"{e.endpoint}: {e.detail}" for e in eps if not e.healthy]
        sick += [f"{url}: no answer" for url in endpoints
                 if url not in {e.endpoint for e in eps}]
        if sick:
            raise ControlPlaneUnhealthy(self.cluster.path, self.health_timeout, sick)
        self.cloud.progress(f"etcd: {len(endpoints)}/{len(endpoints)} members healthy after "
                            f"{time.monotonic() - started:.0f} s")

    def remove_surplus(self, image: ImageFacts | None = None) -> None:
        """Scale down: workers beyond ``workers.count`` go, newest (highest index) first,
        retired as the upgrade retires a worker (all cordoned, then each drained with
        PodDisruptionBudgets honoured, then deleted).

        :param image: the nodes' image (default: as the cloud finds it).
        :raises Unobservable: when the Kubernetes API cannot be asked on nodes that run
            Kubernetes, before any worker is deleted (``skip_unobservable`` deletes them
            undrained, and says so in the warnings).
        """
        planned = {n.name for n in self.nodes}
        surplus = sorted((s for s in self.cloud.nodes() if s.role == "worker" and
                          s.name not in planned), key=lambda s: s.index, reverse=True)
        if not surplus:
            return
        if self.dry:
            for s in surplus:
                self.ledger.record("delete", "server", s.name,
                                   "beyond workers.count; to be drained first")
            return
        if image is None:
            image = self.cloud.prepare(self.nodes).image
        life = Lifecycle(self.cluster, self.cloud,
                         has_kubernetes=image is None or image.has_kubernetes,
                         skip_unobservable=self.skip_unobservable, timeout=self.drain_timeout,
                         kube=self.kube,
                         events=lambda e, d: self.cloud.progress(d["message"])
                         if e == "drain-progress" else None)
        names = ", ".join(s.name for s in surplus)
        access = life.require_api(f"workers beyond workers.count ({names}) were not removed")
        if access.api is None:
            self.warn(f"workers {names} removed without draining: {access.why_not}")

        def record(name: str, done: DrainResult | None) -> None:
            detail = "beyond workers.count"
            if done is None:
                detail += "; not drained"
            else:
                detail += (f"; drained: {len(done.evicted)} pod(s) evicted"
                           + (f", {done.refusals} eviction(s) waited for a disruption budget"
                              if done.refusals else ""))
            self.ledger.record("delete", "server", name, detail)

        life.retire([s.name for s in surplus], f"workers beyond workers.count ({names})",
                    before_delete=record)

    def destroy(self) -> DestroyResult:
        """Everything the cluster has in its cloud; its floating IPs leave the state with it."""
        result = self.cloud.destroy()
        if not self.dry and not result.left:
            self.cluster.state.forget_addresses()
            self.cluster.state.forget_service_network()
        return result
