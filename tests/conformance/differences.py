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
    "etcd": {
        # etcd 3.6 renamed both; kubeadm writes the 3.4/3.5 names for an etcd before 3.6
        "feature-gates": "the image's etcd (Debian's 3.4) has no feature gates; it gets "
                         "InitialCorruptCheck by its 3.4 name, "
                         "--experimental-initial-corrupt-check=true",
        "watch-progress-notify-interval": "the image's etcd (Debian's 3.4) takes it by its 3.4 "
                                          "name, --experimental-watch-progress-notify-interval"
                                          "=5s (the API server's consistent reads from its "
                                          "watch cache wait on these notifications)",
    },
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
