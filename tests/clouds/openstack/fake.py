"""A test fake: a stateful, in-memory stand-in for ``openstack.connection.Connection``
(openstacksdk), for the fast tier of k8simg's OpenStack code. Real clouds stay the ground truth
(tests/cloud); this only has to behave like them where k8simg depends on it.

House rules (after kops's cloudmock/openstack): it keeps state, refuses what it does not model,
and goes through the clouds' status transitions.

* Every proxy method takes openstacksdk's keyword names, so a wrong keyword, or a query filter
  the fake does not model, raises ``TypeError``; any other proxy attribute raises
  ``NotImplementedError``. Resources are ``SimpleNamespace`` copies with openstacksdk's
  attribute names (what a caller holds never changes under it).
* The services' refusals come as openstacksdk raises them: ``ConflictException`` for a network
  with ports, a subnet with ports, a security group a port uses, a duplicate rule, a change under
  a load balancer that is not ACTIVE, Neutron quota; ``BadRequestException`` for a volume deleted
  while attached, a user_data over Nova's limit; ``ForbiddenException`` for Nova quota.
* Statuses advance on reads, with no clock: a resource with a pending transition moves one step
  each time a get, find or list returns it. A server is BUILD on create and at its first read,
  ACTIVE (or ERROR with a ``fault``, if its name is in ``fail_servers``) from the second; a
  deleted server is gone at its next read (ERROR instead, if its name is in ``stuck_on_delete``).
  A volume is ``creating``, ``available`` from its first read, ``in-use`` while a server has it.
  A load balancer is PENDING_CREATE, or PENDING_UPDATE after a change under it, and ACTIVE at its
  next read; after delete it is PENDING_DELETE, and gone at its next read. One lock makes it safe
  to call from several threads.

Neutron takes no tags in a POST: its resources are created untagged, and ``set_tags`` tags them.
``FakeCloud`` holds the state; each ``FakeConnection`` is one project's view of it (an ``admin``
connection sees every project's Neutron and Octavia resources in lists, as a cloud admin does).
"""

import base64
import binascii
import copy
import functools
import hashlib
import inspect
import ipaddress
import re
import secrets
import threading
import time
import uuid
from types import SimpleNamespace as NS

from openstack import exceptions as osx
from openstack.image.v2.image import Image as _SdkImage

from tests.support import BOOTED_CONSOLE

NEUTRON = ("networks", "subnets", "ports", "routers", "security_groups", "security_group_rules",
           "floating_ips")
OCTAVIA = ("load_balancers", "listeners", "pools", "members", "health_monitors")
KINDS = ("flavors", "images", "servers", "server_groups", "volumes", "snapshots", *NEUTRON,
         *OCTAVIA, "application_credentials")
QUOTA = {"instances": 10, "cores": 20, "ram": 51200, "volumes": 10, "gigabytes": 1000,
         "floating_ips": 50, "networks": 100, "subnets": 100, "ports": 500, "routers": 10,
         "security_groups": 10, "security_group_rules": 100,
         "load_balancers": None}  # None: Octavia's default applies (LB_QUOTA_DEFAULT)
LB_QUOTA_DEFAULT = 10
ROUTER_IF = "network:router_interface"
IMAGE_FIELDS = {c.name: attr for attr, c in _SdkImage._attributes_iterator()}  # not properties
Bad, Conflict, NotFound = osx.BadRequestException, osx.ConflictException, osx.NotFoundException


_UNSET = object()


def _id(x):
    return x if isinstance(x, str) else x.id


def _over_limit(message):  # Cinder's 413
    e = osx.HttpException(message)
    e.status_code = 413
    return e


def _hosts(first, last):
    a, b = ipaddress.ip_address(first), ipaddress.ip_address(last)
    while a <= b:
        yield str(a)
        a += 1


