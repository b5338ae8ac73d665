"""The cluster directory: the cluster's whole state, and the only place secrets are written.

    <cluster>/cluster.yaml        the definition (k8simg init)
    <cluster>/pki/                every key and certificate (k8simg pki init)
    <cluster>/kubeconfigs/        admin.conf, super-admin.conf, ... and nodes/<node>/kubelet.conf
    <cluster>/state.json          its UID, and what deploy and upgrade learnt (:mod:`k8simg.model.state`)
    <cluster>/openstack/          the application credential of the in-cluster integrations
    <cluster>/backups/            etcd snapshots taken before a control-plane roll
"""

from dataclasses import dataclass
from pathlib import Path

from k8simg.errors import K8simgError
from k8simg.fsutil import atomic_write
from k8simg.model.config import ClusterConfig
from k8simg.model.plan import Node, initial_nodes, node_key, parse_node_key, scaled_nodes
from k8simg.model.state import ClusterState
from k8simg.model.template import render_template
from k8simg.model.validate import load_config, parse_config

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

    @property
    def backups_dir(self) -> Path:
        return self.path / "backups"

    def load(self) -> ClusterConfig:
        """The validated definition.

        :raises ConfigError: when it is missing or invalid.
        """
        return load_config(self.config_path)

    @property
    def state(self) -> ClusterState:
        return ClusterState(self.path / "state.json")

    def nodes(self, cfg: ClusterConfig | None = None) -> list[Node]:
        """The cluster's nodes: the initial plan until an upgrade has replaced some (then the
        state records the set, which upgrade keeps in step with the cloud). Between upgrades
        and restores, ``workers.count`` still rules the recorded set's workers (a deploy scales
        them and records the result); during one, the recorded set is taken as it is (it holds
        the replacements beside the nodes they replace)."""
        cfg = cfg or self.load()
        keys = self.state.node_keys
        if keys is None:
            return initial_nodes(cfg)
        try:
            recorded = [parse_node_key(cfg, k) for k in keys]
        except ValueError as e:
            raise K8simgError(f"{self.state.path}: nodes: {e}") from None
        return recorded if self.state.upgrade else scaled_nodes(cfg, recorded)

    def save_nodes(self, nodes: list[Node]) -> None:
        self.state.set_node_keys([node_key(n) for n in nodes])


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
    cd.state.ensure_uid()  # a re-init of a lost directory is a new cluster, never the old one
    atomic_write(cd.config_path, text, 0o600)
    return cd
