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