class FakeCloud:
    """The state every connection shares, and the knobs tests turn."""

    def __init__(self):
        self.lock = threading.RLock()
        self.objs: dict[str, dict[str, NS]] = {k: {} for k in KINDS}
        # Swift: (project, container) -> object name -> bytes
        self.containers: dict[tuple[str, str], dict[str, bytes]] = {}
        self.owner: dict[str, str | None] = {}  # resource id -> project
        self.parent: dict[str, str] = {}  # Octavia child id -> load balancer id
        self.steps: dict[str, list] = {}  # resource id -> transitions left, one per read
        self.calls: list[tuple[str, str]] = []  # (proxy, method) of every mutating call
        self.fail_servers: set[str] = set()  # server names whose build ends in ERROR
        self.lb_providers = {"amphora": "The Octavia Amphora driver.",
                             "octavia": "Deprecated alias of the Octavia Amphora driver."}
        self.fault_message = "No valid host was found. There are not enough hosts available."
        self.stuck_on_delete: set[str] = set()  # server names that go to ERROR on delete
        self.slow_deletes: dict[str, int] = {}  # server name -> reads its delete takes
        # server name -> console output (None: Nova keeps none for it, a 501); an ACTIVE
        # server without one shows a first boot that ends at its login prompt
        # (tests.support.BOOTED_CONSOLE)
        self.console: dict[str, str] = {}
        self.quota = dict(QUOTA)  # limits (-1: unlimited), the same for every project
        self.zones = {"compute": {"nova"}, "volume": {"nova"}}  # availability zones by service
        # the roles every token carries on its project (Keystone's inference applied)
        self.token_roles = {"member", "reader", "load-balancer_member"}

    def connect(self, project_id="p1", user_id="u1", auth_url="http://keystone.example/v3",
                region="RegionOne", *, admin=False):
        return FakeConnection(project_id, user_id, auth_url, region, admin=admin, cloud=self)

    # ------------------------------------------------------------------ seeds and views
    def add_flavor(self, name, vcpus=2, ram=4096, disk=20):
        with self.lock:
            return self.view("flavors", self.new("flavors", None, name=name, original_name=name,
                                                 vcpus=vcpus, ram=ram, disk=disk, is_public=True))

    def add_external_network(self, name="public", cidr="203.0.113.0/24"):
        with self.lock:
            net = self.new("networks", "admin", name=name, description="", status="ACTIVE",
                           tags=[], subnet_ids=[], is_router_external=True, is_shared=False,
                           mtu=1500, is_admin_state_up=True)
            self.new_subnet(net, "admin", name=f"{name}-subnet", cidr=cidr, ip_version=4)
            return self.view("networks", net)

    def add_image(self, name, status="active", properties=None, *, owner="p1", tags=(),
                  visibility="private"):
        # as openstacksdk has them: its known fields (hw_disk_bus, os_distro...) as attributes,
        # the rest in .properties
        props = dict(properties or {})
        known = {IMAGE_FIELDS[k]: props.pop(k) for k in list(props) if k in IMAGE_FIELDS}
        with self.lock:
            return self.view("images", self.new(
                "images", owner, name=name, status=status, properties=props,
                owner=owner, owner_id=owner, tags=list(tags), visibility=visibility,
                disk_format="qcow2", container_format="bare", size=0, checksum=None, **known))

    def inventory(self, project_id=None) -> dict[str, list[str]]:
        """Kind -> sorted names of everything that exists (of one project, if given)."""
        with self.lock:
            out = {}
            for kind, objs in self.objs.items():
                names = sorted(self.label(kind, o) for o in objs.values()
                               if project_id is None or self.owner[o.id] == project_id)
                if names:
                    out[kind] = names
            return out

    def label(self, kind, o) -> str:
        if kind == "floating_ips":
            return o.description or o.floating_ip_address
        if kind == "security_group_rules":
            sgs = self.objs["security_groups"]
            remote = o.remote_ip_prefix or (sgs[o.remote_group_id].name if o.remote_group_id
                                            else "any")
            ports = "" if o.port_range_min is None else f" {o.port_range_min}-{o.port_range_max}"
            return (f"{sgs[o.security_group_id].name} {o.direction} {o.ether_type} "
                    f"{o.protocol or 'any'}{ports} from {remote}")
        if kind == "ports" and not o.name and o.device_owner == ROUTER_IF:
            return f"{self.objs['routers'][o.device_id].name}:interface"
        return o.name or o.id

    def view(self, kind, obj) -> NS:
        """What the API returns: a copy, with the lists the service derives filled in."""
        v = copy.deepcopy(obj)

        def ids(k, pred):
            return [{"id": o.id} for o in self.objs[k].values() if pred(o)]
        if kind == "security_groups":
            v.security_group_rules = [vars(copy.deepcopy(r)) for r in
                                      self.objs["security_group_rules"].values()
                                      if r.security_group_id == obj.id]
        elif kind == "load_balancers":
            v.listeners = ids("listeners", lambda o: o.load_balancer_id == obj.id)
            v.pools = ids("pools", lambda o: o.loadbalancer_id == obj.id)
        elif kind == "pools":
            v.members = ids("members", lambda o: o.pool_id == obj.id)
        return v

    # ------------------------------------------------------------------ plumbing
    def new(self, kind, project_id, **attrs) -> NS:
        attrs.setdefault("id", str(uuid.uuid4()))
        if kind not in ("flavors", "images"):
            attrs["project_id"] = project_id
        obj = NS(**attrs)
        self.objs[kind][obj.id] = obj
        self.owner[obj.id] = project_id
        return obj

    def drop(self, kind, obj) -> None:
        self.objs[kind].pop(obj.id, None)
        self.steps.pop(obj.id, None)
        self.parent.pop(obj.id, None)

    def pending(self, obj, *steps) -> None:
        self.steps[obj.id] = list(steps)

    def read(self, kind, obj) -> NS | None:
        """One read of ``obj``: its next transition, then its view (None once it is gone)."""
        steps = self.steps.pop(obj.id, [])
        if steps[1:]:
            self.steps[obj.id] = steps[1:]
        if steps:
            steps[0]()
        obj = self.objs[kind].get(obj.id)
        return self.view(kind, obj) if obj is not None else None

    def visible(self, conn, kind, obj) -> bool:
        pid = self.owner[obj.id]
        if kind == "flavors":
            return True
        if kind == "images":
            return pid == conn.current_project_id or obj.visibility == "public"
        if kind == "application_credentials":
            return obj.user_id == conn.current_user_id
        if pid == conn.current_project_id or (conn.admin and kind in NEUTRON + OCTAVIA):
            return True
        return kind == "networks" and (obj.is_router_external or obj.is_shared)

    def usage(self, pid) -> dict[str, int]:
        def mine(kind):
            return [o for o in self.objs[kind].values() if self.owner[o.id] == pid]
        servers, volumes = mine("servers"), mine("volumes")
        return {**{k: len(mine(k)) for k in NEUTRON}, "instances": len(servers),
                "cores": sum(s.flavor.vcpus for s in servers),
                "ram": sum(s.flavor.ram for s in servers),
                "volumes": len(volumes), "gigabytes": sum(v.size for v in volumes),
                "load_balancers": len(mine("load_balancers"))}

    def check_quota(self, pid, error, **need) -> None:
        use = self.usage(pid)
        for name, n in need.items():
            limit = self.quota[name] if self.quota[name] is not None else LB_QUOTA_DEFAULT
            if 0 <= limit < use[name] + n:
                raise error(f"Quota exceeded for {name}: requested {n}, but already used "
                            f"{use[name]} of {self.quota[name]}")

    # ------------------------------------------------------------------ Neutron addressing
    def new_subnet(self, net, pid, *, name, cidr, ip_version, gateway_ip=None,
                   dns_nameservers=None, allocation_pools=None, description="") -> NS:
        try:
            block = ipaddress.ip_network(cidr)
            gw = ipaddress.ip_address(gateway_ip) if gateway_ip else block[1]
        except ValueError as e:
            raise Bad(f"Invalid input for operation: {e}") from None
        if block.version != ip_version or gw not in block:
            raise Bad(f"Invalid input for operation: {cidr} / gateway {gw} / IPv{ip_version}")
        for s in self.objs["subnets"].values():
            if s.network_id == net.id and ipaddress.ip_network(s.cidr).overlaps(block):
                raise Bad(f"Invalid input for operation: Requested subnet with cidr: {cidr} for "
                          f"network: {net.id} overlaps with another subnet.")
        first, last = block[1], block[-2]
        pools = allocation_pools or [{"start": str(a), "end": str(b)} for a, b in
                                     ((first, gw - 1), (gw + 1, last)) if a <= b]
        for p in pools:
            lo, hi = ipaddress.ip_address(p["start"]), ipaddress.ip_address(p["end"])
            if not (lo in block and hi in block and lo <= hi):
                raise Bad(f"Invalid input for operation: allocation pool {p} is not in {cidr}")
            if lo <= gw <= hi:
                raise Conflict(f"Gateway ip {gw} conflicts with allocation pool {p}.")
        sub = self.new("subnets", pid, name=name, network_id=net.id, ip_version=ip_version,
                       cidr=str(block), gateway_ip=str(gw), dns_nameservers=list(dns_nameservers or []),
                       allocation_pools=[dict(p) for p in pools], description=description, tags=[],
                       is_dhcp_enabled=True, host_routes=[])
        net.subnet_ids.append(sub.id)
        return sub

    def allocate(self, sub, address=None) -> str:
        """An address on ``sub``: ``address`` if it is free, else the first free in its pools."""
        used = {ip["ip_address"] for p in self.objs["ports"].values() for ip in p.fixed_ips
                if ip["subnet_id"] == sub.id}
        used |= {f.floating_ip_address for f in self.objs["floating_ips"].values()}
        used |= {ip["ip_address"] for r in self.objs["routers"].values()
                 for ip in (r.external_gateway_info or {}).get("external_fixed_ips", [])}
        if address is None:
            free = (a for p in sub.allocation_pools for a in _hosts(p["start"], p["end"])
                    if a not in used)
            address = next(free, None)
            if address is None:
                raise Conflict(f"No more IP addresses available on network {sub.network_id}.")
        try:
            inside = ipaddress.ip_address(address) in ipaddress.ip_network(sub.cidr)
        except ValueError:
            inside = False
        if not inside:
            raise Bad(f"IP address {address} is not a valid IP for the specified subnet.")
        if address in used:
            raise Conflict(f"IP address {address} already allocated in subnet {sub.id}")
        return address

    def route_for(self, ext_id, port) -> NS:
        """The router that takes ``port``'s subnet to external network ``ext_id``."""
        if not port.fixed_ips:
            raise Bad(f"Bad floatingip request: Port {port.id} does not have any fixed IPs.")
        sub = port.fixed_ips[0]["subnet_id"]
        for r in self.objs["routers"].values():
            if (r.external_gateway_info or {}).get("network_id") == ext_id and any(
                    p.device_id == r.id and p.device_owner == ROUTER_IF and
                    any(ip["subnet_id"] == sub for ip in p.fixed_ips)
                    for p in self.objs["ports"].values()):
                return r
        raise NotFound(f"External network {ext_id} is not reachable from subnet {sub}. Therefore, "
                       f"cannot associate Port {port.id} with a Floating IP.")

    # ------------------------------------------------------------------ transitions
    def set(self, kind, ident, **attrs) -> None:
        obj = self.objs[kind].get(ident)
        if obj is not None:
            vars(obj).update(attrs)

    def server_built(self, sid) -> None:
        s = self.objs["servers"][sid]
        if s.name in self.fail_servers:
            s.status, s.fault = "ERROR", {"code": 500, "message": self.fault_message}
            return
        s.status, s.task_state = "ACTIVE", None
        for p in self.objs["ports"].values():
            if p.device_id == sid:
                net = self.objs["networks"][p.network_id].name
                s.addresses.setdefault(net, []).extend(
                    {"version": 4, "addr": ip["ip_address"], "OS-EXT-IPS:type": "fixed",
                     "OS-EXT-IPS-MAC:mac_addr": p.mac_address} for ip in p.fixed_ips)

    def server_gone(self, sid) -> None:
        s = self.objs["servers"][sid]
        if s.name in self.stuck_on_delete:
            s.status, s.fault = "ERROR", {"code": 500, "message": "fake: stuck while deleting"}
            s.task_state = None  # no delete under way any more: it failed
            return
        for p in self.objs["ports"].values():
            if p.device_id == sid:
                p.device_id, p.device_owner, p.status = "", "", "DOWN"
        for v in self.objs["volumes"].values():
            if any(a["server_id"] == sid for a in v.attachments):
                v.status, v.attachments = "available", []
        for g in self.objs["server_groups"].values():
            if sid in g.member_ids:
                g.member_ids.remove(sid)
        self.drop("servers", s)

    def lb_children(self, lb_id) -> list[tuple[str, NS]]:
        return [(k, o) for k in OCTAVIA[1:] for o in list(self.objs[k].values())
                if self.parent.get(o.id) == lb_id]

    def lb_change(self, lb) -> None:
        """A change under ``lb``: refused unless ACTIVE (Octavia's lock), then PENDING_UPDATE."""
        if lb.provisioning_status != "ACTIVE":
            raise Conflict(f"Load Balancer {lb.id} is immutable and cannot be updated.")
        lb.provisioning_status = "PENDING_UPDATE"
        self.pending(lb, functools.partial(self.lb_active, lb.id))

    def lb_active(self, lb_id) -> None:
        self.set("load_balancers", lb_id, provisioning_status="ACTIVE", operating_status="ONLINE")
        for kind, o in self.lb_children(lb_id):
            if o.provisioning_status == "PENDING_DELETE":
                self.drop(kind, o)
            else:
                o.provisioning_status = "ACTIVE"

    def lb_gone(self, lb_id) -> None:
        for kind, o in self.lb_children(lb_id):
            self.drop(kind, o)
        self.drop("load_balancers", self.objs["load_balancers"][lb_id])


