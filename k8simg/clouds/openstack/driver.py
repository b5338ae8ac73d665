"""The OpenStack :class:`~k8simg.clouds.base.Cloud`: the cluster definition turned into the
cloud resources it needs, reconciled (a second run changes nothing), planned without touching
anything (a dry run), and removed by the cluster's UID.

What each step makes, each phase's independent resources concurrently:

1. :meth:`prepare` (nothing is created): the cloud answers; the image, every flavor and the
   external network exist; the quotas cover what is missing;
2. :meth:`ensure_infrastructure`: network, subnet and router; security groups and their rules;
   server groups; the application credential of the in-cluster integrations (kept in the
   cluster directory); the API's VIP port and floating IP;
3. :meth:`ensure_node`: port (planned fixed address, pod CIDR in allowed_address_pairs),
   storage volume, server (config drive, its Ignition config as user_data, the volume as its
   second disk); :meth:`wait_ready`: each first boot's end, read from Nova's console log;
4. :meth:`ensure_api_members`: the Octavia load balancer with exactly the masters;
   :meth:`attach_public_address`: the bastion's floating IP.
"""

import contextlib
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from keystoneauth1.exceptions import ClientException
from openstack.exceptions import SDKException

from k8simg.clouds.base import (
    Cloud,
    CloudError,
    Infra,
    NodeStatus,
    ObjectContainer,
    Preflight,
    Reach,
)
from k8simg.clouds.console import Boot, wait_boots
from k8simg.clouds.openstack import (
    adopt,
    compute,
    destroy,
    glance,
    identity,
    loadbalancer,
    made,
    network,
    objects,
    quota,
    security,
)
from k8simg.clouds.openstack.compute import Flavor
from k8simg.clouds.openstack.connect import Scope, connect, server_fault, share_session
from k8simg.clouds.openstack.connect import connect as default_connect
from k8simg.clouds.openstack.network import Subnet
from k8simg.model.credential import CloudCredential, ServiceNetwork
from k8simg.model.plan import Node


@dataclass(frozen=True)
class OpenStackPreflight(Preflight):
    """What :meth:`OpenStackCloud.prepare` looked up, for the creations that follow."""

    external_network_id: str | None = None
    flavors: dict[str, Flavor] = field(default_factory=dict)  # by name


@dataclass(frozen=True)
class OpenStackInfra(Infra):
    """The cluster's resources nodes are made with (None: a dry run would create it)."""

    subnet: Subnet = Subnet(None, None)
    external_network_id: str | None = None
    image_id: str | None = None
    flavors: dict[str, Flavor] = field(default_factory=dict)
    security_groups: dict[str, str | None] = field(default_factory=dict)
    server_groups: dict[str, str | None] = field(default_factory=dict)
    vip_port_id: str | None = None


