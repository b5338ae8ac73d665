"""Upstream facts (tests/conformance/data: each file says where it was read, in its
``source``) and the checks that hold k8simg's rendered configs against them: component flags,
configuration fields, what kubeadm sets, CoreDNS's Corefile, flannel's net-conf."""

import json
import re
from functools import cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


@cache
def facts(name: str) -> dict:
    """The facts file ``data/<name>.json``."""
    return json.loads((DATA / f"{name}.json").read_text())


# -- CoreDNS ---------------------------------------------------------------------------------

def corefile_blocks(text: str) -> list[tuple[str, list[str], list[str]]]:
    """``(directive, arguments, block options)`` of every plugin line in every server block."""
    out: list[tuple[str, list[str], list[str]]] = []
    depth, current = 0, None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        opens = words[-1] == "{"
        if opens:
            words = words[:-1]
        if line == "}":
            depth -= 1
            current = None if depth <= 1 else current
            continue
        if depth == 0:  # a server block's zones
            depth += 1 if opens else 0
            continue
        if depth == 1:
            current = (words[0], words[1:], [])
            out.append(current)
        elif depth == 2 and current is not None:
            current[2].append(words[0])
        depth += 1 if opens else 0
    return out


def corefile_problems(text: str, version: str) -> list[str]:
    """Every directive CoreDNS ``version`` does not compile in, and every block option its
    plugin does not parse."""
    f = facts(f"coredns-{version}")
    problems = []
    for directive, _args, options in corefile_blocks(text):
        if directive not in f["directives"]:
            problems.append(f"CoreDNS {version} has no plugin {directive!r}")
            continue
        known = f["options"].get(directive)
        if known is None:
            continue  # a plugin whose options were not read: not guessed
        for option in options:
            if option not in known:
                problems.append(f"CoreDNS {version}: plugin {directive!r} has no option "
                                f"{option!r} (it has: {', '.join(known) or 'none'})")
    return problems


# -- flannel ---------------------------------------------------------------------------------

def netconf_problems(conf: dict, version: str) -> list[str]:
    """Every net-conf.json key flannel ``version`` does not read (Go's JSON matching: the key
    case-insensitively, unknown keys silently ignored: which is why a typo must be caught
    here)."""
    f = facts(f"flannel-{version}")
    known = {k.lower() for k in f["net_conf_keys"]}
    problems = [f"flannel {version}: net-conf.json has no key {k!r}" for k in conf
                if k.lower() not in known]
    backend = conf.get("Backend") or {}
    kind = backend.get("Type", "udp")
    keys = f["backends"].get(kind)
    if keys is None:
        problems.append(f"flannel {version}: no backend {kind!r}")
    else:
        problems += [f"flannel {version}: the {kind} backend has no key {k!r}"
                     for k in backend if k.lower() not in {x.lower() for x in keys}]
    return problems


# -- Kubernetes component configs ------------------------------------------------------------

GO_DURATION = re.compile(r"^-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$|^0$")
INTEGER = {"int", "int32", "int64", "uint", "uint32", "uint64"}


