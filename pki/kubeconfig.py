"""kubeconfig documents, as kubeadm's ``phases/kubeconfig`` writes them."""

import base64

import yaml


def kubeconfig(cluster: str, server: str, user: str, *, ca_pem: bytes | None = None,
               ca_path: str | None = None, cert_pem: bytes | None = None,
               key_pem: bytes | None = None, cert_path: str | None = None,
               key_path: str | None = None) -> str:
    """A one-cluster, one-user kubeconfig.

    Credentials are either embedded (``*_pem``) or referenced by path on the node
    (``*_path``), which keeps a node's Ignition config small when the files are there anyway.
    """
    if (ca_pem is None) == (ca_path is None):
        raise ValueError("exactly one of ca_pem and ca_path")
    if (cert_pem is None) == (cert_path is None) or (key_pem is None) == (key_path is None):
        raise ValueError("the client certificate and key are each either embedded or a path")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    c = {"server": server}
    if ca_pem is not None:
        c["certificate-authority-data"] = b64(ca_pem)
    else:
        c["certificate-authority"] = ca_path
    u = {}
    if cert_pem is not None:
        u["client-certificate-data"] = b64(cert_pem)
    else:
        u["client-certificate"] = cert_path
    if key_pem is not None:
        u["client-key-data"] = b64(key_pem)
    else:
        u["client-key"] = key_path
    context = f"{user}@{cluster}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": c}],
        "users": [{"name": user, "user": u}],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": user}}],
        "current-context": context,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)