# ---------------------------------------------------------------------- proxies
def _read(fn):
    @functools.wraps(fn)
    def locked(self, *args, **kwargs):
        with self._cloud.lock:
            return fn(self, *args, **kwargs)
    return locked


def _write(fn):
    """A mutating call: checked against the signature, recorded in ``calls``, then run."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def locked(self, *args, **kwargs):
        sig.bind(self, *args, **kwargs)
        with self._cloud.lock:
            self._cloud.calls.append((self._service, fn.__name__))
            return fn(self, *args, **kwargs)
    return locked


class _Strict:
    _service = "connection"

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise NotImplementedError(f"fake openstack: {self._service}.{name} is not implemented")


class _Proxy(_Strict):
    def __init__(self, conn):
        self._conn, self._cloud, self._pid = conn, conn.cloud, conn.current_project_id

    def _target(self, kind, ident, ignore_missing=False, *, write=False):
        """The stored resource (internal); None or NotFound when this project cannot see it."""
        obj = self._cloud.objs[kind].get(_id(ident))
        if obj is None or not self._cloud.visible(self._conn, kind, obj):
            if ignore_missing:
                return None
            raise NotFound(f"{kind[:-1]} {_id(ident)} could not be found")
        if write and self._cloud.owner[obj.id] != self._pid and not self._conn.admin:
            raise osx.ForbiddenException(f"{kind[:-1]} {obj.id} belongs to another project")
        return obj

    def _get(self, kind, ident):
        res = self._cloud.read(kind, self._target(kind, ident))
        if res is None:
            raise NotFound(f"{kind[:-1]} {_id(ident)} could not be found")
        return res

    def _find(self, kind, name_or_id, ignore_missing):
        objs = [o for o in self._cloud.objs[kind].values() if self._cloud.visible(self._conn, kind, o)]
        hits = [o for o in objs if o.id == name_or_id] or [o for o in objs if o.name == name_or_id]
        if len(hits) > 1:
            raise osx.DuplicateResource(f"More than one {kind[:-1]} exists with the name "
                                        f"'{name_or_id}'.")
        res = self._cloud.read(kind, hits[0]) if hits else None
        if res is None and not ignore_missing:
            raise osx.ResourceNotFound(f"No {kind[:-1]} found for {name_or_id}")
        return res

    def _list(self, kind, *, tags=None, match=None, **equal):
        want = set(tags.split(",") if isinstance(tags, str) else tags) if tags is not None else None
        out = []
        for o in list(self._cloud.objs[kind].values()):
            if (self._cloud.visible(self._conn, kind, o)
                    and all(v is None or getattr(o, k) == v for k, v in equal.items())
                    and (want is None or want <= set(o.tags)) and (match is None or match(o))):
                res = self._cloud.read(kind, o)
                if res is not None:
                    out.append(res)
        return iter(out)


class ImageProxy(_Proxy):
    _service = "image"

    @_read
    def find_image(self, name_or_id, ignore_missing=True):
        return self._find("images", name_or_id, ignore_missing)

    @_read
    def images(self, *, name=None, tag=None, owner=None, status=None, visibility=None):
        return self._list("images", tags=tag, name=name, owner=owner, status=status,
                          visibility=visibility)

    @_read
    def get_image(self, image):
        return self._get("images", image)

    @_write
    def delete_image(self, image, *, store=None, ignore_missing=True):
        obj = self._target("images", image, ignore_missing, write=True)
        if obj is not None:
            self._cloud.drop("images", obj)

    @_write
    def create_image(self, name, *, filename=None, data=None, md5=None, sha256=None,
                     disk_format=None, container_format=None, tags=None, allow_duplicates=False,
                     meta=None, wait=False, timeout=3600, validate_checksum=False):
        if not allow_duplicates:
            raise NotImplementedError("fake openstack: image.create_image(allow_duplicates=False)")
        if filename is not None:
            with open(filename, "rb") as f:
                data = f.read()
        data = data.encode() if isinstance(data, str) else data
        sha256 = sha256 or (hashlib.sha256(data).hexdigest() if data is not None else "")
        props = {"owner_specified.openstack.sha256": sha256,
                 "owner_specified.openstack.object": f"images/{name}"}
        known = {IMAGE_FIELDS[k]: v for k, v in (meta or {}).items() if k in IMAGE_FIELDS}
        img = self._cloud.new("images", self._pid, name=name, status="queued", owner=self._pid,
                              owner_id=self._pid, tags=list(tags or []), visibility="shared",
                              disk_format=disk_format or "qcow2",
                              container_format=container_format or "bare", size=None,
                              checksum=None, properties={**props, **{k: v for k, v in (
                                  meta or {}).items() if k not in IMAGE_FIELDS}}, **known)
        if data is not None:  # a PUT upload: active when the call returns
            img.status, img.size, img.checksum = "active", len(data), hashlib.md5(data).hexdigest()
        return self._cloud.view("images", img)


class ComputeProxy(_Proxy):
    _service = "compute"
    default_microversion = None  # None: the newest both sides speak

    def _mv(self):
        mv = self.default_microversion or "2.96"
        return (2, 100) if mv == "latest" else tuple(int(x) for x in mv.split("."))

    @_read
    def find_flavor(self, name_or_id, ignore_missing=True):
        return self._find("flavors", name_or_id, ignore_missing)

    @_read
    def servers(self, details=True, *, name=None, tags=None):
        if tags is not None and self._mv() < (2, 26):
            raise Bad("Invalid filter field: tags (microversion 2.26)")
        return self._list("servers", tags=tags,
                          match=None if name is None else lambda s: re.search(name, s.name))

    @_read
    def get_server(self, server):
        return self._get("servers", server)

    @_write
    def add_tag_to_server(self, server, tag):
        srv = self._target("servers", server, write=True)
        if not isinstance(tag, str) or not tag or len(tag) > 60 or "/" in tag or "," in tag:
            raise Bad(f"Invalid tag: {tag!r}")
        if tag not in srv.tags:
            srv.tags.append(tag)

    @_write
    def set_server_metadata(self, server, **metadata):
        srv = self._target("servers", server, write=True)
        srv.metadata = {**(srv.metadata or {}), **{k: str(v) for k, v in metadata.items()}}
        return self._cloud.view("servers", srv)

    @_read
    def find_server(self, name_or_id, ignore_missing=True, *, details=True):
        return self._find("servers", name_or_id, ignore_missing)

    @_write
    def create_server(self, *, name, image_id, flavor_id, networks, config_drive=False,
                      user_data=None, block_device_mapping_v2=None, scheduler_hints=None,
                      tags=None, metadata=None, availability_zone=None):
        c = self._cloud
        if tags and self._mv() < (2, 52):
            raise Bad("Invalid input for field/attribute server. Additional properties are not "
                      "allowed ('tags' was unexpected)")
        flavor = c.objs["flavors"].get(flavor_id)
        image = self._target("images", image_id, ignore_missing=True)
        if flavor is None or image is None or image.status != "active":
            raise Bad(f"Flavor {flavor_id} or image {image_id} could not be found, or is not active.")
        if user_data is not None:
            try:
                base64.b64decode(user_data, validate=True)
            except (binascii.Error, ValueError):
                raise Bad("User data needs to be valid base 64.") from None
            if len(user_data) > 65535:
                raise Bad(f"Invalid input for field/attribute user_data: {len(user_data)} "
                          "characters is longer than 65535")
        if any(not isinstance(v, str) for v in (metadata or {}).values()):
            raise Bad("Invalid input for field/attribute metadata: values must be strings")
        if any(not isinstance(n, dict) or set(n) != {"port"} for n in networks):
            raise NotImplementedError("fake openstack: compute.create_server: only networks "
                                      "[{'port': id}] are modelled")
        ports = [self._target("ports", n["port"], write=True) for n in networks]
        if any(p.device_id for p in ports):
            raise Conflict(f"Port {next(p.id for p in ports if p.device_id)} is still in use.")
        volumes = [self._target("volumes", b["uuid"]) for b in block_device_mapping_v2 or []
                   if b.get("source_type") == "volume"]
        if any(v.status != "available" for v in volumes):
            raise Bad("Invalid volume: volume status must be 'available'")
        group = (scheduler_hints or {}).get("group")
        group = group and self._target("server_groups", group)
        c.check_quota(self._pid, osx.ForbiddenException, instances=1, cores=flavor.vcpus,
                      ram=flavor.ram)
        s = c.new("servers", self._pid, name=name, status="BUILD", task_state="scheduling",
                  tags=list(tags or []),
                  metadata=dict(metadata or {}), user_id=self._conn.current_user_id,
                  flavor=NS(name=flavor.name, original_name=flavor.name, vcpus=flavor.vcpus,
                            ram=flavor.ram, disk=flavor.disk),
                  image=NS(id=image.id), addresses={}, fault=None,
                  availability_zone=availability_zone or "nova",
                  created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  config_drive="True" if config_drive else "",
                  attached_volumes=[{"id": v.id} for v in volumes])
        for p in ports:
            p.device_id, p.device_owner, p.status = s.id, f"compute:{s.availability_zone}", "ACTIVE"
        for v in volumes:
            v.status, v.attachments = "in-use", [{"server_id": s.id, "volume_id": v.id,
                                                  "attachment_id": str(uuid.uuid4())}]
        if group:
            group.member_ids.append(s.id)
        # As Nova: scheduled, then claimed by a compute host (the build under way), then built
        c.pending(s, functools.partial(setattr, s, "task_state", "spawning"),
                  functools.partial(c.server_built, s.id))
        return c.view("servers", s)

    @_write
    def delete_server(self, server, ignore_missing=True, force=False):
        s = self._target("servers", server, ignore_missing)
        if s is not None:
            # As Nova: the status stays what it was (ERROR included) while the delete is under
            # way, which task_state says; slow_deletes holds a server that long, in reads.
            s.task_state = "deleting"
            waits = [lambda: None] * self._cloud.slow_deletes.get(s.name, 0)
            self._cloud.pending(s, *waits, functools.partial(self._cloud.server_gone, s.id))

    @_read
    def get_server_console_output(self, server, length=None):
        srv = self._target("servers", server)
        if srv.status == "BUILD":
            raise Conflict(f"Instance {srv.id} is not ready yet.")  # Nova's 409
        text = self._cloud.console.get(srv.name, BOOTED_CONSOLE.format(hostname=srv.name))
        if text is None:  # a compute whose driver keeps no console log
            raise osx.HttpException("Not Implemented: console output", http_status=501)
        lines = text.splitlines(keepends=True)
        return {"output": "".join(lines[-length:] if length else lines)}

    @_read
    def server_groups(self):
        return self._list("server_groups")

    @_write
    def create_server_group(self, *, name, policy):
        if policy not in ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"):
            raise Bad(f"Invalid input for field/attribute policy: {policy!r}")
        if self._mv() < (2, 64):
            raise Bad("Additional properties are not allowed ('policy' was unexpected)")
        return self._cloud.view("server_groups", self._cloud.new(
            "server_groups", self._pid, name=name, policy=policy, policies=[policy],
            member_ids=[], rules={}, metadata={}, user_id=self._conn.current_user_id))

    @_write
    def delete_server_group(self, server_group, ignore_missing=True):
        g = self._target("server_groups", server_group, ignore_missing)
        if g is not None:
            self._cloud.drop("server_groups", g)

    @_read
    def availability_zones(self, details=False):
        return [NS(name=z, state={"available": True}) for z in sorted(self._cloud.zones["compute"])]

    @_read
    def get_quota_set(self, project, usage=False):
        return _quota_set(self, project, usage, ("instances", "cores", "ram"))


def _quota_set(proxy, project, usage, names):
    pid = _id(project)
    if pid != proxy._pid and not proxy._conn.admin:
        raise osx.ForbiddenException(f"Policy doesn't allow reading the quotas of {pid}")
    use = proxy._cloud.usage(pid)
    return NS(id=pid, project_id=pid, reservation={},
              usage={k: use[k] for k in names} if usage else {},
              **{k: proxy._cloud.quota[k] for k in names})


class BlockStorageProxy(_Proxy):
    _service = "block_storage"

    @_read
    def volumes(self, *, details=True, name=None, status=None):
        return self._list("volumes", name=name, status=status)

    @_read
    def get_volume(self, volume):
        return self._get("volumes", volume)


    @_write
    def set_volume_metadata(self, volume, **metadata):
        v = self._target("volumes", volume, write=True)
        v.metadata = {**(v.metadata or {}), **{k: str(x) for k, x in metadata.items()}}
        return self._cloud.view("volumes", v)

    @_write
    def create_volume(self, *, name, size, metadata=None, description=None,
                      availability_zone=None, volume_type=None):
        if not isinstance(size, int) or size < 1:
            raise Bad(f"Invalid input received: size {size!r} must be an integer >= 1")
        self._cloud.check_quota(self._pid, _over_limit, volumes=1, gigabytes=size)
        v = self._cloud.new("volumes", self._pid, name=name, size=size, status="creating",
                            metadata={k: str(x) for k, x in (metadata or {}).items()},
                            description=description, availability_zone=availability_zone or "nova",
                            volume_type=volume_type or "__DEFAULT__", attachments=[])
        self._cloud.pending(v, functools.partial(self._cloud.set, "volumes", v.id, status="available"))
        return self._cloud.view("volumes", v)

    @_write
    def delete_volume(self, volume, ignore_missing=True, *, force=False, cascade=False):
        v = self._target("volumes", volume, ignore_missing)
        if v is None:
            return
        if v.status not in ("available", "error") or v.attachments:
            raise Bad(f"Invalid volume: Volume status must be available or error, but current "
                      f"status is: {v.status}, and must not be attached.")
        if any(x.volume_id == v.id for x in self._cloud.objs["snapshots"].values()):
            raise Bad("Invalid volume: Volume cannot be deleted while it has snapshots.")
        self._cloud.drop("volumes", v)

    @_read
    def snapshots(self, *, details=True, name=None, status=None, volume_id=None):
        return self._list("snapshots", name=name, status=status, volume_id=volume_id)

    @_read
    def get_snapshot(self, snapshot):
        return self._get("snapshots", snapshot)

    @_write
    def create_snapshot(self, *, volume_id, name=None, metadata=None, description=None,
                        force=False):
        self._target("volumes", volume_id)
        x = self._cloud.new("snapshots", self._pid, name=name, volume_id=volume_id,
                            status="creating", description=description,
                            metadata={k: str(v) for k, v in (metadata or {}).items()})
        self._cloud.pending(x, functools.partial(self._cloud.set, "snapshots", x.id,
                                                 status="available"))
        return self._cloud.view("snapshots", x)

    @_write
    def delete_snapshot(self, snapshot, ignore_missing=True, *, force=False):
        x = self._target("snapshots", snapshot, ignore_missing)
        if x is not None:
            self._cloud.drop("snapshots", x)

    @_read
    def availability_zones(self):
        return [NS(name=z, state={"available": True}) for z in sorted(self._cloud.zones["volume"])]

    @_read
    def get_quota_set(self, project, usage=False):
        return _quota_set(self, project, usage, ("volumes", "gigabytes"))


class NetworkProxy(_Proxy):
    _service = "network"

    def get_project_id(self):
        return self._pid

    def _new(self, kind, **attrs):  # created untagged: Neutron takes no tags in a POST
        self._cloud.check_quota(self._pid, Conflict, **{kind: 1})
        return self._cloud.new(kind, self._pid, tags=[], **attrs)

    def _delete(self, kind, ident, ignore_missing):
        return self._target(kind, ident, ignore_missing, write=True)

    @_read
    def find_network(self, name_or_id, ignore_missing=True):
        return self._find("networks", name_or_id, ignore_missing)

    @_read
    def networks(self, *, name=None, project_id=None, tags=None):
        return self._list("networks", tags=tags, name=name, project_id=project_id)

    @_write
    def create_network(self, *, name, description=""):
        return self._cloud.view("networks", self._new(
            "networks", name=name, description=description, status="ACTIVE", subnet_ids=[],
            is_router_external=False, is_shared=False, mtu=1450, is_admin_state_up=True))

    @_write
    def delete_network(self, network, ignore_missing=True, if_revision=None):
        net = self._delete("networks", network, ignore_missing)
        if net is None:
            return
        if any(p.network_id == net.id for p in self._cloud.objs["ports"].values()):
            raise Conflict(f"Unable to complete operation on network {net.id}. There are one or "
                           "more ports still in use on the network.")
        for sid in net.subnet_ids:  # Neutron deletes a network's unused subnets with it
            self._cloud.drop("subnets", self._cloud.objs["subnets"][sid])
        self._cloud.drop("networks", net)

    @_read
    def subnets(self, *, name=None, network_id=None, project_id=None, tags=None):
        return self._list("subnets", tags=tags, name=name, network_id=network_id,
                          project_id=project_id)

    @_write
    def create_subnet(self, *, name, network_id, ip_version, cidr, gateway_ip=None,
                      dns_nameservers=None, allocation_pools=None, description=""):
        net = self._target("networks", network_id, write=True)
        self._cloud.check_quota(self._pid, Conflict, subnets=1)
        return self._cloud.view("subnets", self._cloud.new_subnet(
            net, self._pid, name=name, cidr=cidr, ip_version=ip_version, gateway_ip=gateway_ip,
            dns_nameservers=dns_nameservers, allocation_pools=allocation_pools,
            description=description))

    @_write
    def delete_subnet(self, subnet, ignore_missing=True, if_revision=None):
        sub = self._delete("subnets", subnet, ignore_missing)
        if sub is None:
            return
        if any(ip["subnet_id"] == sub.id for p in self._cloud.objs["ports"].values()
               for ip in p.fixed_ips):
            raise Conflict(f"Unable to complete operation on subnet {sub.id}: One or more ports "
                           "have an IP allocation from this subnet.")
        self._cloud.objs["networks"][sub.network_id].subnet_ids.remove(sub.id)
        self._cloud.drop("subnets", sub)

    @_read
    def ports(self, *, name=None, network_id=None, device_id=None, device_owner=None,
              project_id=None, tags=None):
        return self._list("ports", tags=tags, name=name, network_id=network_id,
                          device_id=device_id, device_owner=device_owner, project_id=project_id)

    def _port(self, net, fixed_ips, **attrs):
        c = self._cloud
        if fixed_ips is None:  # one address from the network's first subnet, as Neutron picks
            subs = [c.objs["subnets"][s] for s in net.subnet_ids[:1]]
            fixed_ips = [{"subnet_id": s.id} for s in subs]
        ips = []
        for want in fixed_ips:
            sub = c.objs["subnets"].get(want.get("subnet_id", ""))
            if sub is None or sub.network_id != net.id:
                raise Bad(f"Invalid input for operation: Failed to create port on network {net.id}"
                          f", because fixed_ips included invalid subnet {want.get('subnet_id')}.")
            ips.append({"subnet_id": sub.id, "ip_address": c.allocate(sub, want.get("ip_address"))})
        mac = "fa:16:3e:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        defaults = dict(name="", description="", device_id="", device_owner="", status="DOWN",
                        security_group_ids=[], allowed_address_pairs=[],
                        is_port_security_enabled=True)
        return self._new("ports", **{**defaults, **attrs, "network_id": net.id, "fixed_ips": ips,
                                     "mac_address": mac})

    @_write
    def create_port(self, *, name, network_id, fixed_ips=None, security_group_ids=None,
                    allowed_address_pairs=None, description=""):
        net = self._target("networks", network_id, write=True)
        groups = [self._target("security_groups", g).id for g in security_group_ids or []]
        for pair in allowed_address_pairs or []:
            try:
                ipaddress.ip_network(pair["ip_address"], strict=False)
            except (KeyError, ValueError):
                raise Bad(f"Invalid input for allowed_address_pairs: {pair}") from None
        port = self._port(net, fixed_ips, name=name, description=description,
                          security_group_ids=groups)
        port.allowed_address_pairs = [{"ip_address": p["ip_address"],
                                       "mac_address": p.get("mac_address", port.mac_address)}
                                      for p in allowed_address_pairs or []]
        return self._cloud.view("ports", port)

    @_write
    def delete_port(self, port, ignore_missing=True, if_revision=None):
        p = self._delete("ports", port, ignore_missing)
        if p is None:
            return
        if p.device_owner == ROUTER_IF:
            raise Conflict(f"Port {p.id} cannot be deleted directly via the port API: has device "
                           f"owner {ROUTER_IF}.")
        for f in self._cloud.objs["floating_ips"].values():
            if f.port_id == p.id:
                f.port_id = f.fixed_ip_address = f.router_id = None
                f.status = "DOWN"
        self._cloud.drop("ports", p)

    @_read
    def routers(self, *, name=None, project_id=None, tags=None):
        return self._list("routers", tags=tags, name=name, project_id=project_id)

    @_write
    def create_router(self, *, name, external_gateway_info=None, description=""):
        gw = None
        if external_gateway_info:
            ext = self._target("networks", external_gateway_info["network_id"])
            if not ext.is_router_external:
                raise Bad(f"Bad router request: Network {ext.id} is not an external network.")
            sub = self._cloud.objs["subnets"][ext.subnet_ids[0]]
            gw = {"network_id": ext.id, "enable_snat": True, "external_fixed_ips": [
                {"subnet_id": sub.id, "ip_address": self._cloud.allocate(sub)}]}
        return self._cloud.view("routers", self._new(
            "routers", name=name, description=description, external_gateway_info=gw,
            status="ACTIVE", routes=[], is_admin_state_up=True))

    def _interfaces(self, router):
        return [p for p in self._cloud.objs["ports"].values()
                if p.device_id == router.id and p.device_owner == ROUTER_IF]

    @_write
    def add_interface_to_router(self, router, subnet=None, port=None):
        r = self._target("routers", router, write=True)
        if port is not None or subnet is None:
            raise NotImplementedError("fake openstack: network.add_interface_to_router by port")
        sub = self._target("subnets", subnet, write=True)
        if any(ip["subnet_id"] == sub.id for p in self._interfaces(r) for ip in p.fixed_ips):
            raise Bad(f"Bad router request: Router already has a port on subnet {sub.id}.")
        p = self._port(self._cloud.objs["networks"][sub.network_id],
                       [{"subnet_id": sub.id, "ip_address": sub.gateway_ip}], device_id=r.id,
                       device_owner=ROUTER_IF, status="ACTIVE", is_port_security_enabled=False)
        return {"id": r.id, "subnet_id": sub.id, "subnet_ids": [sub.id], "port_id": p.id,
                "network_id": sub.network_id, "project_id": self._pid}

    @_write
    def remove_interface_from_router(self, router, subnet=None, port=None):
        r = self._target("routers", router, write=True)
        hits = [p for p in self._interfaces(r) if (port is None or p.id == _id(port)) and (
            subnet is None or any(ip["subnet_id"] == _id(subnet) for ip in p.fixed_ips))]
        if not hits or (port is None and subnet is None):
            raise NotFound(f"Router {r.id} does not have an interface {port or subnet}")
        subs = {ip["subnet_id"] for ip in hits[0].fixed_ips}
        for f in self._cloud.objs["floating_ips"].values():
            p = self._cloud.objs["ports"].get(f.port_id or "")
            if f.router_id == r.id and p and subs & {ip["subnet_id"] for ip in p.fixed_ips}:
                raise Conflict(f"Router interface for subnet {sorted(subs)[0]} on router {r.id} "
                               "cannot be deleted, as it is required by one or more floating IPs.")
        self._cloud.drop("ports", hits[0])
        return {"id": r.id, "subnet_id": sorted(subs)[0], "port_id": hits[0].id}

    @_write
    def delete_router(self, router, ignore_missing=True, if_revision=None):
        r = self._delete("routers", router, ignore_missing)
        if r is None:
            return
        if self._interfaces(r):
            raise Conflict(f"Router {r.id} still has ports")
        self._cloud.drop("routers", r)

    @_read
    def security_groups(self, *, name=None, project_id=None, tags=None):
        return self._list("security_groups", tags=tags, name=name, project_id=project_id)

    @_write
    def create_security_group(self, *, name, description=""):
        sg = self._new("security_groups", name=name, description=description, stateful=True,
                       is_shared=False)
        for ethertype in ("IPv4", "IPv6"):  # Neutron's defaults: all egress allowed
            self._rule(sg, "egress", ethertype, None, None, None, None, None, "")
        return self._cloud.view("security_groups", sg)

    @_write
    def delete_security_group(self, security_group, ignore_missing=True, if_revision=None):
        sg = self._delete("security_groups", security_group, ignore_missing)
        if sg is None:
            return
        if any(sg.id in p.security_group_ids for p in self._cloud.objs["ports"].values()):
            raise Conflict(f"Security Group {sg.id} in use.")
        for r in list(self._cloud.objs["security_group_rules"].values()):
            if sg.id in (r.security_group_id, r.remote_group_id):
                self._cloud.drop("security_group_rules", r)
        self._cloud.drop("security_groups", sg)

    @_read
    def security_group_rules(self, *, security_group_id=None, direction=None, project_id=None):
        return self._list("security_group_rules", security_group_id=security_group_id,
                          direction=direction, project_id=project_id)

    def _rule(self, sg, direction, ethertype, protocol, lo, hi, prefix, remote, description):
        if direction not in ("ingress", "egress") or ethertype not in ("IPv4", "IPv6"):
            raise Bad(f"Invalid input: direction {direction!r}, ethertype {ethertype!r}")
        if prefix and remote:
            raise Bad("Only remote_ip_prefix or remote_group_id may be provided.")
        if remote:
            self._target("security_groups", remote)
        try:
            if prefix and ipaddress.ip_network(prefix, strict=False).version != int(ethertype[-1]):
                raise Bad(f"Conflicting value ethertype {ethertype} for CIDR {prefix}")
        except ValueError:
            raise Bad(f"Invalid input for remote_ip_prefix: {prefix!r}") from None
        if (lo is not None or hi is not None) and protocol is None:
            raise Bad("Must also specify protocol if port range is given.")
        if protocol in ("tcp", "udp") and lo is not None and hi is not None and lo > hi:
            raise Bad("For TCP/UDP protocols, port_range_min must be <= port_range_max")
        key = (sg.id, direction, ethertype, protocol, lo, hi, prefix, remote)
        for r in self._cloud.objs["security_group_rules"].values():
            if key == (r.security_group_id, r.direction, r.ether_type, r.protocol,
                       r.port_range_min, r.port_range_max, r.remote_ip_prefix, r.remote_group_id):
                raise Conflict(f"Security group rule already exists. Rule id is {r.id}.")
        return self._new("security_group_rules", security_group_id=sg.id, direction=direction,
                         ether_type=ethertype, protocol=protocol, port_range_min=lo,
                         port_range_max=hi, remote_ip_prefix=prefix, remote_group_id=remote,
                         description=description)

    @_write
    def create_security_group_rule(self, *, security_group_id, direction, ethertype="IPv4",
                                   protocol=None, port_range_min=None, port_range_max=None,
                                   remote_ip_prefix=None, remote_group_id=None, description=""):
        sg = self._target("security_groups", security_group_id, write=True)
        return self._cloud.view("security_group_rules", self._rule(
            sg, direction, ethertype, protocol, port_range_min, port_range_max, remote_ip_prefix,
            remote_group_id, description))

    @_write
    def delete_security_group_rule(self, security_group_rule, ignore_missing=True,
                                   if_revision=None):
        r = self._delete("security_group_rules", security_group_rule, ignore_missing)
        if r is not None:
            self._cloud.drop("security_group_rules", r)

    @_write
    def set_tags(self, resource, tags):
        kind = next((k for k in NEUTRON if resource.id in self._cloud.objs[k]), "networks")
        obj = self._target(kind, resource, write=True)
        if any(not isinstance(t, str) or not t or len(t) > 255 for t in tags):
            raise Bad(f"Invalid tags: {tags!r}")
        obj.tags = list(dict.fromkeys(tags))
        resource.tags = list(obj.tags)
        return resource

    @_read
    def ips(self, *, project_id=None, description=None, floating_ip_address=None, port_id=None,
            tags=None):
        return self._list("floating_ips", tags=tags, project_id=project_id,
                          description=description, floating_ip_address=floating_ip_address,
                          port_id=port_id)

    def _attach(self, fip, port_id):
        if port_id is None:
            fip.port_id = fip.fixed_ip_address = fip.router_id = None
            fip.status = "DOWN"
            return
        port = self._target("ports", port_id, write=True)
        router = self._cloud.route_for(fip.floating_network_id, port)
        if any(f.port_id == port.id and f.id != fip.id
               for f in self._cloud.objs["floating_ips"].values()):
            raise Conflict(f"Cannot associate floating IP {fip.floating_ip_address} with port "
                           f"{port.id}: it already has a floating IP.")
        fip.port_id, fip.fixed_ip_address = port.id, port.fixed_ips[0]["ip_address"]
        fip.router_id, fip.status = router.id, "ACTIVE"

    @_write
    def create_ip(self, *, floating_network_id, port_id=None, description=""):
        ext = self._target("networks", floating_network_id)
        if not ext.is_router_external:
            raise Bad(f"Bad floatingip request: Network {ext.id} is not a valid external network.")
        if port_id is not None:  # refused before anything is allocated
            self._cloud.route_for(ext.id, self._target("ports", port_id, write=True))
        address = self._cloud.allocate(self._cloud.objs["subnets"][ext.subnet_ids[0]])
        fip = self._new("floating_ips", floating_ip_address=address, floating_network_id=ext.id,
                        port_id=None, fixed_ip_address=None, router_id=None, status="DOWN",
                        description=description)
        try:
            self._attach(fip, port_id)
        except osx.HttpException:
            self._cloud.drop("floating_ips", fip)
            raise
        return self._cloud.view("floating_ips", fip)

    @_write
    def update_ip(self, floating_ip, if_revision=None, *, port_id=_UNSET, description=None):
        fip = self._target("floating_ips", floating_ip, write=True)
        if port_id is not _UNSET:
            self._attach(fip, port_id)
        if description is not None:
            fip.description = description
        return self._cloud.view("floating_ips", fip)

    @_write
    def delete_ip(self, floating_ip, ignore_missing=True, if_revision=None):
        fip = self._delete("floating_ips", floating_ip, ignore_missing)
        if fip is not None:
            self._cloud.drop("floating_ips", fip)

    @_read
    def get_quota(self, quota, details=False):
        q = _quota_set(self, quota, True, NEUTRON)
        return NS(id=q.id, project_id=q.project_id, **{
            k: {"limit": getattr(q, k), "used": q.usage[k], "reserved": 0} if details
            else getattr(q, k) for k in NEUTRON})


class LoadBalancerProxy(_Proxy):
    _service = "load_balancer"

    def _child(self, kind, lb, **attrs):
        obj = self._cloud.new(kind, self._pid, provisioning_status="PENDING_CREATE",
                              operating_status="OFFLINE", is_admin_state_up=True, **attrs)
        self._cloud.parent[obj.id] = lb.id
        return self._cloud.view(kind, obj)

    def _lb_of(self, kind, ident):
        obj = self._target(kind, ident, write=True)
        return obj, self._cloud.objs["load_balancers"][self._cloud.parent[obj.id]]

    @_read
    def providers(self):
        if self._cloud.lb_providers is None:  # a cloud without Octavia
            raise osx.EndpointNotFound("public endpoint for load-balancer service not found")
        return [NS(name=n, description=d) for n, d in self._cloud.lb_providers.items()]

    @_read
    def get_quota(self, quota):
        """Octavia's: limits only, None where the project has none of its own."""
        pid = _id(quota)
        if pid != self._pid and not self._conn.admin:
            raise osx.ForbiddenException("Policy does not allow this request to be performed.")
        return NS(id=pid, project_id=pid, load_balancers=self._cloud.quota["load_balancers"])

    @_read
    def get_quota_default(self):
        return NS(load_balancers=LB_QUOTA_DEFAULT)

    @_read
    def load_balancers(self, *, name=None, project_id=None, tags=None):
        return self._list("load_balancers", tags=tags, name=name, project_id=project_id)

    @_read
    def get_load_balancer(self, load_balancer):
        return self._get("load_balancers", load_balancer)

    @_write
    def update_load_balancer(self, load_balancer, **attrs):
        lb = self._target("load_balancers", load_balancer, write=True)
        if set(attrs) - {"tags", "name", "description"}:
            raise Bad(f"Invalid input for update: {sorted(attrs)}")
        for k, v in attrs.items():
            setattr(lb, k, list(v) if k == "tags" else v)
        return self._cloud.view("load_balancers", lb)

    @_read
    def find_load_balancer(self, name_or_id, ignore_missing=True):
        return self._find("load_balancers", name_or_id, ignore_missing)

    @_write
    def create_load_balancer(self, *, name, vip_port_id=None, vip_subnet_id=None,
                             vip_address=None, tags=None, description=""):
        if vip_port_id is None:
            raise NotImplementedError("fake openstack: load_balancer.create_load_balancer "
                                      "without vip_port_id")
        port = self._target("ports", vip_port_id, write=True)
        sub = self._target("subnets", vip_subnet_id or port.fixed_ips[0]["subnet_id"])
        address = port.fixed_ips[0]["ip_address"]
        if vip_address not in (None, address) or sub.network_id != port.network_id:
            raise Bad(f"Validation failure: VIP {vip_address} / subnet {sub.id} do not match "
                      f"port {port.id} ({address})")
        c = self._cloud
        c.check_quota(self._pid, lambda m: osx.HttpException(m, http_status=403),
                      load_balancers=1)
        lb = c.new("load_balancers", self._pid, name=name, description=description,
                   vip_port_id=port.id, vip_subnet_id=sub.id, vip_network_id=port.network_id,
                   vip_address=address, provisioning_status="PENDING_CREATE",
                   operating_status="OFFLINE", tags=list(tags or []), provider="amphora",
                   flavor_id=None, availability_zone=None, is_admin_state_up=True)
        c.pending(lb, functools.partial(c.lb_active, lb.id))
        return c.view("load_balancers", lb)

    @_write
    def delete_load_balancer(self, load_balancer, ignore_missing=True, cascade=False):
        lb = self._target("load_balancers", load_balancer, ignore_missing, write=True)
        if lb is None:
            return
        if self._cloud.lb_children(lb.id) and not cascade:
            raise Bad(f"Validation failure: Cannot delete Load Balancer {lb.id} - it has children")
        if lb.provisioning_status not in ("ACTIVE", "ERROR"):
            raise Conflict(f"Load Balancer {lb.id} is immutable and cannot be updated.")
        lb.provisioning_status = "PENDING_DELETE"
        self._cloud.pending(lb, functools.partial(self._cloud.lb_gone, lb.id))

    @_read
    def listeners(self, *, name=None, load_balancer_id=None, project_id=None, tags=None):
        return self._list("listeners", tags=tags, name=name, load_balancer_id=load_balancer_id,
                          project_id=project_id)

    @_write
    def create_listener(self, *, name, load_balancer_id, protocol, protocol_port, tags=None,
                        description=""):
        lb = self._target("load_balancers", load_balancer_id, write=True)
        if protocol not in ("TCP", "UDP", "HTTP", "HTTPS", "TERMINATED_HTTPS", "SCTP"):
            raise Bad(f"Invalid input for field/attribute protocol. Value: '{protocol}'")
        if any(o.protocol_port == protocol_port for k, o in self._cloud.lb_children(lb.id)
               if k == "listeners"):
            raise Conflict(f"Another Listener on this Load Balancer is already using "
                           f"protocol_port {protocol_port}")
        self._cloud.lb_change(lb)
        return self._child("listeners", lb, name=name, protocol=protocol,
                           protocol_port=protocol_port, load_balancer_id=lb.id,
                           load_balancers=[{"id": lb.id}], default_pool_id=None,
                           tags=list(tags or []), description=description)

    @_read
    def pools(self, *, name=None, loadbalancer_id=None, listener_id=None, project_id=None,
              tags=None):
        return self._list("pools", tags=tags, name=name, loadbalancer_id=loadbalancer_id,
                          listener_id=listener_id, project_id=project_id)

    @_write
    def create_pool(self, *, name, listener_id, protocol, lb_algorithm, tags=None,
                    description=""):
        listener, lb = self._lb_of("listeners", listener_id)
        if lb_algorithm not in ("ROUND_ROBIN", "LEAST_CONNECTIONS", "SOURCE_IP", "SOURCE_IP_PORT"):
            raise Bad(f"Invalid input for field/attribute lb_algorithm. Value: '{lb_algorithm}'")
        if listener.default_pool_id:
            raise Conflict(f"Listener {listener.id} already has a default pool")
        self._cloud.lb_change(lb)
        pool = self._child("pools", lb, name=name, listener_id=listener.id,
                           listeners=[{"id": listener.id}], loadbalancer_id=lb.id,
                           loadbalancers=[{"id": lb.id}], protocol=protocol,
                           lb_algorithm=lb_algorithm, health_monitor_id=None,
                           session_persistence=None, tags=list(tags or []),
                           description=description)
        listener.default_pool_id = pool.id
        return pool

    @_read
    def members(self, pool, *, name=None):
        return self._list("members", pool_id=self._target("pools", pool).id, name=name)

    @_write
    def create_member(self, pool, *, name, address, protocol_port, subnet_id=None, tags=None):
        pool, lb = self._lb_of("pools", pool)
        if subnet_id is not None:
            self._target("subnets", subnet_id)
        if any(m.pool_id == pool.id and (m.address, m.protocol_port) == (address, protocol_port)
               for m in self._cloud.objs["members"].values()):
            raise Conflict(f"Another member on this pool is already using ip {address} on "
                           f"protocol_port {protocol_port}")
        self._cloud.lb_change(lb)
        return self._child("members", lb, name=name, address=address,
                           protocol_port=protocol_port, subnet_id=subnet_id, pool_id=pool.id,
                           weight=1, backup=False, tags=list(tags or []))

    @_write
    def delete_member(self, member, pool, ignore_missing=True):
        pool = self._target("pools", pool, write=True)
        m = self._target("members", member, ignore_missing, write=True)
        if m is None or m.pool_id != pool.id:
            if ignore_missing:
                return
            raise NotFound(f"Member {_id(member)} not found in pool {pool.id}")
        self._cloud.lb_change(self._cloud.objs["load_balancers"][self._cloud.parent[m.id]])
        m.provisioning_status = "PENDING_DELETE"  # gone when the load balancer is ACTIVE again

    @_write
    def create_health_monitor(self, *, pool_id, name, type, delay, timeout, max_retries,
                              tags=None):
        pool, lb = self._lb_of("pools", pool_id)
        if type not in ("TCP", "HTTP", "HTTPS", "PING", "UDP-CONNECT", "TLS-HELLO", "SCTP"):
            raise Bad(f"Invalid input for field/attribute type. Value: '{type}'")
        if delay < timeout or not 1 <= max_retries <= 10:
            raise Bad(f"Validation failure: delay {delay} must be >= timeout {timeout}, "
                      f"max_retries {max_retries} within 1..10")
        if pool.health_monitor_id:
            raise Conflict(f"Pool {pool.id} already has a health monitor")
        self._cloud.lb_change(lb)
        hm = self._child("health_monitors", lb, name=name, type=type, delay=delay,
                         timeout=timeout, max_retries=max_retries, max_retries_down=3,
                         pool_id=pool.id, pools=[{"id": pool.id}], tags=list(tags or []))
        pool.health_monitor_id = hm.id
        return hm


