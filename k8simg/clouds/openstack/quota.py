"""What the cluster still needs from the project's quotas, and whether they cover it. The
arithmetic (:func:`needed`, :func:`shortfalls`) is pure; :func:`quota_problems` asks the cloud
what exists and what the quotas allow."""

from types import SimpleNamespace

from k8simg.clouds.base import Problem
from k8simg.clouds.openstack import made
from k8simg.clouds.openstack.compute import Flavor
from k8simg.clouds.openstack.connect import Scope
from k8simg.clouds.openstack.loadbalancer import lb_name
from k8simg.model.config import ClusterConfig
from k8simg.model.plan import Node

Need = dict[tuple[str, str], int]  # (service, quota name) -> how many more


def needed(cfg: ClusterConfig, new: list[Node], flavors: dict[str, Flavor], *,
           volumes_present: set[str], floating_ips_present: int,
           load_balancers_present: int = 0) -> Need:
    """What creating the ``new`` nodes (and the cluster's load balancers and floating IPs)
    takes.

    :param flavors: by flavor name, as the cloud has them.
    :param volumes_present: names of the cluster's volumes that exist already.
    :param floating_ips_present: how many of the cluster's floating IPs exist already (of
        :func:`floating_ips_wanted`).
    :param load_balancers_present: how many of its load balancers exist already (of
        :data:`LOAD_BALANCERS`).
    """
    new_vols = [n for n in new if cfg.volume_gb(n.role)
                and f"{n.name}-storage" not in volumes_present]
    return {
        ("compute", "instances"): len(new),
        ("compute", "cores"): sum(flavors[cfg.flavor(n.role)].vcpus for n in new),
        ("compute", "ram"): sum(flavors[cfg.flavor(n.role)].ram for n in new),
        ("volume", "volumes"): len(new_vols),
        ("volume", "gigabytes"): sum(cfg.volume_gb(n.role) for n in new_vols),
        ("network", "floating_ips"): max(0, len(floating_ips_wanted(cfg))
                                       - floating_ips_present),
        ("load_balancer", "load_balancers"): max(0, len(LOAD_BALANCERS)
                                               - load_balancers_present),
    }


# What the cluster's load balancers and floating IPs are for: its own (the API's, the
# bastion's) and those the cloud controller makes for ingress-nginx's Service.
LOAD_BALANCERS = ("the API's", "ingress-nginx's Service")


def floating_ips_wanted(cfg: ClusterConfig) -> list[str]:
    return ["the API's", *(["the bastion's"] if cfg.bastion.enabled else []),
            "ingress-nginx's Service"]


def limit_and_use(qs, name: str) -> tuple[int, int]:
    """``(limit, in use)`` from a Nova/Cinder quota set (with usage) or a Neutron quota
    (with details); a limit of -1 is unlimited."""
    value = getattr(qs, name, None)
    if isinstance(value, dict):  # neutron details, or nova with usage
        return int(value.get("limit", -1)), int(value.get("used", value.get("in_use", 0)))
    usage = getattr(qs, "usage", None) or {}
    return int(value if value is not None else -1), int(usage.get(name, 0))


def shortfalls(need: Need, quotas: dict[str, object],
               what: dict[str, list[str]] | None = None) -> list[Problem]:
    """``quota.<name>`` problems for what the project's ``quotas`` (by service) do not cover.

    :param what: by quota name, what its resources are for (said with a shortfall).
    """
    problems = []
    for (svc, name), amount in need.items():
        if amount <= 0 or svc not in quotas:
            continue
        limit, used = limit_and_use(quotas[svc], name)
        if limit >= 0 and used + amount > limit:
            why = f" (of {', '.join(what[name])})" if what and name in what else ""
            problems.append((f"quota.{name}", f"the cluster needs {amount} more{why}, the "
                             f"project has {max(0, limit - used)} left (limit {limit}, in use "
                             f"{used})"))
    return problems


def octavia_quota(s: Scope, pid: str, used: int):
    """The project's load-balancer quota with its use, ``used`` (Octavia gives no usage: the
    caller counts the project's load balancers); None when Octavia does not let this user
    read it."""
    from openstack import exceptions as osx

    lbs = s.conn.load_balancer
    try:
        limit = lbs.get_quota(pid).load_balancers
        if limit is None:  # the project has none of its own: the cloud's default
            limit = lbs.get_quota_default().load_balancers
    except osx.SDKException:
        return None
    return SimpleNamespace(load_balancers={"limit": -1 if limit is None else int(limit),
                                           "used": used})


def quota_problems(s: Scope, nodes: list[Node], flavors: dict[str, Flavor]) -> list[Problem]:
    """Whether the project's quotas cover the nodes of ``nodes`` that do not exist yet, the
    cluster's load balancers and floating IPs, and those the cloud controller will make for
    ingress-nginx's Service."""
    conn = s.conn
    pid = conn.current_project_id
    existing = {srv.name for srv in conn.compute.servers(tags=s.tag)}
    fips = [ip for ip in conn.network.ips(project_id=pid)
            if s.owns(ip) and ip.description in (s.describe("api"), s.describe("bastion"))]
    project_lbs = list(conn.load_balancer.load_balancers(project_id=pid))
    lbs = [lb for lb in project_lbs if lb.name == lb_name(s.name) and s.tag in (lb.tags or ())]
    ingress = made.ingress(s)
    if ingress is not None:
        lbs.append(ingress.load_balancer)
        fips += [ingress.floating_ip] if ingress.floating_ip is not None else []
    need = needed(s.cfg, [n for n in nodes if n.name not in existing], flavors,
                  volumes_present={v.name for v in s.volumes()},
                  floating_ips_present=len(fips), load_balancers_present=len(lbs))
    quotas = {"compute": conn.compute.get_quota_set(pid, usage=True),
              "volume": conn.block_storage.get_quota_set(pid, usage=True),
              "network": conn.network.get_quota(pid, details=True)}
    if (lb_quota := octavia_quota(s, pid, used=len(project_lbs))) is not None:
        quotas["load_balancer"] = lb_quota
    return shortfalls(need, quotas, {"floating_ips": floating_ips_wanted(s.cfg),
                                     "load_balancers": list(LOAD_BALANCERS)})
