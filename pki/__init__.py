"""The cluster's identity: the certificate table, CA and leaf generation, kubeconfigs, expiry."""

from typing import TYPE_CHECKING

from k8simg.pki.certs import TABLE, CertSpec, PkiContext, Scope, table_problems
from k8simg.pki.manager import CertRecord, EnsureResult, Pki

__all__ = ["TABLE", "CertRecord", "CertSpec", "EnsureResult", "Pki", "PkiContext", "Scope",
           "table_problems"]


def cluster_pki(cluster: "ClusterDir", cfg: "ClusterConfig | None" = None, **kw) -> Pki:
    """The PKI of the cluster directory ``cluster``: its node set, and the API's floating IP
    once deploy has recorded one (it goes into the API server's certificate).

    :param kw: go to :class:`Pki` (``progress``, injected clock and key generator).
    """
    import ipaddress

    cfg = cfg or cluster.load()
    fip = cluster.state.api_floating_ip
    ctx = PkiContext(cfg, tuple(cluster.nodes(cfg)), ipaddress.IPv4Address(fip) if fip else None)
    return Pki(cluster.pki_dir, ctx, **kw)


if TYPE_CHECKING:
    from k8simg.model.cluster import ClusterDir
    from k8simg.model.config import ClusterConfig