class IdentityProxy(_Proxy):
    _service = "identity"

    def _user(self, user):
        if _id(user) != self._conn.current_user_id:
            raise osx.ForbiddenException("You are not authorized to perform the requested "
                                         "action: another user's application credentials.")
        return _id(user)

    @_read
    def application_credentials(self, user, *, name=None):
        return self._list("application_credentials", user_id=self._user(user), name=name)

    @_write
    def create_application_credential(self, user, name, *, unrestricted=False, description=None,
                                      secret=None, expires_at=None, roles=None):
        uid = self._user(user)
        for role in roles or []:
            if role.get("name") not in self._cloud.token_roles:
                raise osx.NotFoundException(
                    "Could not find role assignment with role: "
                    f"{role.get('name')}, user or group: {uid}, project, domain, or system: "
                    f"{self._pid}.")
        if any(a.user_id == uid and a.name == name
               for a in self._cloud.objs["application_credentials"].values()):
            raise Conflict("Conflict occurred attempting to store application_credential - "
                           f"Duplicate entry found with name {name}.")
        cred = self._cloud.new("application_credentials", self._pid, id=uuid.uuid4().hex,
                               name=name, user_id=uid, unrestricted=bool(unrestricted),
                               description=description, expires_at=expires_at,
                               roles=roles or [{"name": "member"}], secret=None,
                               access_rules=None)
        out = self._cloud.view("application_credentials", cred)
        out.secret = secret or secrets.token_urlsafe(64)  # shown once, never stored
        return out

    @_write
    def delete_application_credential(self, user, application_credential, ignore_missing=True):
        self._user(user)
        cred = self._target("application_credentials", application_credential, ignore_missing)
        if cred is not None:
            self._cloud.drop("application_credentials", cred)


