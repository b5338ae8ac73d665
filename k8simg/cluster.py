"""The cluster directory: the cluster's whole state, and the only place secrets are written.

    <cluster>/cluster.yaml        the definition (k8simg init)
    <cluster>/pki/                every key and certificate (k8simg pki init)
    <cluster>/kubeconfigs/        admin.conf, super-admin.conf, ... and nodes/<node>/kubelet.conf
    <cluster>/state.json          what deploy learnt from the cloud that the PKI depends on
                                  (the API's floating IP); the cloud stays the source of truth
    <cluster>/openstack/          the application credential of the in-cluster integrations
"""

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from k8simg.config import ClusterConfig, load_config, parse_config, render_template
from k8simg.errors import K8simgError
from k8simg.fsutil import atomic_write
from k8simg.pki import Pki, PkiContext
from k8simg.plan import Node, initial_nodes, parse_node_key

CONFIG_FILE = "cluster.yaml"


@dataclass(frozen=True)
class ClusterDir:
    path: Path

    @classmethod
    def at(cls, path: str | Path) -> "ClusterDir":
        """Accept the directory or its ``cluster.yaml``."""
        p = Path(path)
        if p.name == CONFIG_FILE and p.is_file():
            p = p.parent
        return cls(p)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def pki_dir(self) -> Path:
        return self.path / "pki"

    @property
    def kubeconfig_dir(self) -> Path:
        return self.path / "kubeconfigs"

    def load(self) -> ClusterConfig:
        """The validated definition.

        :raises ConfigError: when it is missing or invalid.
        """
        return load_config(self.config_path)

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    def state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise K8simgError(f"{self.state_path}: not valid JSON ({e})") from None

    def save_state(self, **values) -> None:
        atomic_write(self.state_path, json.dumps({**self.state(), **values}, indent=2) + "\n",
                     0o600)

    def nodes(self, cfg: ClusterConfig | None = None) -> list[Node]:
        """The cluster's nodes: the initial plan until an upgrade has replaced some (then the
        state records the set, which upgrade keeps in step with the cloud)."""
        cfg = cfg or self.load()
        keys = self.state().get("nodes")
        if keys is None:
            return initial_nodes(cfg)
        try:
            return [parse_node_key(cfg, k) for k in keys]
        except ValueError as e:
            raise K8simgError(f"{self.state_path}: nodes: {e}") from None

    def drop_state(self, key: str) -> None:
        state = self.state()
        if state.pop(key, None) is not None:
            atomic_write(self.state_path, json.dumps(state, indent=2) + "\n", 0o600)

    def save_nodes(self, nodes: list[Node]) -> None:
        self.save_state(nodes=[f"{n.role}-{n.index}" for n in nodes])

    def pki_context(self, cfg: ClusterConfig | None = None) -> PkiContext:
        cfg = cfg or self.load()
        fip = self.state().get("api_floating_ip")
        return PkiContext(cfg, tuple(self.nodes(cfg)),
                          ipaddress.IPv4Address(fip) if fip else None)

    def pki(self, cfg: ClusterConfig | None = None, **kw) -> Pki:
        return Pki(self.pki_dir, self.pki_context(cfg), **kw)


def init_cluster(path: str | Path, *, cloud: str = "local", ssh_keys: list[str] | None = None,
                 kubernetes_version: str | None = None, image: str | None = None,
                 workers: int | None = None) -> ClusterDir:
    """Create a cluster directory with a commented, valid ``cluster.yaml``.

    :raises K8simgError: when the directory already holds a cluster definition.
    :raises ConfigError: when the arguments make an invalid definition (nothing is written).
    """
    cd = ClusterDir(Path(path))
    if cd.config_path.exists():
        raise K8simgError(f"{cd.config_path} already exists; not overwriting it")
    kw = {k: v for k, v in (("kubernetes_version", kubernetes_version), ("image", image),
                            ("workers", workers)) if v is not None}
    text = render_template(cd.path.resolve().name, cloud=cloud, ssh_keys=ssh_keys, **kw)
    parse_config(text, str(cd.config_path))  # validate before anything is written
    cd.path.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(cd.config_path, text, 0o600)
    return cd
