"""Nova and Cinder for the nodes: server groups, each node's storage volume and server
(config drive, its Ignition config as user_data), the nodes as the cloud has them, and deleting
a node with what is its alone."""

import time
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace

from keystoneauth1.exceptions import ClientException
from openstack.exceptions import SDKException

from k8simg.clouds.base import config_of
from k8simg.clouds.console import clean, verdict
from k8simg.clouds.openstack.connect import UID_KEY, Scope, b64, server_fault
from k8simg.model.plan import Node

# A server that goes to ERROR while being deleted will not go; nor a volume in these.
SERVER_DELETE_FAILURES = {"ERROR"}
DELETE_GRACE_S = 30  # for Nova to mark an ERROR server's delete as under way
VOLUME_FAILURES = {"error_deleting", "error_detaching", "error_restoring", "error_extending"}
# A server's first boot as its console showed it (``ready`` or ``failed``), kept in its
# metadata by the deploy that watched it: the console's tail moves on, the verdict stays.
BOOT_KEY = "k8simg-boot"
VERDICTS = ("ready", "failed")  # "booting" from the create on: no verdict yet
CONSOLE_LINES = 400  # of Nova's console log, from its end: enough for Ignition's report
# A server this old with no verdict recorded and none in its console's tail booted before
# k8simg recorded verdicts: its boot's lines have scrolled out of the tail.
VERDICT_LOST_AFTER_S = 3600


@dataclass(frozen=True)
class Flavor:
    """A Nova flavor, as :meth:`~k8simg.clouds.openstack.driver.OpenStackCloud.prepare` found it.

    :param ram: memory in MiB.
    """

    id: str
    name: str
    vcpus: int
    ram: int  # MiB


def zone_problems(s: Scope) -> list[tuple[str, str]]:
    """``openstack.availability_zone`` is a zone of Nova's (the servers) and of Cinder's (the
    nodes' volumes, the pods' StorageClass); a listing this user may not read is not
    guessed at."""
    zone = s.cfg.openstack.availability_zone
    if not zone:
        return []
    problems = []
    for service, listing in (("Nova", s.conn.compute.availability_zones),
                             ("Cinder", s.conn.block_storage.availability_zones)):
        try:
            have = sorted({z.name for z in listing()
                           if (getattr(z, "state", None) or {}).get("available", True)})
        except (SDKException, ClientException):
            continue
        if zone not in have:
            problems.append(("openstack.availability_zone",
                             f"{service} in {s.where} has no available zone {zone!r} (it has: "
                             f"{', '.join(have) or 'none'})"))
    return problems


def wanted_server_groups(s: Scope) -> dict[str, str]:
    """``{group: policy}``: masters and etcd members strictly apart, workers where possible."""
    groups = {"masters": "anti-affinity"}
    if s.cfg.workers.count:
        groups["workers"] = "soft-anti-affinity"
    if s.cfg.dedicated_etcd:
        groups["etcds"] = "anti-affinity"
    return groups


def server_group_name(s: Scope, group: str) -> str:
    """The name of the cluster's server group ``group``: Nova's server groups have neither
    tags nor metadata, so the UID is in the name."""
    return f"{s.name}-{group}-{s.uid}"


def server_groups_of(s: Scope, servers: list) -> list:
    """The cluster's server groups: named with its UID, or (made before UIDs) named as it
    named them then and holding only servers of ``servers`` (the cluster's), at least one.
    An empty group of the old name proves nothing and is left alone."""
    ours = {srv.id for srv in servers}
    legacy = {f"{s.name}-{g}" for g in ("masters", "workers", "etcds")}
    current = {server_group_name(s, g) for g in ("masters", "workers", "etcds")}
    return [g for g in s.conn.compute.server_groups()
            if g.name in current
            or (g.name in legacy and g.member_ids and set(g.member_ids) <= ours)]


def ensure_server_groups(s: Scope) -> dict[str, str | None]:
    """:returns: each server group's ID by group (None for one a dry run would create)."""
    c = s.conn.compute
    existing = {g.name: g for g in c.server_groups()}
    # An adopted cluster keeps its old group while it holds only its servers: new members go
    # in with the old ones, so anti-affinity spans them all (destroy knows it by its members).
    adopted = {g.name: g for g in server_groups_of(s, list(c.servers(tags=s.tag)))}
    out = {}
    for group, policy in wanted_server_groups(s).items():
        name = server_group_name(s, group)
        sg = existing.get(name) or adopted.get(f"{s.name}-{group}")
        if sg is None:
            s.record("create", "server group", name, policy)
            if not s.dry:
                sg = c.create_server_group(name=name, policy=policy)
        out[group] = sg.id if sg is not None else None
    return out


def find_server(s: Scope, name: str):
    """The cluster's server named ``name`` (tagged as the cluster's), or None.

    :raises CloudError: when there are several.
    """
    return s.one(s.conn.compute.servers(name=f"^{name}$", tags=s.tag), "server", name)


# Nova's answers when it can give no console log for a server (the compute's driver keeps
# none: ConsoleNotAvailable, NotImplementedError); a 409 means the server is still building.
NO_CONSOLE = {400, 404, 501}


