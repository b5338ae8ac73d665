"""The cluster's identity: the certificate table, CA and leaf generation, kubeconfigs, expiry."""

from k8simg.pki.certs import TABLE, CertSpec, PkiContext, Scope, table_problems
from k8simg.pki.manager import CertRecord, EnsureResult, Pki

__all__ = ["TABLE", "CertRecord", "CertSpec", "EnsureResult", "Pki", "PkiContext", "Scope",
           "table_problems"]
