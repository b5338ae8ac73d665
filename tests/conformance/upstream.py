"""Upstream facts (tests/conformance/data: each file says where it was read, in its
``source``) and the checks that hold k8simg's rendered configs against them: component flags,
configuration fields, what kubeadm sets, CoreDNS's Corefile, flannel's net-conf."""

import json
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
