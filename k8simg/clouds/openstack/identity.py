"""Keystone: the application credential of the in-cluster cloud integrations (the cloud
controller manager and Cinder CSI), created once; its secret is kept only in the cluster
directory (:class:`k8simg.model.credential.CloudCredential`): the cloud never shows it again."""

from k8simg.clouds.openstack.connect import Scope
from k8simg.model.credential import CloudCredential


def credential_name(cluster: str) -> str:
    """The name of cluster ``cluster``'s application credential in Keystone."""
    return f"{cluster}-k8simg"


def stand_in_credential(s: Scope) -> CloudCredential:
    """One of the real one's shape, for sizing user_data before deploy creates it."""
    auth = s.conn.config.get_auth_args()
    return CloudCredential.stand_in(auth.get("auth_url", ""), s.conn.config.get_region_name())


def ensure_credential(s: Scope, cluster_path) -> None:
    """The credential exists in Keystone and its secret in the cluster directory; one whose
    secret was lost (an interrupted run) is replaced."""
    ident = s.conn.identity
    user = s.conn.current_user_id
    name = credential_name(s.name)
    existing = s.one(ident.application_credentials(user, name=name), "application credential",
                     name)
    have_secret = CloudCredential.path(cluster_path).exists()
    if existing is not None and have_secret:
        return
    if existing is not None:
        s.record("replace", "application credential", name, "secret was lost")
        if s.dry:
            return
        ident.delete_application_credential(user, existing)
    else:
        s.record("create", "application credential", name)
        if s.dry:
            return
    cred = ident.create_application_credential(
        user, name=name, unrestricted=False,
        description=f"k8simg cluster {s.name}: cloud controller manager and Cinder CSI")
    auth = s.conn.config.get_auth_args()
    CloudCredential(auth["auth_url"], cred.id, cred.secret,
                    s.conn.config.get_region_name()).save(cluster_path)
