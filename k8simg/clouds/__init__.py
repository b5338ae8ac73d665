"""The clouds a cluster runs on, behind one contract (:mod:`k8simg.clouds.base`).

:func:`open_cloud` is the only place that picks a driver: nothing else imports
:mod:`k8simg.clouds.openstack` or :mod:`k8simg.clouds.local` (an import-linter contract holds
it so), and the two drivers never import each other.
"""

from collections.abc import Callable
from pathlib import Path

from k8simg.clouds.base import Cloud, Ledger
from k8simg.model.cluster import ClusterDir
from k8simg.model.config import ClusterConfig

LOCAL = "local"


def open_cloud(cluster: ClusterDir, cfg: ClusterConfig, cloud: str | None = None, *,
               dry_run: bool = False, progress: Callable[[str], None] = lambda _m: None,
               **kw) -> Cloud:
    """The cloud the cluster runs on.

    :param cloud: overrides ``cfg.cloud``: ``local``, or a cloud's name in clouds.yaml.
    :param dry_run: record what would change, touch nothing.
    :param kw: go to the driver (``concurrency``, ``timeout``, ``ssh_keys``).
    """
    ledger = Ledger(dry_run=dry_run, progress=progress)
    target = cloud or cfg.cloud
    if target == LOCAL:
        from k8simg.clouds.local.driver import LocalCloud

        return LocalCloud(cluster, cfg, ledger=ledger, **kw)
    from k8simg.clouds.openstack.driver import OpenStackCloud

    return OpenStackCloud(cluster, cfg, target, ledger=ledger, **kw)


def upload_image(manifest: Path, cloud: str | None,
                 progress: Callable[[str], None] = lambda _m: None):
    """Upload a baked image to the Glance of ``cloud`` (clouds.yaml name; None: ``OS_*``),
    unless the project already holds one with the same checksum.

    :returns: :class:`k8simg.clouds.openstack.glance.Uploaded`.
    :raises CloudError: when the cloud or Glance refuses, or the image does not match its
        manifest.
    """
    from k8simg.clouds.openstack.connect import connect
    from k8simg.clouds.openstack.glance import upload

    return upload(connect(cloud), manifest, progress=progress)
