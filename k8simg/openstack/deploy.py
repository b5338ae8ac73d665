"""``k8simg deploy`` / ``destroy`` on OpenStack: the cluster definition turned into the cloud
resources it needs, reconciled (a second run changes nothing), planned without touching anything
(``--plan``), and removed by tag.

Order of a deploy, each phase's independent resources created concurrently:

1. preflight (nothing is created unless every check passes): the cloud answers; the image,
   every flavor and the external network exist; the quotas cover what is missing; every node's
   Ignition config fits Nova's user_data limit;
2. network, subnet and router; security groups and their rules; server groups; the application
   credential of the in-cluster integrations (kept in the cluster directory);
3. the API's VIP port and floating IP, whose addresses go into the API server's certificate
   (reissued when they are new) before any node config is rendered;
4. per node: port (planned fixed address, pod CIDR in allowed_address_pairs), storage volume,
   server (config drive, its Ignition config as user_data, the volume as its second disk);
   the bastion's floating IP;
5. the Octavia load balancer: TCP listener on the API port, pool, one member per master, health
   monitor, each step waiting out the PENDING states; finally the admin kubeconfig, pointing at
   the API's floating IP.
"""

import contextlib
import json
import threading

from k8simg.cluster import ClusterDir
from k8simg.errors import K8simgError
from k8simg.fsutil import atomic_write
from k8simg.openstack import CloudError, connect
from k8simg.openstack.resources import (
    SERVER_MICROVERSION,
    b64,
    cluster_tag,
    server_fault,
    wait_for,
)
from k8simg.plan import Node, api_vip, gateway
from k8simg.provider import DestroyResult, NodeStatus, Provider

NODE_SG = "nodes"
LB_PENDING = {"PENDING_CREATE", "PENDING_UPDATE", "PENDING_DELETE"}


def roles_of(node: Node) -> list[str]:
    """The node's security groups (by role)."""
    return ["bastion"] if node.role == "bastion" else [NODE_SG, f"{node.role}s"]


