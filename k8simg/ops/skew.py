"""Kubernetes' version skew policy, as the upgrade applies it before touching anything: the
image must carry the release ``cluster.yaml`` names, a minor version is never skipped, and a
downgrade is refused unless asked for. Kubelets never get ahead of the API servers because the
upgrade replaces masters (and dedicated etcd members) before any worker.

The release the cluster runs is what ``state.json`` recorded when a deploy or an upgrade last
finished (a cluster from before k8simg recorded it is checked against its image only).
"""

from k8simg.clouds.base import ImageFacts


def _minor(version: str) -> tuple[int, int]:
    major, minor, *_ = (int(p) for p in version.split(".")[:2] + ["0"])
    return major, minor


def skew_problems(wanted: str, image: ImageFacts | None, running: str | None, *,
                  allow_downgrade: bool = False) -> list[str]:
    """Every rule the move from ``running`` to ``wanted`` on ``image`` would break."""
    problems = []
    if image is not None and image.has_kubernetes and image.kubernetes_version \
            and image.kubernetes_version != wanted:
        problems.append(f"image {image.name} carries Kubernetes {image.kubernetes_version}, "
                        f"cluster.yaml's kubernetes_version is {wanted}: bake the image for "
                        f"{wanted} (or set kubernetes_version to what the image carries)")
    if running and running != wanted:
        (rmaj, rmin), (wmaj, wmin) = _minor(running), _minor(wanted)
        if (wmaj, wmin) > (rmaj, rmin + 1) or wmaj != rmaj:
            problems.append(f"{running} -> {wanted} skips a minor version: Kubernetes is "
                            f"upgraded one minor version at a time ({rmaj}.{rmin + 1} first)")
        elif tuple(int(p) for p in wanted.split(".")) < tuple(int(p) for p in running.split(".")) \
                and not allow_downgrade:
            problems.append(f"{running} -> {wanted} is a downgrade: refused unless "
                            "--allow-downgrade (and only where that release reads the data "
                            "the newer one wrote)")
    return problems