def console_tail(s: Scope, server, lines: int = CONSOLE_LINES) -> str | None:
    """The last ``lines`` lines of ``server``'s console log as Nova keeps it (all of it for
    0), cleaned; empty while Nova has none to give yet (a server still building, or an
    answer that failed: asked again); None when Nova keeps no console log for it."""
    try:
        out = s.conn.compute.get_server_console_output(server, length=lines or None)
    except (SDKException, ClientException) as e:
        status = getattr(e, "status_code", None) or getattr(e, "http_status", None)
        return None if status in NO_CONSOLE else ""
    return clean((out or {}).get("output") or "")


def verdict_unknowable(server, recorded: str | None, text: str | None) -> bool:
    """Whether ``server``'s first boot can show no verdict here: Nova keeps no console log for
    it (``text`` None), or it booted before k8simg recorded verdicts (no ``recorded`` key),
    more than :data:`VERDICT_LOST_AFTER_S` ago, and its console's tail shows none."""
    return text is None or (recorded is None and verdict(text, server.name) is None
                            and age(server) > VERDICT_LOST_AFTER_S)


def boot_state(s: Scope, server) -> str:
    """A server's state for the operator: Nova's status, except for an ACTIVE one, whose first
    boot says ``ready``, ``failed`` or ``booting`` (its recorded verdict, else its console's);
    one whose verdict is unknowable (:func:`verdict_unknowable`) stays ``ACTIVE``."""
    if server.status != "ACTIVE":
        return server.status
    recorded = (server.metadata or {}).get(BOOT_KEY)
    if recorded in VERDICTS:
        return recorded
    text = console_tail(s, server)
    if verdict_unknowable(server, recorded, text):
        return "ACTIVE"
    return verdict(text, server.name) or "booting"


def age(server) -> float:
    """Seconds since Nova created ``server`` (0 when it does not say)."""
    try:
        created = datetime.fromisoformat(server.created_at.replace("Z", "+00:00"))
    except (AttributeError, TypeError, ValueError):
        return 0.0
    return max(0.0, time.time() - created.timestamp())


def delete_server(s: Scope, server) -> None:
    """Delete ``server`` and wait until it is gone (one already in ERROR too).

    :raises CloudError: when it goes to ERROR instead (for one that was in ERROR: when no delete
        is under way any more and it is still there).
    """
    c = s.conn.compute
    was_error = server.status == "ERROR"
    c.delete_server(server)
    started = time.monotonic()

    def fetch():
        found = c.find_server(server.id, ignore_missing=True)
        if found is None or not (was_error and found.status == "ERROR"):
            return found
        # Nova keeps an ERROR server in ERROR while its delete is under way (task_state says
        # so); with no task yet it may not have marked it, so a grace; past that, it failed.
        task = getattr(found, "task_state", None)
        deleting = task == "deleting" or (task is None
                                           and time.monotonic() - started <= DELETE_GRACE_S)
        return SimpleNamespace(status="DELETING" if deleting else "ERROR",
                               fault=getattr(found, "fault", None))

    s.wait(f"server {server.name} to go", fetch, ok={"GONE"},
           failures=SERVER_DELETE_FAILURES, describe=server_fault)


def wait_volume(s: Scope, volume, ok: set[str], what: str):
    """Wait until ``volume`` is in one of the states ``ok``; the volume as it then is.

    :param what: follows the volume's name in messages (``" to detach"``).
    :raises CloudError: when it goes to an error state (``error`` too, unless in ``ok``).
    :raises WaitTimeout: when it does not get there in the cluster's timeout.
    """
    b = s.conn.block_storage
    return s.wait(f"volume {volume.name}{what}", lambda: b.get_volume(volume.id), ok=ok,
                    failures=VOLUME_FAILURES | ({"error"} - ok),
                    describe=lambda v: volume_fault(s, v))


def volume_fault(s: Scope, volume) -> str:
    """Why Cinder put ``volume`` in an error state: its newest user message (Block Storage API
    3.5, e.g. "schedule allocate volume:Could not find any available weighted backend."); empty
    when the cloud keeps none or does not answer. Only ever explains an error that is reported
    anyway, so a failure here is not one of its own."""
    try:
        r = s.conn.block_storage.get("/messages", params={"resource_uuid": volume.id},
                                     microversion="3.5")
        messages = r.json().get("messages", []) if r.ok else []
    except (SDKException, ClientException, ValueError):  # ValueError: not JSON
        return ""
    newest = max(messages, key=lambda m: m.get("created_at") or "", default=None)
    return (newest or {}).get("user_message") or ""


def delete_volume(s: Scope, volume) -> None:
    """Delete ``volume`` once it is detached (an errored one as it is)."""
    if volume.status not in ("available", "error"):
        volume = wait_volume(s, volume, {"available", "error"}, " to detach")
    s.conn.block_storage.delete_volume(volume)


