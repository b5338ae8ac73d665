"""A node's desired state is its image and its rendered config: a node is ``current`` when its
cloud says it runs both, ``stale`` otherwise, and only a replacement makes a stale node
current (``k8simg upgrade``).

Each node's cloud keeps the digest of the config it booted with (Nova server metadata, the
local cloud's record); ``state.json`` keeps, for every such digest, the digest of each file
in it (never contents), so a plan can say which files would change. A node booted before
k8simg recorded its config is ``current`` as far as its config goes: nothing says otherwise.
"""

from dataclasses import dataclass

from k8simg.clouds.base import NodeStatus, config_of
from k8simg.ignition.digest import (
    changed_paths,
    config_digest,
    earliest_leaf_expiry,
    file_digests,
)
from k8simg.model.state import ClusterState


@dataclass(frozen=True)
class Staleness:
    """Why a node is stale (neither field set: it is current).

    :param image: ``(the image it runs, the image it should)`` when they differ.
    :param config: the paths whose content would change (empty when the node's config
        differs but its files were not recorded here), or None when its config is current or
        unrecorded.
    """

    node: str
    image: tuple[str, str] | None = None
    config: tuple[str, ...] | None = None
    expires: str | None = None  # the first of its leaf certificates, as rendered now (ISO)

    @property
    def stale(self) -> bool:
        return self.image is not None or self.config is not None

    def reason(self) -> str:
        """``current``, or ``stale (image a -> b; config: paths)``."""
        if not self.stale:
            return "current"
        parts = []
        if self.image:
            parts.append(f"image {self.image[0]} -> {self.image[1]}")
        if self.config is not None:
            parts.append("config: " + (", ".join(self.config) or "changed (files not recorded)"))
        return "stale (" + "; ".join(parts) + ")"

    def as_dict(self) -> dict:
        return {"node": self.node, "stale": self.stale,
                "image": list(self.image) if self.image else None,
                "config": list(self.config) if self.config is not None else None,
                "certificates_expire": self.expires}


def staleness(statuses: list[NodeStatus], rendered: dict[str, bytes], state: ClusterState,
              image: str | None) -> dict[str, Staleness]:
    """Each node of ``statuses`` measured against the config it would get now
    (``rendered``, by node name) and the target ``image`` (None: not compared)."""
    out = {}
    for st in statuses:
        want = rendered.get(st.name)
        config = None
        if want is not None and st.config and st.config != config_of(want):
            before = state.config_files(st.config)
            config = tuple(changed_paths(before, file_digests(want))) if before else ()
        img = (st.image, image) if image and st.image != image else None
        first = earliest_leaf_expiry(want) if want is not None else None
        out[st.name] = Staleness(st.name, img, config,
                                 first.isoformat(timespec="seconds") if first else None)
    return out


def record(state: ClusterState, rendered: dict[str, bytes], running: list[NodeStatus]) -> None:
    """Keep the file digests of every config in ``rendered`` (what nodes boot with now), and
    of the configs ``running`` nodes still run; forget the rest."""
    configs = {}
    for data in rendered.values():
        files = file_digests(data)
        configs[config_digest(files)] = files
    state.record_configs(configs, keep={st.config for st in running if st.config})
