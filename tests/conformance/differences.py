"""Where k8simg deliberately differs from what kubeadm writes for the same inputs, by
component and flag, with the reason. tests/ignition/test_conformance.py holds every rendered
node to kubeadm's flags (tests/conformance/data/k8s-<release>-kubeadm.json) minus this table,
and the table to the truth (an entry for a flag k8simg does set, or kubeadm does not, fails)."""

NO_TLS_BOOTSTRAP = ("k8simg issues every node's kubelet certificate itself (k8simg pki), so "
                    "no node joins with a bootstrap token")

KUBEADM_DIFFERENCES: dict[str, dict[str, str]] = {
    "kube-apiserver": {
        "enable-bootstrap-token-auth": NO_TLS_BOOTSTRAP,
    },
    "kube-controller-manager": {},
    "kube-scheduler": {},
    "etcd": {},
}

# Flags whose help text says DEPRECATED without the component marking them deprecated (no
# warning, no removal scheduled), kept with the reason.
HELP_DEPRECATED_KEPT: dict[str, dict[str, str]] = {
    "kube-scheduler": {
        "kubeconfig": "kubeadm passes it in both pinned releases; the help's DEPRECATED means "
                      "'ignored when --config gives a KubeSchedulerConfiguration', which "
                      "k8simg does not pass",
    },
}
