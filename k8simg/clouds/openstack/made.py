"""What Kubernetes makes in the cloud by itself for a cluster, found by the conventions the
programs that make it really use (kubernetes/cloud-provider-openstack), with the name they know
the cluster by (:func:`k8simg.model.credential.cloud_cluster_name`: its name and UID, so never
another cluster's), in the cluster's project:

- the cloud controller manager's load balancers, one per Service of type LoadBalancer, named
  ``kube_service_<cluster>_<namespace>_<service>`` and described "Kubernetes external service
  <namespace>/<service> from cluster <cluster>" (listeners, pools, members and monitors go with
  them, deleted in cascade) (pkg/openstack/loadbalancer.go);
- the floating IPs it gives them, described "Floating IP for Kubernetes external service
  <namespace>/<service> from cluster <cluster>" (ensureFloatingIP);
- with ``manage-security-groups`` (the ``ovn`` provider), a security group per Service,
  described "Security Group for <namespace>/<service> Service LoadBalancer in cluster
  <cluster>" (pkg/openstack/loadbalancer_sg.go);
- Cinder CSI's volumes and snapshots, whose metadata ``cinder.csi.openstack.org/cluster`` is
  the cluster (pkg/csi/cinder/controllerserver.go).
"""

from k8simg.clouds.openstack.connect import Scope
from k8simg.model.credential import cloud_cluster_name

LB_PREFIX = "kube_service_"
FIP_PREFIX = "Floating IP for Kubernetes external service "
SG_PREFIX = "Security Group for "
CSI_CLUSTER_KEY = "cinder.csi.openstack.org/cluster"


def cluster_name(s: Scope) -> str:
    """The cluster as the cloud controller manager and Cinder CSI name it."""
    return cloud_cluster_name(s.name, s.uid)


def is_service_load_balancer(lb, cluster: str) -> bool:
    """Whether ``lb`` is one the cloud controller made for a Service of ``cluster``: its name
    is ``kube_service_<cluster>_<namespace>_<service>`` (namespaces and Service names hold no
    ``_``), or its description says the cluster."""
    name = lb.name or ""
    if name.startswith(LB_PREFIX) and name.count("_") >= 4:
        if name.removeprefix(LB_PREFIX).rsplit("_", 2)[0] == cluster:
            return True
    description = lb.description or ""
    return description.startswith("Kubernetes external service ") and \
        description.endswith(f" from cluster {cluster}")


def load_balancers(s: Scope) -> list:
    cluster = cluster_name(s)
    return [lb for lb in s.conn.load_balancer.load_balancers(project_id=s.project_id)
            if is_service_load_balancer(lb, cluster)]


def floating_ips(s: Scope) -> list:
    suffix = f" from cluster {cluster_name(s)}"
    return [ip for ip in s.conn.network.ips(project_id=s.project_id)
            if (ip.description or "").startswith(FIP_PREFIX)
            and (ip.description or "").endswith(suffix)]


def security_groups(s: Scope) -> list:
    suffix = f" Service LoadBalancer in cluster {cluster_name(s)}"
    return [g for g in s.conn.network.security_groups(project_id=s.project_id)
            if (g.description or "").startswith(SG_PREFIX)
            and (g.description or "").endswith(suffix)]


def volumes(s: Scope) -> list:
    cluster = cluster_name(s)
    return [v for v in s.conn.block_storage.volumes()
            if (v.metadata or {}).get(CSI_CLUSTER_KEY) == cluster]


def snapshots(s: Scope) -> list:
    cluster = cluster_name(s)
    return [x for x in s.conn.block_storage.snapshots()
            if (x.metadata or {}).get(CSI_CLUSTER_KEY) == cluster]