class ObjectStoreProxy(_Proxy):
    """Swift, as much of it as destroy reads: a project's containers and their objects (what
    a restore staged). Containers are made by :meth:`FakeCloud` tests' ``containers``."""

    _service = "object_store"

    def _container(self, name):
        got = self._cloud.containers.get((self._pid, name))
        if got is None:
            raise NotFound(f"container {name} could not be found")
        return got

    def objects(self, container):
        return [NS(name=n) for n in sorted(self._container(container))]

    @_write
    def delete_object(self, obj, container=None, ignore_missing=True):
        objs = self._cloud.containers.get((self._pid, container), {})
        if obj not in objs and not ignore_missing:
            raise NotFound(f"object {obj} could not be found")
        objs.pop(obj, None)

    @_write
    def delete_container(self, container, ignore_missing=True):
        if (self._pid, container) not in self._cloud.containers and not ignore_missing:
            raise NotFound(f"container {container} could not be found")
        self._cloud.containers.pop((self._pid, container), None)


class _Config(_Strict):
    _service = "config"

    def __init__(self, auth_url, region, project_id):
        self._auth = {"auth_url": auth_url, "project_id": project_id}
        self._region = region

    def get_auth_args(self):
        return dict(self._auth)

    def get_region_name(self, service_type=None):
        return self._region


