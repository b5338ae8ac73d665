"""What the cluster still needs from the project's quotas, and whether they cover it. The
arithmetic (:func:`needed`, :func:`shortfalls`) is pure; :func:`quota_problems` asks the cloud
what exists and what the quotas allow."""

from k8simg.clouds.base import Problem
from k8simg.clouds.openstack.compute import Flavor
from k8simg.clouds.openstack.connect import Scope
from k8simg.model.config import ClusterConfig
from k8simg.model.plan import Node

Need = dict[tuple[str, str], int]  # (service, quota name) -> how many more


def needed(cfg: ClusterConfig, new: list[Node], flavors: dict[str, Flavor], *,
           volumes_present: set[str], floating_ips_present: int) -> Need:
    """What creating the ``new`` nodes (and the cluster's floating IPs) takes.

    :param flavors: by flavor name, as the cloud has them.
    :param volumes_present: names of the cluster's volumes that exist already.
    :param floating_ips_present: how many of the cluster's floating IPs exist already.
    """
    new_vols = [n for n in new if cfg.volume_gb(n.role)
                and f"{n.name}-storage" not in volumes_present]
    return {
        ("compute", "instances"): len(new),
        ("compute", "cores"): sum(flavors[cfg.flavor(n.role)].vcpus for n in new),
        ("compute", "ram"): sum(flavors[cfg.flavor(n.role)].ram for n in new),
        ("volume", "volumes"): len(new_vols),
        ("volume", "gigabytes"): sum(cfg.volume_gb(n.role) for n in new_vols),
        ("network", "floating_ips"): max(0, (2 if cfg.bastion.enabled else 1)
                                       - floating_ips_present),
    }


def limit_and_use(qs, name: str) -> tuple[int, int]:
    """``(limit, in use)`` from a Nova/Cinder quota set (with usage) or a Neutron quota
    (with details); a limit of -1 is unlimited."""
    value = getattr(qs, name, None)
    if isinstance(value, dict):  # neutron details, or nova with usage
        return int(value.get("limit", -1)), int(value.get("used", value.get("in_use", 0)))
    usage = getattr(qs, "usage", None) or {}
    return int(value if value is not None else -1), int(usage.get(name, 0))


def shortfalls(need: Need, quotas: dict[str, object]) -> list[Problem]:
    """``quota.<name>`` problems for what the project's ``quotas`` (by service) do not cover."""
    problems = []
    for (svc, name), amount in need.items():
        if amount <= 0:
            continue
        limit, used = limit_and_use(quotas[svc], name)
        if limit >= 0 and used + amount > limit:
            problems.append((f"quota.{name}", f"the cluster needs {amount} more, the project "
                             f"has {max(0, limit - used)} left (limit {limit}, in use {used})"))
    return problems


def quota_problems(s: Scope, nodes: list[Node], flavors: dict[str, Flavor]) -> list[Problem]:
    """Whether the project's quotas cover the nodes of ``nodes`` that do not exist yet."""
    conn = s.conn
    pid = conn.current_project_id
    existing = {srv.name for srv in conn.compute.servers(tags=s.tag)}
    fips = [ip for ip in conn.network.ips(project_id=pid)
            if s.owns(ip) and ip.description in (s.describe("api"), s.describe("bastion"))]
    need = needed(s.cfg, [n for n in nodes if n.name not in existing], flavors,
                  volumes_present={v.name for v in s.volumes()},
                  floating_ips_present=len(fips))
    quotas = {"compute": conn.compute.get_quota_set(pid, usage=True),
              "volume": conn.block_storage.get_quota_set(pid, usage=True),
              "network": conn.network.get_quota(pid, details=True)}
    return shortfalls(need, quotas)
