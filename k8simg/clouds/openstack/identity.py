"""Keystone: the application credential of the in-cluster cloud integrations (the cloud
controller manager and Cinder CSI), created once; its secret is kept only in the cluster
directory (:class:`k8simg.model.credential.CloudCredential`): the cloud never shows it again.

The credential carries exactly the roles ``openstack.credential_roles`` names (default
``member``), never whatever the deploying token happens to hold. It is the cluster's when its
name carries the cluster's UID, or (made before UIDs) when its ID is the one in the cluster
directory: no other credential is replaced or deleted, so a second cluster of the same name,
or a lost credential file, never breaks another cluster's integrations.
"""

from k8simg.clouds.base import CloudError
from k8simg.clouds.openstack.connect import Scope
from k8simg.errors import K8simgError
from k8simg.model.credential import CloudCredential


def credential_name(s: Scope) -> str:
    """The name of the cluster's application credential in Keystone."""
    return f"{s.name}-k8simg-{s.uid}"


def stand_in_credential(s: Scope) -> CloudCredential:
    """One of the real one's shape, for sizing user_data before deploy creates it."""
    auth = s.conn.config.get_auth_args()
    return CloudCredential.stand_in(auth.get("auth_url", ""), s.conn.config.get_region_name())


def token_roles(s: Scope) -> set[str] | None:
    """The role names the deploying token carries on the project (implied roles included),
    or None when the session does not say."""
    try:
        access = s.conn.session.auth.get_access(s.conn.session)
        return set(access.role_names or [])
    except Exception:  # a session without a token to look into: Keystone decides alone
        return None


def saved_credential_id(cluster_path) -> str | None:
    """The ID of the credential the cluster directory holds (None: none, or unreadable)."""
    try:
        saved = CloudCredential.load(cluster_path)
    except K8simgError:
        return None  # unreadable: only the UID in a name proves anything
    return saved.application_credential_id if saved is not None else None


def role_problems(s: Scope, cluster_path) -> list[tuple[str, str]]:
    """Before anything is created: a role of ``openstack.credential_roles`` that the deploying
    token does not carry would make Keystone refuse the credential half-way through the
    deploy. Checked when the credential is still to be made."""
    if CloudCredential.path(cluster_path).exists():
        return []
    held = token_roles(s)
    if held is None:
        return []  # Keystone decides, and its refusal is said by ensure_credential
    return [("openstack.credential_roles",
             f"role {r!r} is not one you hold on this project in {s.where} (you hold: "
             f"{', '.join(sorted(held)) or 'none'}); ask an admin to grant it, or list only "
             "roles you hold") for r in s.cfg.openstack.credential_roles if r not in held]


def credentials_of(s: Scope, cluster_path) -> list:
    """The deploying user's application credentials that are the cluster's: named with its
    UID, or the one whose ID the cluster directory holds (see the module's docstring)."""
    saved = saved_credential_id(cluster_path)
    return [c for c in s.conn.identity.application_credentials(s.conn.current_user_id)
            if c.name == credential_name(s) or (saved is not None and c.id == saved)]


def ensure_credential(s: Scope, cluster_path) -> None:
    """The credential exists in Keystone with the configured roles, and its secret in the
    cluster directory; the cluster's own one whose secret was lost (an interrupted run) is
    replaced.

    :raises CloudError: when Keystone refuses the credential (with its reason and the fix;
        :func:`role_problems` has checked the roles before anything was created).
    """
    ident = s.conn.identity
    user = s.conn.current_user_id
    name = credential_name(s)
    saved = CloudCredential.load(cluster_path)
    mine = credentials_of(s, cluster_path)
    if saved is not None and any(c.id == saved.application_credential_id for c in mine):
        return
    for stale in mine:  # ours by its UID, but its secret is lost
        s.record("replace", "application credential", stale.name, "its secret was lost")
        if not s.dry:
            ident.delete_application_credential(user, stale)
    roles = list(s.cfg.openstack.credential_roles)
    if not mine:
        s.record("create", "application credential", name, "roles " + ", ".join(roles))
    if s.dry:
        return
    from openstack import exceptions as osx

    try:
        cred = ident.create_application_credential(
            user, name=name, unrestricted=False, roles=[{"name": r} for r in roles],
            description=f"k8simg cluster {s.name} ({s.uid}): cloud controller manager and "
                        "Cinder CSI")
    except osx.SDKException as e:
        detail = getattr(e, "details", None) or str(e)
        raise CloudError(
            f"openstack.credential_roles: Keystone refused the application credential "
            f"{name} with roles {', '.join(roles)} in {s.where}: {detail}. Check that your "
            "user holds each of these roles on the project (directly or implied), or change "
            "the list") from None
    auth = s.conn.config.get_auth_args()
    CloudCredential(auth["auth_url"], cred.id, cred.secret,
                    s.conn.config.get_region_name()).save(cluster_path)