class OpenStackCloud(Cloud):
    """One cluster's resources on one OpenStack cloud.

    :param cloud: its name in clouds.yaml (None: the ``OS_*`` variables).
    :param connect: makes a connection (tests give a fake's).
    :param poll: seconds between two looks at a resource being waited for.
    """

    masters_on_distinct_hosts = True  # the masters' server group is hard anti-affinity

    def __init__(self, cluster, cfg, cloud: str | None, *,
                 connect: Callable[[str | None], object] = connect, poll: float = 1.0, **kw):
        super().__init__(cluster, cfg, **kw)
        # one keystone session for every thread: only a real connection has one to share
        self.scope = Scope(cloud, cfg, self.ledger, uid=lambda: cluster.state.uid,
                           timeout=self.timeout, poll=poll, connect=connect,
                           share=share_session if connect is default_connect else None)
        self.where = self.scope.where

    # -- preflight ---------------------------------------------------------------------------
    def prepare(self, nodes: list[Node]) -> OpenStackPreflight:
        """The image, every flavor, the external network, the availability zone (Nova's and
        Cinder's), the credential's roles, Octavia and the Services' load-balancer provider,
        and the quotas; first, for a cluster
        from before UIDs, its old resources are adopted (:mod:`.adopt`)."""
        s, conn = self.scope, self.scope.conn
        if self.cluster.state.adopting:
            adopt.adopt(s)
            if not s.dry:
                self.cluster.state.adopted()
        image, problems = glance.image_facts(s, self.cfg.image)
        flavors = {}
        for field_name, name in self.cfg.flavor_fields().items():
            f = conn.compute.find_flavor(name, ignore_missing=True)
            if f is None:
                problems.append((field_name, f"no flavor {name!r} in {s.where}"))
            else:
                flavors[name] = Flavor(f.id, f.name, f.vcpus, f.ram)
        ext = conn.network.find_network(self.cfg.openstack.external_network,
                                        ignore_missing=True)
        if ext is None:
            problems.append(("openstack.external_network",
                             f"no external network {self.cfg.openstack.external_network!r}"))
        elif not ext.is_router_external:
            problems.append(("openstack.external_network",
                             f"network {self.cfg.openstack.external_network!r} is not external "
                             f"(router:external is false): floating IPs come from an external "
                             f"network"))
            ext = None
        problems += compute.zone_problems(s)
        problems += identity.role_problems(s, self.cluster.path)
        problems += loadbalancer.provider_problems(s)
        if not problems:
            problems += quota.quota_problems(s, nodes, flavors)
        lbs = None
        if ext is not None and not problems and self.cluster.state.uid:  # made already?
            sub = network.find_subnet(s)
            lbs = ServiceNetwork(sub.id, ext.id) if sub is not None else None
        return OpenStackPreflight(problems, image, lbs, ext.id if ext is not None else None,
                                  flavors)

    def stand_in_credential(self) -> CloudCredential:
        """A stand-in of the cluster's application credential (same shape), for sizing user_data
        before deploy creates the real one."""
        # Not created yet (deploy creates it after preflight): sized with a stand-in.
        return identity.stand_in_credential(self.scope)

    # -- infrastructure ------------------------------------------------------------------------
    def ensure_infrastructure(self, pre: OpenStackPreflight, nodes: list[Node]) -> OpenStackInfra:
        """Network, subnet and router; security groups; server groups; the credential; then
        the API's VIP port and floating IP (on the subnet)."""
        s = self.scope

        def net():
            sub = network.ensure_network(s)
            network.ensure_router(s, pre.external_network_id, sub)
            return sub

        sub, groups, server_groups, _ = self.parallel(
            [net, lambda: security.ensure_security_groups(s, self.parallel),
             lambda: compute.ensure_server_groups(s),
             lambda: identity.ensure_credential(s, self.cluster.path)])
        vip, address = network.ensure_api_address(s, sub, pre.external_network_id)
        lbs = (ServiceNetwork(sub.id, pre.external_network_id)
               if sub.id and pre.external_network_id else None)  # None: a dry run
        return OpenStackInfra(api_address=address, service_network=lbs, subnet=sub,
                              external_network_id=pre.external_network_id,
                              image_id=pre.image.ref if pre.image else None,
                              flavors=pre.flavors, security_groups=groups,
                              server_groups=server_groups, vip_port_id=vip)

    # -- nodes ---------------------------------------------------------------------------------
    def boot_groups(self, nodes: list[Node]) -> list[list[Node]]:
        """Masters in one group and dedicated etcd members in another, each group's members booted
        one after the other; every other node alone."""
        # Members of a hard anti-affinity group are placed one after the other: booted at
        # once, the scheduler places them before any has landed and the compute's late check
        # rejects them (seen here: "Anti-affinity instance group policy was violated"). Each
        # waits for the one before it to be on a host (place_node), not to be ACTIVE.
        strict = [[n for n in nodes if n.role == role] for role in ("master", "etcd")]
        return [g for g in strict if g] + [[n] for n in nodes if n.role not in
                                           ("master", "etcd")]

    def prepare_node(self, node: Node, infra: OpenStackInfra) -> None:
        """The node's port and volume (the volume waited for until available)."""
        self._port_and_volume(node, infra)

    def place_node(self, node: Node, user_data: bytes | None, infra: OpenStackInfra) -> None:
        """Port, volume and server; waits until a compute host has claimed the server (Nova's
        scheduler counts a group member's host from then on; the late anti-affinity check
        on the compute rejected members booted before that)."""
        self._server(node, user_data, infra, placed_only=True)

    def ensure_node(self, node: Node, user_data: bytes | None, infra: OpenStackInfra) -> None:
        """Port, volume and server; waits until the server is ACTIVE."""
        self._server(node, user_data, infra)

    def _server(self, node: Node, user_data: bytes | None, infra: OpenStackInfra,
                placed_only: bool = False) -> None:
        port, volume = self._port_and_volume(node, infra)
        compute.ensure_server(
            self.scope, node, port_id=port.id if port is not None else None, volume=volume,
            image_id=infra.image_id, flavor=infra.flavors[self.cfg.flavor(node.role)],
            server_group_id=infra.server_groups.get(f"{node.role}s"), user_data=user_data,
            placed_only=placed_only)

    def _port_and_volume(self, node: Node, infra: OpenStackInfra):
        s = self.scope
        port = network.ensure_port(
            s, infra.subnet, f"{node.name}-port", node.address,
            # groups are only planned (None) in a dry run, where nothing is created
            security_group_ids=None if s.dry else [infra.security_groups[g]
                                                   for g in security.groups_of(node)],
            allowed_address_pairs=[] if node.role == "bastion" else
            [{"ip_address": str(self.cfg.network.pod_cidr)}])
        return port, compute.ensure_volume(s, node)

    def wait_ready(self, nodes: list[Node]) -> None:
        """Wait until each node's first boot has ended, read from Nova's console log (its
        tail) with the parser the local cloud uses: its login prompt, or Ignition's failure.
        The verdict is kept in the server's metadata (``k8simg-boot``); a failed node is
        replaced by the next deploy.

        :raises NodeFailed: naming the nodes whose boot failed, whose server left ACTIVE, or
            whose console showed no verdict within the cluster's timeout, with its lines.
        """
        s = self.scope
        looked: dict[str, object] = {}  # each node's server as last looked at
        said_no_console = []
        said_lock = threading.Lock()  # nodes are looked at from several threads at once

        def look(name: str) -> Boot:
            server = looked[name] = compute.find_server(s, name)
            if server is None:
                return Boot("", running=False, stopped="its server is gone")
            recorded = (server.metadata or {}).get(compute.BOOT_KEY)
            settled = recorded if recorded in compute.VERDICTS else None
            if settled == "ready":
                return Boot("", settled=settled)
            running = server.status == "ACTIVE"
            text = compute.console_tail(s, server) if running or settled else ""
            if running and compute.verdict_unknowable(server, recorded, text):
                with said_lock:
                    if text is None and not said_no_console:
                        self.progress(f"warning: Nova in {self.where} gives no console log "
                                      f"for {name}: a first boot is taken as done when its "
                                      f"server is ACTIVE")
                        said_no_console.append(name)
                # (else: booted before verdicts were recorded; its console's tail moved on)
                settle(name, "ready", "")
                return Boot(text or "", settled="ready")
            return Boot(text or "", running=running, settled=settled,
                        stopped=f"its server is {server.status}"
                        + (f": {fault}" if (fault := server_fault(server)) else ""))

        def settle(name: str, state: str, why: str) -> None:
            if looked.get(name) is not None:  # this thread's connection
                s.conn.compute.set_server_metadata(looked[name], **{compute.BOOT_KEY: state})
            if state == "ready":
                self.progress(f"{name}: first boot done")

        wait_boots([n.name for n in nodes], look, settle=settle, timeout=self.timeout,
                   look_all=lambda names: self.parallel([functools.partial(look, n)
                                                         for n in names]),
                   poll=2 * s.poll, progress=self.progress,
                   where=lambda name: f"Nova's console log: k8simg console "
                                      f"{self.cluster.path} {name}")

    def ensure_api_members(self, masters: list[Node], infra: OpenStackInfra) -> None:
        """The Octavia load balancer, its listener, pool and health monitor, with exactly
        ``masters`` as the pool's members; waits until each change is applied.

        :raises CloudError: when the load balancer goes to ERROR.
        """
        loadbalancer.ensure_load_balancer(self.scope, subnet_id=infra.subnet.id,
                                          vip_port_id=infra.vip_port_id, masters=masters)

    def attach_public_address(self, node: Node, infra: OpenStackInfra) -> str | None:
        """The bastion's floating IP, on its port (moved there after a replacement)."""
        s = self.scope
        port = None
        if infra.subnet.network_id is not None:
            port = s.mine(s.conn.network.ports(name=f"{node.name}-port",
                                               network_id=infra.subnet.network_id,
                                               project_id=s.project_id),
                          "port", f"{node.name}-port")
        return network.ensure_bastion_address(s, port.id if port is not None else None,
                                              infra.external_network_id)

    def nodes(self) -> list[NodeStatus]:
        """The servers tagged as the cluster's, their role, image and generation from their
        metadata, sorted by name; an ACTIVE server's state is its first boot's
        (:func:`~k8simg.clouds.openstack.compute.boot_state`)."""
        out = []
        for srv in self.scope.conn.compute.servers(tags=self.scope.tag):
            meta = srv.metadata or {}
            addresses = [a["addr"] for net in (srv.addresses or {}).values() for a in net]
            out.append(self.status(srv.name, meta.get("k8simg-role", "?"),
                                   state=compute.boot_state(self.scope, srv),
                                   address=addresses[0] if addresses else None,
                                   image=meta.get("k8simg-image", ""),
                                   generation=int(meta.get("k8simg-generation", "1")),
                                   config=meta.get("k8simg-config", "")))
        return sorted(out, key=lambda n: n.name)

    def delete_node(self, name: str) -> None:
        """The server (waiting until it is gone), then its volume and its port; a node that is not
        there is no error.

        :raises CloudError: when the server goes to ERROR instead of going.
        """
        compute.delete_node(self.scope, name)

    def console_log(self, name: str) -> str:
        """Nova's console log of the server ``name``.

        :raises CloudError: when the cluster has no such server, or Nova keeps no console log
            for it.
        """
        server = compute.find_server(self.scope, name)
        if server is None:
            raise CloudError(f"no server {name!r} of cluster {self.name} in {self.where}")
        text = compute.console_tail(self.scope, server, lines=0)
        if text is None:
            raise CloudError(f"Nova in {self.where} keeps no console log for server {name!r}")
        return text

    def destroy(self):
        """Everything the cluster has on the cloud, removed in dependency order (see
        :func:`k8simg.clouds.openstack.destroy.destroy`); the cluster directory's credential goes only
        when nothing was left."""
        state = self.cluster.state
        if not self.scope.dry and (state.uid is None or state.adopting):
            # A cluster from before UIDs is destroyed without a deploy first: it gets its UID
            # and adopts what carries its old tag and no other cluster's, as deploy would.
            state.ensure_uid(legacy=True)
            adopt.adopt(self.scope)
            state.adopted()
        return destroy.destroy(self.scope, self.parallel, cluster_path=self.cluster.path)

    def ingress_address(self) -> str | None:
        """The floating IP of the load balancer the cloud controller made for ingress-nginx's
        Service (:func:`~k8simg.clouds.openstack.made.ingress`); None until it has one, or
        when the cloud does not answer (said as a warning)."""
        if not self.cluster.state.uid:
            return None
        try:
            found = made.ingress(self.scope)
        except (SDKException, ClientException) as e:  # a look, after the work is done
            self.progress(f"warning: ingress-nginx's address not read ({e})")
            return None
        return found.address if found is not None else None

    # -- the way in ----------------------------------------------------------------------------
    def object_container(self, name: str) -> ObjectContainer:
        return objects.SwiftContainer(self.scope, name)

    def restore_unsupported(self) -> str | None:
        return objects.restore_unsupported(self.scope)

    def stage_restore(self, nodes: list[str], path) -> str:
        """The cluster's own Swift container (``k8simg-restore-<uid>``), a temporary URL
        (HMAC-SHA256, under a key of that container's made for this restore) for the nodes'
        first boot; see :func:`k8simg.clouds.openstack.objects.stage`."""
        return objects.stage(self.scope, path)

    def unstage_restore(self, nodes: list[str]) -> None:
        objects.unstage(self.scope)

    def unreachable(self) -> str | None:
        if not self.cfg.bastion.enabled:
            return (f"the nodes on {self.where} are reached through the bastion, and cluster "
                    f"{self.name} has none (bastion.enabled: false)")
        return None

    @contextlib.contextmanager
    def reach(self):
        """An SSH tunnel to the bastion's floating IP (its host key pinned by the cluster's
        PKI); the nodes' URLs are dialed through local forwards.

        :raises CloudError: without a bastion, or when it cannot be reached or refuses us.
        """
        from k8simg.clouds.openstack.tunnel import Tunnel
        from k8simg.pki import cluster_pki

        address = self.cluster.state.bastion_floating_ip
        if not self.cfg.bastion.enabled or not address:
            raise CloudError(f"the nodes on {self.where} are reached through the bastion, and "
                             f"cluster {self.name} has "
                             + ("none (bastion.enabled: false)" if not self.cfg.bastion.enabled
                                else "no bastion address in its state (deploy it first)"))
        host_key = cluster_pki(self.cluster, self.cfg).bastion_host_public_key()
        with Tunnel(address, host_key=host_key, client_keys=self.ssh_keys) as t:
            yield Reach(route=t.url)


