"""The OpenStack application credential of the in-cluster cloud integrations (the cloud
controller manager and Cinder CSI).

Created once by deploy (the cloud never shows its secret again), kept only in the cluster
directory as ``openstack/application-credential.json`` (0600), rendered only into the masters'
add-on values.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from k8simg.errors import K8simgError
from k8simg.fsutil import atomic_write

FILE = "openstack/application-credential.json"


@dataclass(frozen=True)
class CloudCredential:
    auth_url: str
    application_credential_id: str
    application_credential_secret: str
    region: str | None = None

    FILE = FILE

    @staticmethod
    def path(cluster_path: Path) -> Path:
        return Path(cluster_path) / FILE

    @classmethod
    def stand_in(cls, auth_url: str, region: str | None) -> "CloudCredential":
        """One of the same shape as Keystone's (32-hex id, 86-character secret), for sizing
        user_data before the real one exists."""
        return cls(auth_url, "0" * 32, "x" * 86, region)

    @classmethod
    def load(cls, cluster_path: Path) -> "CloudCredential | None":
        """The cluster's credential, or None when it has none yet.

        :raises K8simgError: naming the file when it is not a credential.
        """
        path = cls.path(cluster_path)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(**{k: data[k] for k in ("auth_url", "application_credential_id",
                                               "application_credential_secret")},
                       region=data.get("region"))
        except (ValueError, KeyError, TypeError) as e:
            raise K8simgError(f"{path}: not a valid application credential ({e!r})") from None

    def save(self, cluster_path: Path) -> None:
        """Written atomically, 0600: it is a secret."""
        atomic_write(self.path(cluster_path), json.dumps(asdict(self), indent=2) + "\n", 0o600)

    @classmethod
    def forget(cls, cluster_path: Path) -> None:
        cls.path(cluster_path).unlink(missing_ok=True)


@dataclass(frozen=True)
class ServiceNetwork:
    """Where the cloud controller manager puts the load balancers of Services of type
    LoadBalancer: its members on the cluster's subnet, its floating IPs from the external
    network. Recorded by deploy (the IDs exist once it made them), rendered into the masters'
    cloud config."""

    subnet_id: str
    floating_network_id: str

    @classmethod
    def stand_in(cls) -> "ServiceNetwork":
        """One of the same shape as Neutron's (UUIDs), for sizing user_data before deploy has
        made the subnet."""
        uuid = "00000000-0000-0000-0000-000000000000"
        return cls(uuid, uuid)


def cloud_cluster_name(name: str, uid: str | None) -> str:
    """What the cloud controller manager and Cinder CSI call the cluster in the cloud (their
    ``--cluster-name`` and ``--cluster``): its name with its UID, so two clusters of one name
    in a project never take each other's load balancers or volumes. Cluster names hold no
    ``_``, so it ends exactly where ``kube_service_<it>_`` says."""
    return f"{name}-{uid}" if uid else name
