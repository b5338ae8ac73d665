"""OpenStack through openstacksdk: one connection helper, then task-level verbs per service."""

from k8simg.errors import K8simgError


class CloudError(K8simgError):
    """The cloud refused, failed, or could not be reached."""


def connect(cloud: str | None):
    """A connection to ``cloud`` from clouds.yaml (or the ``OS_*`` environment when None).

    :raises CloudError: naming the cloud when it is not configured or does not answer.
    """
    import openstack
    from keystoneauth1 import exceptions as ksa
    from openstack import exceptions as osx

    try:
        conn = openstack.connect(cloud=cloud)
        conn.authorize()
    except osx.ConfigException as e:
        raise CloudError(f"cloud {cloud!r}: {e}") from None
    except (ksa.ClientException, osx.SDKException) as e:
        raise CloudError(f"cloud {cloud or '(from OS_* variables)'}: cannot authenticate: "
                         f"{e}") from None
    return conn
