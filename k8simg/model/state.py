"""``state.json``: the cluster's identity, what deploy and upgrade learnt that the cloud alone
does not say, and the one module that writes it.

    uid                   the cluster's identity (:func:`new_uid`): every cloud resource the
                          cluster creates carries it, and only what carries it is the cluster's
    adopting              a cluster from before UIDs whose old resources deploy still adopts
    kubernetes_version    the release the nodes ran when a deploy or an upgrade last finished
    configs               for each config a node runs (by the digest its cloud records): the
                          digest of every file in it, so a plan can name what changed
    api_floating_ip       the API's floating IP (it goes into the API server's certificate)
    bastion_floating_ip   the bastion's floating IP (the operators' way in, the SSH tunnel)
    service_network       the subnet and floating network the cloud controller manager puts
                          Services' load balancers on (OpenStack; IDs deploy made or found)
    nodes                 the node set, as ``<role>-<index>`` keys, once an upgrade replaced one
                          (its workers scaled to workers.count by each deploy)
    upgrade               an upgrade under way: its target ``image`` and the replacements
                          chosen (``replacing``: old node name -> new node name)

The cloud stays the source of truth for what exists; this file records choices and addresses.
Every change is a read-modify-write under one lock, written atomically (0600).
"""

import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

from k8simg.errors import K8simgError
from k8simg.fsutil import atomic_write
from k8simg.model.credential import ServiceNetwork

_LOCK = threading.Lock()  # deploy writes from several threads (the bastion's address)
UID_PATTERN = re.compile(r"[0-9a-f]{16}")


