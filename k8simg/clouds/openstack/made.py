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

from dataclasses import dataclass

from k8simg.clouds.openstack.connect import Scope
from k8simg.model.credential import cloud_cluster_name

LB_PREFIX = "kube_service_"
FIP_PREFIX = "Floating IP for Kubernetes external service "
SG_PREFIX = "Security Group for "
CSI_CLUSTER_KEY = "cinder.csi.openstack.org/cluster"
INGRESS = ("ingress-nginx", "ingress-nginx-controller")  # the add-on's Service


def service_lb_name(cluster: str, namespace: str, service: str) -> str:
    """The name the cloud controller gives a Service's load balancer."""
    return f"{LB_PREFIX}{cluster}_{namespace}_{service}"


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


@dataclass(frozen=True)
class Ingress:
    """ingress-nginx's load balancer as the cloud controller made it, and its floating IP
    (None until it has one)."""

    load_balancer: object
    floating_ip: object | None

    @property
    def address(self) -> str | None:
        """Where clients reach the cluster's ingress: the floating IP (None until it has
        one; the load balancer's VIP is on the cluster's private subnet)."""
        if self.floating_ip is not None:
            return self.floating_ip.floating_ip_address
        return None


def ingress(s: Scope) -> Ingress | None:
    """ingress-nginx's load balancer (and floating IP) in the cluster's project, or None
    before the cloud controller has made it. The floating IP is the one described as the
    controller describes it (ensureFloatingIP), else the one on the load balancer's VIP port."""
    cluster = cluster_name(s)
    name = service_lb_name(cluster, *INGRESS)
    lb = next(iter(s.conn.load_balancer.load_balancers(name=name, project_id=s.project_id)),
              None)
    if lb is None:
        return None
    described = f"{FIP_PREFIX}{'/'.join(INGRESS)} from cluster {cluster}"
    fips = list(s.conn.network.ips(project_id=s.project_id, description=described))
    if not fips and getattr(lb, "vip_port_id", None):
        fips = list(s.conn.network.ips(port_id=lb.vip_port_id, project_id=s.project_id))
    return Ingress(lb, fips[0] if fips else None)