def _shared(name):
    return property(lambda self: getattr(self.cloud, name),
                    lambda self, value: setattr(self.cloud, name, value))


class FakeConnection(_Strict):
    """One project's connection; without ``cloud``, a fresh :class:`FakeCloud` of its own."""

    calls, fail_servers, fault_message, stuck_on_delete, slow_deletes, console, quota, \
        token_roles = map(_shared, ("calls", "fail_servers", "fault_message", "stuck_on_delete",
                                    "slow_deletes", "console", "quota", "token_roles"))

    def __init__(self, project_id="p1", user_id="u1", auth_url="http://keystone.example/v3",
                 region="RegionOne", *, admin=False, cloud=None):
        self.cloud = cloud if cloud is not None else FakeCloud()
        self.current_project_id, self.current_user_id, self.admin = project_id, user_id, admin
        self.config = _Config(auth_url, region, project_id)
        self.image, self.compute = ImageProxy(self), ComputeProxy(self)
        self.block_storage, self.network = BlockStorageProxy(self), NetworkProxy(self)
        self.load_balancer, self.identity = LoadBalancerProxy(self), IdentityProxy(self)
        self.object_store = ObjectStoreProxy(self)
        # keystoneauth's view of the token: session.auth.get_access(session).role_names
        self.session = NS(auth=NS(get_access=lambda _session: NS(
            role_names=sorted(self.cloud.token_roles))))

    def authorize(self):
        return "fake-token"

    def close(self):
        pass

    def add_flavor(self, name, vcpus=2, ram=4096, disk=20):
        return self.cloud.add_flavor(name, vcpus, ram, disk)

    def add_external_network(self, name="public", cidr="203.0.113.0/24"):
        return self.cloud.add_external_network(name, cidr)

    def add_image(self, name, status="active", properties=None, **kw):
        return self.cloud.add_image(name, status, properties,
                                    **{"owner": self.current_project_id, **kw})

    def inventory(self, project_id=None):
        return self.cloud.inventory(project_id)