def ensure_volume(s: Scope, node: Node):
    """The node's storage volume (None for a role without one, or in a dry run)."""
    size = s.cfg.volume_gb(node.role)
    if not size:
        return None
    vname = f"{node.name}-storage"
    volume = s.one([v for v in s.volumes() if v.name == vname], "volume", vname)
    if volume is not None and volume.status == "creating" and not s.dry:
        # a killed run's (other states, such as reserved for a server in ERROR, are for the
        # server's replacement to settle)
        volume = wait_volume(s, volume, {"available", "in-use", "error"}, "")
    if volume is not None and volume.status == "error" and not volume.attachments:
        s.record("replace", "volume", vname,
                 f"was in error: {volume_fault(s, volume) or 'Cinder gave no reason'}")
        if s.dry:
            return None
        delete_volume(s, volume)
        s.wait(f"volume {vname} to go",
               lambda: next((v for v in s.volumes() if v.id == volume.id), None),
               ok={"GONE"}, failures={"error_deleting"})
        volume = None
    if volume is None:
        s.record("create", "volume", vname, f"{size} GB")
        if s.dry:
            return None
        b = s.conn.block_storage
        # in the servers' zone, where cluster.yaml names one (Nova may refuse to attach a
        # volume across zones: cross_az_attach)
        az = s.cfg.openstack.availability_zone
        volume = b.create_volume(name=vname, size=size,
                                 metadata={UID_KEY: s.uid, "k8simg-cluster": s.name,
                                           "k8simg-node": node.name},
                                 **({"availability_zone": az} if az else {}))
        volume = wait_volume(s, volume, {"available", "in-use"}, "")
    return volume


# Nova's task states once a compute host has claimed a server (its host recorded, so the
# scheduler places the next member of its server group elsewhere): after 'scheduling' and the
# build's start, before ACTIVE.
ON_HOST = frozenset({"networking", "block_device_mapping", "spawning"})


def ensure_server(s: Scope, node: Node, *, port_id: str | None, volume, image_id: str,
                  flavor: Flavor, server_group_id: str | None, user_data: bytes | None,
                  placed_only: bool = False) -> None:
    """The node's server, booted from ``image_id`` with its config drive; one found in ERROR
    is replaced. Waits until it is ACTIVE, or with ``placed_only`` until a compute host has
    claimed it (:data:`ON_HOST`).

    :raises CloudError: when it goes to ERROR (with Nova's fault).
    """
    c = s.conn.compute
    server = find_server(s, node.name)
    failed_boot = server is not None and (server.metadata or {}).get(BOOT_KEY) == "failed"
    if server is not None and (server.status == "ERROR" or failed_boot):
        s.record("replace", "server", node.name,
                 "its first boot failed (its console showed it)" if failed_boot
                 else f"was in ERROR: {server_fault(server)}")
        if s.dry:
            return
        delete_server(s, server)
        if volume is not None:
            volume = wait_volume(s, volume, {"available"}, "")
        server = None
    if server is None:
        s.record("create", "server", node.name, f"{node.role}, {flavor.name}")
        if s.dry:
            return
        bdm = [{"boot_index": 0, "uuid": image_id, "source_type": "image",
                "destination_type": "local", "delete_on_termination": True}]
        if volume is not None:
            bdm.append({"boot_index": -1, "uuid": volume.id, "source_type": "volume",
                        "destination_type": "volume", "delete_on_termination": False})
        server = c.create_server(
            name=node.name, image_id=image_id, flavor_id=flavor.id,
            networks=[{"port": port_id}], config_drive=True, user_data=b64(user_data),
            block_device_mapping_v2=bdm,
            scheduler_hints={"group": server_group_id} if server_group_id else {},
            tags=[s.tag],
            metadata={UID_KEY: s.uid, "k8simg-cluster": s.name, "k8simg-role": node.role,
                      "k8simg-image": image_id, "k8simg-generation": "1",
                      "k8simg-config": config_of(user_data), BOOT_KEY: "booting"},
            **({"availability_zone": s.cfg.openstack.availability_zone}
               if s.cfg.openstack.availability_zone else {}))
    if s.dry or server.status == "ACTIVE":
        return
    if placed_only:
        def placement():
            now = c.get_server(server.id)
            if now is None:
                return None
            placed = now.status == "ACTIVE" or getattr(now, "task_state", None) in ON_HOST
            return SimpleNamespace(state="PLACED" if placed else now.status, server=now)
        s.wait(f"server {node.name} to be placed on a host", placement, attribute="state",
               ok={"PLACED"}, failures={"ERROR"}, describe=lambda p: server_fault(p.server))
    else:
        s.wait(f"server {node.name}", lambda: c.get_server(server.id), ok={"ACTIVE"},
               failures={"ERROR"}, describe=server_fault)


def delete_node(s: Scope, name: str) -> None:
    """The server (waiting until it is gone), then its volume and its port."""
    n = s.conn.network
    server = find_server(s, name)
    if server is not None:
        delete_server(s, server)
    for v in s.volumes():
        if v.name == f"{name}-storage":
            s.record("delete", "volume", v.name)
            delete_volume(s, v)
    for port in [p for p in n.ports(name=f"{name}-port", project_id=s.project_id)
                 if s.owns(p)]:
        s.record("delete", "port", port.name)
        n.delete_port(port)
