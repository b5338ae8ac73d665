"""Upstream facts for the conformance tests (tests/ignition/test_conformance.py): what each
pinned release's own sources define, with where each was read in the file's ``source`` (and
``gaps``: what could not be read). kubernetes/kubernetes itself cannot be fetched here (its
snapshot is 1.9 GB, over the tools' limit), so how exact each file is varies, and says so:

data/coredns-<v>.json, flannel-<v>.json
    written by scripts/upstream_facts.py from the projects' repositories at the pinned tags
    (and cross-checked by a reading by hand of the same files: identical).
data/k8s-<v>-node.json
    KubeletConfiguration and KubeProxyConfiguration: exact, written by
    ``scripts/upstream_facts.py node`` from the staging repositories (kubernetes/kubelet,
    kube-proxy, component-base, api, apimachinery) at tag kubernetes-<v>, commits named; its
    ``--merge-from`` keeps what was written by hand (documented defaults, notes, and the one
    enum the staging sources do not give: kube-proxy's ``detectLocalMode``, ``enumFrom``).
    kubelet's flags: not exact at the tag (``flagsSource``): 1.35 from kubelet's options.go as
    openshift/origin vendors it (Kubernetes 1.35.1), 1.34 from the generated kubelet reference
    page for 1.34; the two agree on every flag both releases have.
data/k8s-<v>-control-plane.json
    kube-apiserver, kube-controller-manager and kube-scheduler flags and the controller names:
    the shared libraries (apiserver, component-base, controller-manager, cloud-provider) exact
    at tag v0.<minor>.<patch>; cmd/ and pkg/ from openshift/microshift's copy of the release
    (its changelog shows the upstream release commit and no later upstream one) with
    OpenShift's carried patches taken out by hand; kube-apiserver's visible flags agree with
    the generated reference page of the release.
data/k8s-<v>-kubeadm.json
    what kubeadm writes: reconstructed (``method``) from indexed kubeadm sources of nearby
    versions, the pull requests that changed them, and kubeadm-rendered manifests of the same
    minor releases published by users; every flag checked against those manifests.
"""