class OpenStackProvider(Provider):
    """One cluster's resources on one OpenStack cloud (``cloud`` names it in clouds.yaml)."""

    def __init__(self, cluster: ClusterDir, cloud: str | None, **kw):
        super().__init__(cluster, **kw)
        self.cloud = cloud or self.cfg.cloud
        self.where = f"cloud {self.cloud!r}"
        self.tag = cluster_tag(self.name)
        self._local = threading.local()
        self.found: dict = {}
        self.ports: dict[str, object] = {}

    # ------------------------------------------------------------------ plumbing
    @property
    def conn(self):
        """One connection per thread (openstacksdk connections are not shared safely)."""
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = connect(self.cloud)
            c.compute.default_microversion = SERVER_MICROVERSION
        return c

    def _one(self, items, kind: str, name: str):
        items = list(items)
        if len(items) > 1:
            raise CloudError(f"{kind} {name!r}: {len(items)} found, expected at most one; "
                             "remove the duplicates (or run destroy)")
        return items[0] if items else None

    def tagged_volumes(self) -> list:
        """The cluster's volumes (Cinder has no tags; k8simg marks them in metadata, and
        filters here: Cinder's metadata query filter is not reliably exposed to members)."""
        return [v for v in self.conn.block_storage.volumes()
                if (v.metadata or {}).get(self.tag) == "true"]

    def _tagged(self, res, record: bool = True):
        """Tag a Neutron resource right after creating it (Neutron takes no tags in a POST);
        a resource left untagged by a kill in between is found again by its name."""
        if self.tag not in (getattr(res, "tags", None) or []):
            if record:  # found untagged; a fresh creation is already in the ledger
                self.ledger.record("update", "tag", res.name or res.id, self.tag)
            if not self.dry:
                self.conn.network.set_tags(res, [*(res.tags or []), self.tag])
        return res

    # ------------------------------------------------------------------ preflight
    def preflight(self, nodes: list[Node]) -> list[tuple[str, str]]:
        """The image, every flavor, the external network and the quotas; what was looked up
        is kept for the creations that follow."""
        conn = self.conn
        problems: list[tuple[str, str]] = []
        found: dict = {}
        from openstack import exceptions as osx

        try:
            image = conn.image.find_image(self.cfg.image, ignore_missing=True)
        except osx.DuplicateResource:
            image = None
            problems.append(("image", f"{self.cfg.image!r} names several images; give its ID"))
        else:
            if image is None:
                problems.append(("image", f"no image {self.cfg.image!r} in cloud "
                                          f"{self.cloud!r} (k8simg bake --upload makes one)"))
            elif image.status != "active":
                problems.append(("image", f"{self.cfg.image!r} is {image.status}, not active"))
            elif (image.properties or {}).get("k8simg_kubernetes_binaries") == "absent":
                self.warnings.append(f"image {image.name} was baked without Kubernetes "
                                     "binaries: its nodes run etcd and containerd, no kubelet")
        found["image"] = image
        flavors = {}
        for field_name, flavor in self._flavor_fields().items():
            f = conn.compute.find_flavor(flavor, ignore_missing=True)
            if f is None:
                problems.append((field_name, f"no flavor {flavor!r} in cloud {self.cloud!r}"))
            flavors[flavor] = f
        found["flavors"] = flavors
        ext = conn.network.find_network(self.cfg.openstack.external_network,
                                        ignore_missing=True)
        if ext is None or not ext.is_router_external:
            problems.append(("openstack.external_network",
                             f"no external network {self.cfg.openstack.external_network!r}"))
        found["external_network"] = ext
        if not problems:
            problems += self._quota_problems(flavors)
        self.found = found
        return problems

    def _flavor_fields(self) -> dict[str, str]:
        c = self.cfg
        fields = {}
        if c.masters.count:
            fields["masters.flavor"] = c.masters.flavor
        if c.workers.count:
            fields["workers.flavor"] = c.workers.flavor
        if c.etcd.placement == "dedicated":
            fields["etcd.flavor"] = c.etcd.flavor
        if c.bastion.enabled:
            fields["bastion.flavor"] = c.bastion.flavor
        return fields

    def _flavor_of(self, node: Node) -> str:
        return {"master": self.cfg.masters, "worker": self.cfg.workers, "etcd": self.cfg.etcd,
                "bastion": self.cfg.bastion}[node.role].flavor

    def _volume_gb(self, node: Node) -> int | None:
        spec = {"master": self.cfg.masters, "worker": self.cfg.workers, "etcd": self.cfg.etcd}
        return spec[node.role].volume_size_gb if node.role in spec else None

    def _quota_problems(self, flavors) -> list[tuple[str, str]]:
        conn, pid = self.conn, self.conn.current_project_id
        existing = {s.name for s in conn.compute.servers(tags=self.tag)}
        new = [n for n in self.nodes_planned if n.name not in existing]
        existing_vols = {v.name for v in self.tagged_volumes()}
        new_vols = [n for n in new if self._volume_gb(n) and f"{n.name}-storage"
                    not in existing_vols]
        need = {
            ("compute", "instances"): len(new),
            ("compute", "cores"): sum(flavors[self._flavor_of(n)].vcpus for n in new),
            ("compute", "ram"): sum(flavors[self._flavor_of(n)].ram for n in new),
            ("volume", "volumes"): len(new_vols),
            ("volume", "gigabytes"): sum(self._volume_gb(n) for n in new_vols),
        }
        have_fips = len([ip for ip in conn.network.ips(project_id=pid) if ip.description in
                         (f"{self.name}-api", f"{self.name}-bastion")])
        need[("network", "floatingip")] = max(0, (2 if self.cfg.bastion.enabled else 1)
                                              - have_fips)
        problems = []
        qs = {"compute": conn.compute.get_quota_set(pid, usage=True),
              "volume": conn.block_storage.get_quota_set(pid, usage=True),
              "network": conn.network.get_quota(pid, details=True)}
        for (svc, name), amount in need.items():
            if amount <= 0:
                continue
            limit, used = _quota(qs[svc], name)
            if limit >= 0 and used + amount > limit:
                problems.append((f"quota.{name}", f"the cluster needs {amount} more, the "
                                 f"project has {max(0, limit - used)} left (limit {limit}, "
                                 f"in use {used})"))
        return problems

    def stand_in_credential(self):
        # Not created yet (deploy creates it after preflight): sized with a stand-in of the
        # same shape, Keystone's 32-hex id and 86-character secret.
        from k8simg.ignition.render import CloudCredential

        auth = self.conn.config.get_auth_args()
        return CloudCredential(auth.get("auth_url", ""), "0" * 32, "x" * 86,
                               self.conn.config.get_region_name())

    # ------------------------------------------------------------------ network
    def ensure_network(self):
        n = self.conn.network
        name = f"{self.name}-net"
        net = self._one(n.networks(name=name, project_id=n.get_project_id()), "network", name)
        if net is None:
            self.ledger.record("create", "network", name)
            if self.dry:
                return None, None
            net = self._tagged(n.create_network(name=name), record=False)
        else:
            self._tagged(net)
        sname = f"{self.name}-subnet"
        sub = self._one(n.subnets(name=sname, network_id=net.id), "subnet", sname)
        if sub is not None:
            self._tagged(sub)
        if sub is None:
            self.ledger.record("create", "subnet", sname, str(self.cfg.network.node_cidr))
            if not self.dry:
                cidr = self.cfg.network.node_cidr
                hosts = list(cidr.hosts())
                sub = n.create_subnet(
                    name=sname, network_id=net.id, ip_version=4, cidr=str(cidr),
                    gateway_ip=str(gateway(self.cfg)),
                    dns_nameservers=[str(d) for d in self.cfg.network.dns_nameservers],
                    # planned nodes take fixed addresses below; DHCP hands out the top
                    allocation_pools=[{"start": str(hosts[-len(hosts) // 5]),
                                       "end": str(hosts[-1])}])
                self._tagged(sub, record=False)
        return net, sub

    def ensure_router(self, ext, sub):
        n = self.conn.network
        name = f"{self.name}-router"
        router = self._one(n.routers(name=name, project_id=n.get_project_id()), "router", name)
        if router is not None:
            self._tagged(router)
        if router is None:
            self.ledger.record("create", "router", name)
            if self.dry:
                return None
            router = n.create_router(name=name,
                                     external_gateway_info={"network_id": ext.id})
            self._tagged(router, record=False)
        if sub is None:
            self.ledger.record("create", "router interface", name)
            return router
        attached = list(n.ports(device_id=router.id, network_id=sub.network_id))
        if not attached:
            self.ledger.record("create", "router interface", name, sub.name)
            if not self.dry:
                n.add_interface_to_router(router, sub.id)  # subnet (positional: its keyword was renamed)
        return router

    # ------------------------------------------------------------------ security groups
    def wanted_groups(self) -> list[str]:
        groups = [NODE_SG, "masters"]
        if self.cfg.workers.count:
            groups.append("workers")
        if self.cfg.etcd.placement == "dedicated":
            groups.append("etcds")
        if self.cfg.bastion.enabled:
            groups.append("bastion")
        return groups

    def sg_name(self, group: str) -> str:
        return f"{self.name}-{group}"

    def wanted_rules(self, ids: dict[str, str | None]) -> dict[str, set[tuple]]:
        """Ingress rules per group: ``(protocol, min, max, remote_ip_prefix, remote_group)``."""
        c = self.cfg
        node_cidr = str(c.network.node_cidr)
        rules: dict[str, set[tuple]] = {g: set() for g in self.wanted_groups()}
        nodes = rules[NODE_SG]
        nodes.add(("udp", 8472, 8472, None, ids[NODE_SG]))  # flannel VXLAN between nodes
        nodes.add(("tcp", 10250, 10250, None, ids["masters"]))  # kubelet, from masters
        nodes.add(("icmp", None, None, None, ids[NODE_SG]))
        if c.bastion.enabled:
            nodes.add(("tcp", 22, 22, None, ids["bastion"]))  # SSH only from the bastion
            rules["bastion"] |= {("tcp", 22, 22, str(cidr), None)
                                 for cidr in c.bastion.allowed_cidrs}
        api = c.api.port
        rules["masters"] |= {("tcp", api, api, str(cidr), None) for cidr in c.api.allowed_cidrs}
        rules["masters"].add(("tcp", api, api, node_cidr, None))  # the LB and the nodes
        if c.etcd.placement == "dedicated":
            rules["etcds"].add(("tcp", 2379, 2379, None, ids["masters"]))
            rules["etcds"].add(("tcp", 2379, 2380, None, ids["etcds"]))
        else:
            rules["masters"].add(("tcp", 2379, 2380, None, ids["masters"]))  # etcd, masters only
        if c.bastion.enabled:
            # etcd's client port from the bastion alone: `k8simg upgrade` tunnels through it
            # (mutual TLS with the cluster's etcd CA on top).
            members = "etcds" if c.etcd.placement == "dedicated" else "masters"
            rules[members].add(("tcp", 2379, 2379, None, ids["bastion"]))
        if "workers" in rules:
            rules["workers"] |= {(p, 30000, 32767, "0.0.0.0/0", None) for p in ("tcp", "udp")}
        return rules

    def ensure_security_groups(self) -> dict[str, object]:
        n = self.conn.network
        pid = n.get_project_id()

        def one(group):
            name = self.sg_name(group)
            sg = self._one(n.security_groups(name=name, project_id=pid), "security group", name)
            if sg is not None:
                self._tagged(sg)
            if sg is None:
                self.ledger.record("create", "security group", name)
                if self.dry:
                    return group, None
                sg = n.create_security_group(name=name,
                                             description=f"k8simg cluster {self.name}: {group}")
                self._tagged(sg, record=False)
            return group, sg

        groups = dict(self.parallel([lambda g=g: one(g) for g in self.wanted_groups()]))
        ids = {g: (sg.id if sg else f"<{self.sg_name(g)}>") for g, sg in groups.items()}
        ids.setdefault("bastion", None)
        wanted = self.wanted_rules(ids)

        def rules_of(group):
            sg = groups[group]
            have = {}
            if sg is not None:
                for r in n.security_group_rules(security_group_id=sg.id, direction="ingress"):
                    have[(r.protocol, r.port_range_min, r.port_range_max, r.remote_ip_prefix,
                          r.remote_group_id)] = r
            for key in sorted(wanted[group] - set(have), key=str):
                self.ledger.record("create", "security group rule", self.sg_name(group),
                                   _rule_text(key))
                if not self.dry:
                    proto, lo, hi, prefix, remote = key
                    n.create_security_group_rule(
                        security_group_id=sg.id, direction="ingress", ethertype="IPv4",
                        protocol=proto, port_range_min=lo, port_range_max=hi,
                        remote_ip_prefix=prefix, remote_group_id=remote)
            for key in sorted(set(have) - wanted[group], key=str):
                self.ledger.record("delete", "security group rule", self.sg_name(group),
                                   _rule_text(key))
                if not self.dry:
                    n.delete_security_group_rule(have[key], ignore_missing=True)

        self.parallel([lambda g=g: rules_of(g) for g in groups])
        return groups

    # ------------------------------------------------------------------ server groups
    def wanted_server_groups(self) -> dict[str, str]:
        groups = {"masters": "anti-affinity"}
        if self.cfg.workers.count:
            groups["workers"] = "soft-anti-affinity"
        if self.cfg.etcd.placement == "dedicated":
            groups["etcds"] = "anti-affinity"
        return groups

    def ensure_server_groups(self) -> dict[str, object]:
        c = self.conn.compute
        existing = {g.name: g for g in c.server_groups()}
        out = {}
        for group, policy in self.wanted_server_groups().items():
            name = f"{self.name}-{group}"
            sg = existing.get(name)
            if sg is None:
                self.ledger.record("create", "server group", name, policy)
                if not self.dry:
                    sg = c.create_server_group(name=name, policy=policy)
            out[group] = sg
        return out

    # ------------------------------------------------------------------ application credential
    def ensure_credential(self) -> None:
        """The in-cluster cloud integrations' credential: created once, its secret kept only
        in the cluster directory (the cloud never shows it again)."""
        from k8simg.ignition.render import CloudCredential

        ident = self.conn.identity
        user = self.conn.current_user_id
        name = f"{self.name}-k8simg"
        path = self.cluster.path / CloudCredential.FILE
        existing = self._one(ident.application_credentials(user, name=name),
                             "application credential", name)
        if existing is not None and path.exists():
            return
        if existing is not None:  # created by an interrupted run whose secret was lost
            self.ledger.record("replace", "application credential", name, "secret was lost")
            if self.dry:
                return
            ident.delete_application_credential(user, existing)
        else:
            self.ledger.record("create", "application credential", name)
            if self.dry:
                return
        cred = ident.create_application_credential(
            user, name=name, unrestricted=False,
            description=f"k8simg cluster {self.name}: cloud controller manager and Cinder CSI")
        auth = self.conn.config.get_auth_args()
        atomic_write(path, json.dumps({
            "auth_url": auth["auth_url"], "application_credential_id": cred.id,
            "application_credential_secret": cred.secret,
            "region": self.conn.config.get_region_name()}, indent=2) + "\n", 0o600)

    def ensure_port(self, sub, name: str, address, **attrs):
        """The port ``name`` at the fixed ``address`` on the cluster's subnet."""
        n = self.conn.network
        port = None
        if sub is not None:
            port = self._one(n.ports(name=name, network_id=sub.network_id), "port", name)
            if port is not None:
                self._tagged(port)
        if port is None:
            self.ledger.record("create", "port", name, str(address))
            if not self.dry:
                port = self._tagged(n.create_port(
                    name=name, network_id=sub.network_id,
                    fixed_ips=[{"subnet_id": sub.id, "ip_address": str(address)}], **attrs),
                    record=False)
        return port

    # ------------------------------------------------------------------ API address
    def ensure_api_address(self) -> str | None:
        """The API's VIP port and floating IP; the floating IP's address goes into the API
        server's certificate."""
        self.vip, fip = self._api_address(self.sub, self.found["external_network"])
        return fip.floating_ip_address if fip is not None else None

    def _api_address(self, sub, ext):
        """The API's VIP port (fixed at the planned VIP) and its floating IP."""
        n = self.conn.network
        name = f"{self.name}-api-vip"
        vip = self.ensure_port(sub, name, api_vip(self.cfg))
        fip = None
        if self.cfg.api.floating_ip:
            fip = self._one(n.ips(floating_ip_address=str(self.cfg.api.floating_ip)),
                            "floating IP", str(self.cfg.api.floating_ip))
            if fip is None:
                raise CloudError(f"api.floating_ip: {self.cfg.api.floating_ip} is not a "
                                 f"floating IP of this project in cloud {self.cloud!r}")
        else:
            fip = self._one(n.ips(description=f"{self.name}-api",
                                  project_id=n.get_project_id()), "floating IP",
                            f"{self.name}-api")
            if fip is not None and not self.dry:
                self._tagged(fip)
        if fip is None:
            self.ledger.record("create", "floating IP", f"{self.name}-api")
            if not self.dry:
                fip = n.create_ip(floating_network_id=ext.id, port_id=vip.id,
                                  description=f"{self.name}-api")
                self._tagged(fip, record=False)
        elif vip is not None and fip.port_id != vip.id:
            self.ledger.record("update", "floating IP", fip.floating_ip_address, "-> API VIP")
            if not self.dry:
                n.update_ip(fip, port_id=vip.id)
        return vip, fip

    # ------------------------------------------------------------------ nodes
    def boot_groups(self, nodes: list[Node]) -> list[list[Node]]:
        # Members of a hard anti-affinity group boot one after the other: booted at once, the
        # scheduler places them before any has landed and the compute's late check rejects
        # them (seen here: "Anti-affinity instance group policy was violated").
        strict = [[n for n in nodes if n.role == role] for role in ("master", "etcd")]
        return [g for g in strict if g] + [[n] for n in nodes if n.role not in
                                           ("master", "etcd")]

    def ensure_node(self, node: Node, user_data: bytes | None) -> None:
        self.ports[node.name] = self._ensure_node(
            node, sub=self.sub, groups=self.groups, server_groups=self.server_groups,
            image=self.found["image"], flavor=self.found["flavors"][self._flavor_of(node)],
            user_data=user_data)

    def _ensure_node(self, node: Node, *, sub, groups, server_groups, image, flavor,
                     user_data: bytes | None):
        c, b = self.conn.compute, self.conn.block_storage
        port = self.ensure_port(
            sub, f"{node.name}-port", node.address,
            # groups are only planned (None) in a dry run, where nothing is created
            security_group_ids=None if self.dry else [groups[g].id for g in roles_of(node)],
            allowed_address_pairs=[] if node.role == "bastion" else
            [{"ip_address": str(self.cfg.network.pod_cidr)}])
        volume = None
        size = self._volume_gb(node)
        if size:
            vname = f"{node.name}-storage"
            volume = self._one([v for v in self.tagged_volumes() if v.name == vname], "volume",
                               vname)
            if volume is None:
                self.ledger.record("create", "volume", vname, f"{size} GB")
                if not self.dry:
                    volume = b.create_volume(name=vname, size=size, metadata={
                        self.tag: "true", "k8simg-node": node.name})
                    volume = wait_for(f"volume {vname}", lambda: b.get_volume(volume.id),
                                      ok={"available", "in-use"}, failures={"error"},
                                      timeout=self.timeout)
        server = self._one(c.servers(name=f"^{node.name}$", tags=self.tag), "server",
                           node.name)
        if server is not None and server.status == "ERROR":
            self.ledger.record("replace", "server", node.name,
                               f"was in ERROR: {server_fault(server)}")
            if self.dry:
                return
            c.delete_server(server)
            wait_for(f"server {node.name} to go", lambda: c.find_server(
                server.id, ignore_missing=True), ok={"GONE"}, failures=set(),
                timeout=self.timeout)
            if volume is not None:
                volume = wait_for(f"volume {volume.name}", lambda: b.get_volume(volume.id),
                                  ok={"available"}, failures={"error"}, timeout=self.timeout)
            server = None
        if server is None:
            self.ledger.record("create", "server", node.name, f"{node.role}, {flavor.name}")
            if self.dry:
                return
            bdm = [{"boot_index": 0, "uuid": image.id, "source_type": "image",
                    "destination_type": "local", "delete_on_termination": True}]
            if volume is not None:
                bdm.append({"boot_index": -1, "uuid": volume.id, "source_type": "volume",
                            "destination_type": "volume", "delete_on_termination": False})
            hints = {}
            group = server_groups.get(f"{node.role}s")
            if group is not None:
                hints["group"] = group.id
            server = c.create_server(
                name=node.name, image_id=image.id, flavor_id=flavor.id,
                networks=[{"port": port.id}], config_drive=True, user_data=b64(user_data),
                block_device_mapping_v2=bdm, scheduler_hints=hints, tags=[self.tag],
                metadata={"k8simg-cluster": self.name, "k8simg-role": node.role,
                          "k8simg-image": image.id, "k8simg-generation": "1"},
                **({"availability_zone": self.cfg.openstack.availability_zone}
                   if self.cfg.openstack.availability_zone else {}))
        if not self.dry and server.status != "ACTIVE":
            wait_for(f"server {node.name}", lambda: c.get_server(server.id), ok={"ACTIVE"},
                     failures={"ERROR"}, timeout=self.timeout, describe=server_fault)
        return port

    @contextlib.contextmanager
    def etcd_client(self, identity: str = "healthcheck-client"):
        """etcd through an SSH tunnel to the bastion's floating IP (its host key pinned by the
        cluster's PKI); the members' client URLs are dialed through local forwards."""
        from k8simg.etcd import Etcd
        from k8simg.tunnel import Tunnel

        state = self.cluster.state()
        address = state.get("bastion_floating_ip")
        if not self.cfg.bastion.enabled or not address:
            raise K8simgError(f"etcd on {self.where} is reached through the bastion, and "
                              f"cluster {self.name} has "
                              + ("none (bastion.enabled: false)" if not self.cfg.bastion.enabled
                                 else "no bastion address in its state (deploy it first)"))
        pki = self.cluster.pki(self.cfg)
        with Tunnel(address, host_key=pki.bastion_host_public_key(), client_keys=self.ssh_keys) as t:
            yield Etcd(self.cluster.pki_dir, identity=identity, route=t.url)

    def ensure_bastion_ip(self, port, ext) -> None:
        n = self.conn.network
        name = f"{self.name}-bastion"
        fip = self._one(n.ips(description=name, project_id=n.get_project_id()),
                        "floating IP", name)
        if fip is None:
            self.ledger.record("create", "floating IP", name)
            if not self.dry:
                fip = n.create_ip(floating_network_id=ext.id, port_id=port.id,
                                  description=name)
                self._tagged(fip, record=False)
        elif port is not None and fip.port_id != port.id:
            # A replaced bastion (upgrade, or a server in ERROR redeployed): same address
            # for the operators, now on the new server's port.
            self.ledger.record("update", "floating IP", name, "to the new bastion")
            if not self.dry:
                fip = n.update_ip(fip, port_id=port.id)
        if fip is not None and not self.dry:
            self.cluster.save_state(bastion_floating_ip=fip.floating_ip_address)

    # ------------------------------------------------------------------ load balancer
    def _lb_wait(self, lb_id: str) -> None:
        lbs = self.conn.load_balancer
        wait_for(f"load balancer {self.name}-api", lambda: lbs.get_load_balancer(lb_id),
                 attribute="provisioning_status", ok={"ACTIVE"}, failures={"ERROR"},
                 timeout=self.timeout)

    def ensure_api_members(self, masters: list[Node]) -> None:
        self.ensure_load_balancer(self.sub, self.vip, masters)

    def ensure_load_balancer(self, sub, vip, masters: list[Node]) -> None:
        lbs = self.conn.load_balancer
        name = f"{self.name}-api"
        lb = self._one(lbs.load_balancers(name=name), "load balancer", name)
        if lb is None:
            self.ledger.record("create", "load balancer", name, str(api_vip(self.cfg)))
            if self.dry:
                for kind, what in (("listener", f"{name}-{self.cfg.api.port}"),
                                   ("pool", f"{name}-masters"), ("health monitor", f"{name}-hm")):
                    self.ledger.record("create", kind, what)
                for m in masters:
                    self.ledger.record("create", "pool member", m.name)
                return
            lb = lbs.create_load_balancer(
                name=name, vip_port_id=vip.id, vip_subnet_id=sub.id,
                vip_address=str(api_vip(self.cfg)), tags=[self.tag],
                description=f"k8simg cluster {self.name}: Kubernetes API")
        if not self.dry:
            self._lb_wait(lb.id)
        lname = f"{name}-{self.cfg.api.port}"
        listener = self._one(lbs.listeners(name=lname, load_balancer_id=lb.id), "listener", lname)
        if listener is None:
            self.ledger.record("create", "listener", lname, f"TCP {self.cfg.api.port}")
            if self.dry:
                return
            listener = lbs.create_listener(name=lname, load_balancer_id=lb.id, protocol="TCP",
                                           protocol_port=self.cfg.api.port, tags=[self.tag])
            self._lb_wait(lb.id)
        pname = f"{name}-masters"
        pool = self._one(lbs.pools(name=pname, loadbalancer_id=lb.id), "pool", pname)
        if pool is None:
            self.ledger.record("create", "pool", pname, "TCP, round robin")
            if self.dry:
                return
            pool = lbs.create_pool(name=pname, listener_id=listener.id, protocol="TCP",
                                   lb_algorithm="ROUND_ROBIN", tags=[self.tag])
            self._lb_wait(lb.id)
        have = {m.name: m for m in lbs.members(pool)}
        want = {m.name: m for m in masters}
        for mname in sorted(set(want) - set(have)):
            self.ledger.record("create", "pool member", mname, str(want[mname].address))
            if not self.dry:
                lbs.create_member(pool, name=mname, address=str(want[mname].address),
                                  protocol_port=self.cfg.api.port, subnet_id=sub.id,
                                  tags=[self.tag])
                self._lb_wait(lb.id)
        for mname in sorted(set(have) - set(want)):
            self.ledger.record("delete", "pool member", mname)
            if not self.dry:
                lbs.delete_member(have[mname], pool)
                self._lb_wait(lb.id)
        if pool.health_monitor_id is None:
            self.ledger.record("create", "health monitor", f"{name}-hm", "TCP")
            if not self.dry:
                lbs.create_health_monitor(pool_id=pool.id, name=f"{name}-hm", type="TCP",
                                          delay=5, timeout=5, max_retries=3, tags=[self.tag])
                self._lb_wait(lb.id)

    def target_image(self) -> str:
        return self.found["image"].id

    def nodes(self) -> list[NodeStatus]:
        out = []
        for s in self.conn.compute.servers(tags=self.tag):
            meta = s.metadata or {}
            addresses = [a["addr"] for net in (s.addresses or {}).values() for a in net]
            out.append(NodeStatus(s.name, meta.get("k8simg-role", "?"), s.status,
                                  addresses[0] if addresses else None,
                                  meta.get("k8simg-image", ""),
                                  int(meta.get("k8simg-generation", "1")),
                                  console=f"openstack console log show {s.id}"))
        return sorted(out, key=lambda n: n.name)

    def delete_node(self, name: str) -> None:
        """The server, then its volume and its port."""
        c, n, b = self.conn.compute, self.conn.network, self.conn.block_storage
        server = self._one(c.servers(name=f"^{name}$", tags=self.tag), "server", name)
        if server is not None:
            c.delete_server(server)
            wait_for(f"server {name} to go", lambda: c.find_server(
                server.id, ignore_missing=True), ok={"GONE"}, failures=set(),
                timeout=self.timeout)
        for v in self.tagged_volumes():
            if v.name == f"{name}-storage":
                self.ledger.record("delete", "volume", v.name)
                wait_for(f"volume {v.name} to detach", lambda v=v: b.get_volume(v.id),
                         ok={"available", "error"}, failures=set(), timeout=self.timeout)
                b.delete_volume(v)
        for port in n.ports(name=f"{name}-port", project_id=n.get_project_id()):
            self.ledger.record("delete", "port", port.name)
            n.delete_port(port)

    def _owned_by_name(self, res) -> bool:
        """Tagged with this cluster, or untagged and named exactly as this cluster names
        its Neutron resources (a kill can fall between a create and its tagging). A prefix
        match would take ``prod-eu``'s resources for ``prod``'s."""
        tags = res.tags or []
        if self.tag in tags:
            return True
        if any(t.startswith("k8simg-cluster-") for t in tags):
            return False  # another cluster's
        names = {f"{self.name}-{x}" for x in ("net", "subnet", "router", "api-vip")}
        names |= {self.sg_name(g) for g in (NODE_SG, "masters", "workers", "etcds", "bastion")}
        names |= {f"{n.name}-port" for n in self.nodes_planned}
        return res.name in names

    @property
    def nodes_planned(self) -> list[Node]:
        return self.cluster.nodes(self.cfg)

    def masters(self) -> list[Node]:
        return [n for n in self.nodes_planned if n.role == "master"]

    # ------------------------------------------------------------------ phases
    def ensure_infrastructure(self, nodes: list[Node]) -> None:
        """Network, subnet and router; security groups; server groups; the credential."""
        ext = self.found["external_network"]

        def network():
            _net, sub = self.ensure_network()
            self.ensure_router(ext, sub)
            return sub

        self.sub, self.groups, self.server_groups, _ = self.parallel(
            [network, self.ensure_security_groups, self.ensure_server_groups,
             self.ensure_credential])

    def finish(self, nodes: list[Node]) -> None:
        if self.cfg.bastion.enabled:
            bastion = next(n for n in nodes if n.role == "bastion")
            self.ensure_bastion_ip(self.ports.get(bastion.name), self.found["external_network"])

    # ------------------------------------------------------------------ destroy
    def destroy(self) -> DestroyResult:
        """Remove everything tagged with the cluster, in dependency order."""
        conn, tag = self.conn, self.tag
        n, c, b, lbs = conn.network, conn.compute, conn.block_storage, conn.load_balancer
        removed, left = [], []

        def attempt(what: str, fn) -> None:
            self.ledger.record("delete", *what.split(" ", 1))
            if self.dry:
                return
            try:
                fn()
                removed.append(what)
            except Exception as e:  # reported, and destroy goes on with the rest
                left.append(f"{what}: {e}")

        for lb in lbs.load_balancers(tags=tag):
            def drop(lb=lb):
                lbs.delete_load_balancer(lb, cascade=True)
                wait_for(f"load balancer {lb.name} to go", lambda: lbs.find_load_balancer(
                    lb.id, ignore_missing=True), attribute="provisioning_status",
                    ok={"DELETED", "GONE"}, failures={"ERROR"}, timeout=self.timeout)
            attempt(f"load-balancer {lb.name}", drop)
        servers = list(c.servers(tags=tag))

        def drop_server(s):
            return lambda: attempt(f"server {s.name}", lambda: (
                c.delete_server(s), wait_for(f"server {s.name} to go", lambda: c.find_server(
                    s.id, ignore_missing=True), ok={"GONE"}, failures=set(),
                    timeout=self.timeout)))
        self.parallel([drop_server(s) for s in servers])
        for v in self.tagged_volumes():
            def drop_volume(v=v):
                if v.status not in ("available", "error"):
                    wait_for(f"volume {v.name} to detach", lambda: b.get_volume(v.id),
                             ok={"available", "error"}, failures=set(), timeout=self.timeout)
                b.delete_volume(v)
            attempt(f"volume {v.name}", drop_volume)
        pid = n.get_project_id()
        mine = self._owned_by_name
        for ip in [ip for ip in n.ips(project_id=pid) if tag in (ip.tags or []) or
                   ip.description in (f"{self.name}-api", f"{self.name}-bastion")]:
            if self.cfg.api.floating_ip and ip.floating_ip_address == str(self.cfg.api.floating_ip):
                continue  # the operator's own address: only detached
            attempt(f"floating-ip {ip.floating_ip_address}", lambda ip=ip: n.delete_ip(ip))
        if self.cfg.api.floating_ip:
            for ip in n.ips(floating_ip_address=str(self.cfg.api.floating_ip)):
                if ip.port_id and not self.dry:
                    n.update_ip(ip, port_id=None)
        for r in [r for r in n.routers(project_id=pid) if mine(r)]:
            def drop_router(r=r):
                for p in n.ports(device_id=r.id, device_owner="network:router_interface"):
                    n.remove_interface_from_router(r, port_id=p.id)
                n.delete_router(r)
            attempt(f"router {r.name}", drop_router)
        for p in [p for p in n.ports(project_id=pid) if mine(p) and not p.device_owner]:
            attempt(f"port {p.name}", lambda p=p: n.delete_port(p))
        for s in [s for s in n.subnets(project_id=pid) if mine(s)]:
            attempt(f"subnet {s.name}", lambda s=s: n.delete_subnet(s))
        for net in [x for x in n.networks(project_id=pid) if mine(x)]:
            attempt(f"network {net.name}", lambda net=net: n.delete_network(net))
        for sg in [g for g in n.security_groups(project_id=pid) if mine(g)]:
            attempt(f"security-group {sg.name}", lambda sg=sg: n.delete_security_group(sg))
        for g in c.server_groups():
            if g.name in {f"{self.name}-{k}" for k in ("masters", "workers", "etcds")}:
                attempt(f"server-group {g.name}", lambda g=g: c.delete_server_group(g))
        user = conn.current_user_id
        for cred in conn.identity.application_credentials(user, name=f"{self.name}-k8simg"):
            attempt(f"application-credential {cred.name}",
                    lambda cred=cred: conn.identity.delete_application_credential(user, cred))
        if not self.dry and not left:
            from k8simg.ignition.render import CloudCredential

            (self.cluster.path / CloudCredential.FILE).unlink(missing_ok=True)
            for key in ("api_floating_ip", "bastion_floating_ip"):
                self.cluster.drop_state(key)
        return DestroyResult(removed, left)


def _quota(qs, name: str) -> tuple[int, int]:
    """``(limit, in use)`` from a Nova/Cinder quota set (with usage) or a Neutron quota."""
    value = getattr(qs, name, None)
    if isinstance(value, dict):  # neutron details, or nova with usage
        return int(value.get("limit", -1)), int(value.get("used", value.get("in_use", 0)))
    usage = getattr(qs, "usage", None) or {}
    return int(value if value is not None else -1), int(usage.get(name, 0))


def _rule_text(key: tuple) -> str:
    proto, lo, hi, prefix, remote = key
    ports = "" if lo is None else (f" {lo}" if lo == hi else f" {lo}-{hi}")
    return f"{proto}{ports} from {prefix or remote}"