def _type_problem(value, kind: str) -> str | None:
    """Why ``value`` is not of the JSON ``kind`` the Go type reads, or None."""
    if kind == "string":
        ok = isinstance(value, str)
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind in INTEGER:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind in ("float", "float32", "float64"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind == "duration":
        ok = isinstance(value, str) and bool(GO_DURATION.match(value))
    elif kind == "quantity":
        ok = isinstance(value, str | int)
    elif kind.startswith("map["):
        ok = isinstance(value, dict)
    elif kind.startswith("[]"):
        ok = isinstance(value, list) and all(_type_problem(v, kind[2:]) is None for v in value)
    elif kind == "object":
        ok = isinstance(value, dict)
    else:
        return None  # a type these facts name and this check does not read: not guessed
    return None if ok else f"is {type(value).__name__} {value!r}, the field is {kind}"


def config_problems(doc: dict, version: str, kind: str) -> list[str]:
    """Every field of ``doc`` (a ``kind`` such as KubeletConfiguration) that release
    ``version`` does not define, whose value is not of its type, not one of its values, or
    that is deprecated."""
    fields = facts(f"k8s-{version}-node")[kind]["fields"]
    problems: list[str] = []

    def walk(value, path: str) -> None:
        spec = fields.get(path)
        if spec is None:
            problems.append(f"{kind} {version} has no field {path!r}")
            return
        if why := _type_problem(value, spec["type"]):
            problems.append(f"{kind} {version}: {path} {why}")
            return
        if "enum" in spec and value not in spec["enum"]:
            problems.append(f"{kind} {version}: {path} is {value!r}, one of "
                            f"{', '.join(map(str, spec['enum']))} expected")
        if spec.get("deprecated"):
            problems.append(f"{kind} {version}: {path} is deprecated ({spec['deprecated']})")
        if spec["type"] == "object":
            for k, v in value.items():
                walk(v, f"{path}.{k}")
        elif spec["type"] == "[]object":
            for item in value:
                for k, v in item.items():
                    walk(v, f"{path}[].{k}")

    for key, value in doc.items():
        walk(value, key)
    return problems


# -- Kubernetes component flags --------------------------------------------------------------

def flags_of(argv: list[str]) -> dict[str, str | None]:
    """``--name=value`` / ``--name`` arguments by name (dashes: the components read ``_`` as
    ``-``), in order."""
    out: dict[str, str | None] = {}
    for arg in argv:
        if arg.startswith("-"):
            name, eq, value = arg.lstrip("-").partition("=")
            out[name.replace("_", "-")] = value if eq else None
    return out


def component_flags(component: str, version: str) -> dict[str, dict]:
    """The flags ``component`` defines in release ``version``."""
    if component == "kubelet":
        return facts(f"k8s-{version}-node")["kubelet"]["flags"]
    return facts(f"k8s-{version}-control-plane")[component]["flags"]


def flag_problems(component: str, argv: list[str], version: str,
                  help_deprecated_kept: dict[str, str]) -> list[str]:
    """Every flag of ``argv`` that ``component`` of release ``version`` does not define or
    has deprecated (``MarkDeprecated``: it warns, and goes); one whose help only says
    "DEPRECATED" must be in ``help_deprecated_kept`` (flag -> why it is kept)."""
    known = component_flags(component, version)
    problems = []
    for name in flags_of(argv):
        spec = known.get(name)
        if spec is None:
            problems.append(f"{component} {version} has no flag --{name}")
        elif spec.get("deprecated"):
            problems.append(f"{component} {version}: --{name} is deprecated: "
                            f"{spec['deprecated']}")
        elif spec.get("usage_deprecated_text") and name not in help_deprecated_kept:
            problems.append(f"{component} {version}: --{name}'s help says "
                            f"{spec['usage_deprecated_text']!r}, and it is not in the table "
                            f"of flags kept with a reason")
    return problems


def controller_problems(value: str, version: str) -> list[str]:
    """``--controllers``' names that release ``version`` does not know, or knows only as an
    alias of another name."""
    c = facts(f"k8s-{version}-control-plane")["kube-controller-manager"]["controllers"]
    problems = []
    for raw in value.split(","):
        name = raw.lstrip("-")
        if name == "*" or name in c["names"]:
            continue
        if name in c["aliases"]:
            problems.append(f"kube-controller-manager {version}: {name!r} is an alias of "
                            f"{c['aliases'][name]!r}")
        else:
            problems.append(f"kube-controller-manager {version}: no controller {name!r}")
    return problems


def kubeadm_gaps(component: str, argv: list[str], version: str,
                 differences: dict[str, str]) -> list[str]:
    """Every flag kubeadm sets on ``component`` for the same inputs that ``argv`` lacks and
    the table of deliberate ``differences`` (flag -> reason) does not list; and every entry
    of the table that is no difference (the flag is set after all, or kubeadm sets no such
    flag): the table says only what is true."""
    kubeadm = {k for k in facts(f"k8s-{version}-kubeadm")[component] if not k.startswith("_")}
    have = set(flags_of(argv))
    gaps = [f"kubeadm {version} sets --{f} on {component}; k8simg does not, and the table "
            f"of deliberate differences does not say why" for f in sorted(kubeadm - have)
            if f not in differences]
    gaps += [f"the table of differences lists {component} --{f}, which "
             + ("k8simg sets" if f in have else f"kubeadm {version} does not set")
             for f in sorted(differences) if f in have or f not in kubeadm]
    return gaps


# -- etcd ------------------------------------------------------------------------------------

def etcd_flag_problems(argv: list[str], line: tuple[int, int]) -> list[str]:
    """What an etcd of ``line`` would warn about or refuse in ``argv``. From 3.6 on
    (data/etcd-3.6.json): a flag renamed, moved to a feature gate, removed or deprecated, and
    a feature gate not among those the moved flags became. Before 3.6: the 3.6 names, which
    that line does not know (the lines' own binaries run the unit in the etcd tests)."""
    known = facts("etcd-3.6")
    flags = flags_of(argv)
    out = []
    if line >= (3, 6):
        for name in flags:
            if name in known["renamed"]:
                out.append(f"etcd {line[0]}.{line[1]}: --{name} is renamed "
                           f"--{known['renamed'][name]} (the old name goes in 3.7)")
            elif name in known["moved_to_feature_gates"]:
                out.append(f"etcd {line[0]}.{line[1]}: --{name} is the feature gate "
                           f"{known['moved_to_feature_gates'][name]} now")
            elif name in known["removed"] or name in known["deprecated"]:
                out.append(f"etcd {line[0]}.{line[1]}: --{name} is "
                           + ("removed" if name in known["removed"] else "deprecated"))
        for gate in (flags.get("feature-gates") or "").split(","):
            if gate and gate.split("=")[0] not in known["gates_of_moved_flags"]:
                out.append(f"etcd {line[0]}.{line[1]}: no feature gate {gate.split('=')[0]!r} "
                           "known here")
    else:
        newer = set(known["renamed"].values()) | {"feature-gates"}
        out += [f"etcd {line[0]}.{line[1]} has no flag --{n} (etcd 3.6's name)"
                for n in flags if n in newer]
    return out