def new_uid() -> str:
    """A fresh cluster UID: 64 random bits as 16 hex digits (short enough for every cloud's
    tag and name limits, and no two clusters share one by chance)."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class UpgradeState:
    """An upgrade under way."""

    image: str
    replacing: dict[str, str] = field(default_factory=dict)


class ClusterState:
    """The cluster's ``state.json``.

    :param path: the file (it need not exist: an empty state).
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise K8simgError(f"{self.path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise K8simgError(f"{self.path}: not a JSON object")
        uid = data.get("uid")
        if uid is not None and not (isinstance(uid, str) and UID_PATTERN.fullmatch(uid)):
            raise K8simgError(f"{self.path}: uid: expected 16 lowercase hex digits, found "
                              f"{uid!r}")
        return data

    def _modify(self, change) -> None:
        """``change(data)`` edits the state in place; written (atomically, 0600) when it
        changed anything. One read-modify-write under the lock."""
        with _LOCK:
            data = self._read()
            before = json.dumps(data, sort_keys=True)
            change(data)
            if json.dumps(data, sort_keys=True) != before:
                atomic_write(self.path, json.dumps(data, indent=2) + "\n", 0o600)

    def _update(self, **changes) -> None:
        """Set (or, with None, remove) top-level keys."""
        def change(data):
            for key, value in changes.items():
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
        self._modify(change)

    # -- identity ------------------------------------------------------------------------------
    @property
    def uid(self) -> str | None:
        """The cluster's UID; None for a cluster made before k8simg had them (its next deploy
        gives it one).

        :raises K8simgError: when the file holds something that is not a UID.
        """
        return self._read().get("uid")  # its shape is checked on every read

    def ensure_uid(self, *, legacy: bool = False) -> str:
        """The cluster's UID, made and recorded now if it has none.

        :param legacy: the cluster may have resources from before UIDs: when a UID is made,
            record that they are still to be adopted (:attr:`adopting`).
        """
        def change(data):
            if data.get("uid") is None:
                data["uid"] = new_uid()
                if legacy:
                    data["adopting"] = True
        self._modify(change)
        return self.uid

    @property
    def adopting(self) -> bool:
        """Whether resources from before the cluster had a UID are still to be adopted (until
        a deploy has done it: an interrupted one does it again)."""
        return self._read().get("adopting") is True

    def adopted(self) -> None:
        self._update(adopting=None)

    # -- addresses -----------------------------------------------------------------------------
    @property
    def api_floating_ip(self) -> str | None:
        return self._read().get("api_floating_ip")

    @property
    def bastion_floating_ip(self) -> str | None:
        return self._read().get("bastion_floating_ip")

    def set_addresses(self, *, api: str | None = None, bastion: str | None = None) -> None:
        """Record the floating IPs given (None leaves one as it is)."""
        self._update(**{k: v for k, v in (("api_floating_ip", api),
                                          ("bastion_floating_ip", bastion)) if v})

    def forget_addresses(self) -> None:
        """After destroy: the addresses are gone with the cloud's resources."""
        self._update(api_floating_ip=None, bastion_floating_ip=None)

    # -- the cloud's networks the cluster's integrations use ---------------------------------
    @property
    def service_network(self) -> ServiceNetwork | None:
        """The subnet and floating network Services of type LoadBalancer use (OpenStack), as
        deploy recorded them; None before that.

        :raises K8simgError: when the file holds something else.
        """
        got = self._read().get("service_network")
        if got is None:
            return None
        try:
            return ServiceNetwork(str(got["subnet_id"]), str(got["floating_network_id"]))
        except (KeyError, TypeError):
            raise K8simgError(f"{self.path}: service_network: expected subnet_id and "
                              "floating_network_id") from None

    def set_service_network(self, net: ServiceNetwork) -> None:
        self._update(service_network={"subnet_id": net.subnet_id,
                                      "floating_network_id": net.floating_network_id})

    def forget_service_network(self) -> None:
        """After destroy: the subnet is gone with the cloud's resources."""
        self._update(service_network=None)

    # -- the node set --------------------------------------------------------------------------
    @property
    def node_keys(self) -> list[str] | None:
        """``<role>-<index>`` of every node, or None until an upgrade first changed the set."""
        keys = self._read().get("nodes")
        if keys is not None and not (isinstance(keys, list)
                                     and all(isinstance(k, str) for k in keys)):
            raise K8simgError(f"{self.path}: nodes: expected a list of <role>-<index>")
        return keys

    def set_node_keys(self, keys: list[str]) -> None:
        self._update(nodes=list(keys))

    # -- what each config held (paths and digests, never contents) ------------------------------
    def config_files(self, digest: str) -> dict[str, str] | None:
        """The file digests of the config whose digest is ``digest`` (as a node's cloud
        records it), or None when it was not recorded here."""
        got = (self._read().get("configs") or {}).get(digest)
        if got is not None and not (isinstance(got, dict)
                                    and all(isinstance(v, str) for v in got.values())):
            raise K8simgError(f"{self.path}: configs: {digest}: expected path -> digest")
        return got

    def record_configs(self, configs: dict[str, dict[str, str]], keep: set[str]) -> None:
        """Add ``configs`` (config digest -> file digests) and drop every other one not in
        ``keep`` (the configs the nodes run)."""
        def change(data):
            have = data.get("configs") or {}
            merged = {d: f for d, f in {**have, **configs}.items() if d in keep or d in configs}
            if merged != have:
                data["configs"] = merged
        self._modify(change)

    # -- the Kubernetes release the nodes run ----------------------------------------------------
    @property
    def kubernetes_version(self) -> str | None:
        """The release the cluster's nodes ran when a deploy or an upgrade last finished."""
        v = self._read().get("kubernetes_version")
        if v is not None and not isinstance(v, str):
            raise K8simgError(f"{self.path}: kubernetes_version: expected a version string")
        return v

    def set_kubernetes_version(self, version: str) -> None:
        self._update(kubernetes_version=version)

    # -- an upgrade under way ------------------------------------------------------------------
    @property
    def upgrade(self) -> UpgradeState | None:
        up = self._read().get("upgrade")
        if not up:
            return None
        try:
            return UpgradeState(str(up["image"]), dict(up.get("replacing") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise K8simgError(f"{self.path}: upgrade: {e!r}") from None

    def begin_upgrade(self, image: str) -> None:
        """Record the target (keeping the replacements an interrupted run chose)."""
        up = self.upgrade
        self._update(upgrade={"image": image, "replacing": up.replacing if up else {}})

    def set_replacing(self, old: str, new: str | None) -> None:
        """``old`` is being replaced by ``new`` (None: no longer being replaced)."""
        up = self.upgrade
        if up is None:
            raise K8simgError(f"{self.path}: no upgrade under way to record {old} in")
        replacing = {**up.replacing, old: new}
        self._update(upgrade={"image": up.image,
                              "replacing": {k: v for k, v in replacing.items() if v}})

    def set_replacing_all(self, pairs: dict[str, str]) -> None:
        """Every ``old -> new`` of ``pairs`` recorded at once (one write)."""
        up = self.upgrade
        if up is None:
            raise K8simgError(f"{self.path}: no upgrade under way to record replacements in")
        self._update(upgrade={"image": up.image, "replacing": {**up.replacing, **pairs}})

    def end_upgrade(self) -> None:
        self._update(upgrade=None)
