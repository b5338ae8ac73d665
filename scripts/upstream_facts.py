#!/usr/bin/env python3
"""Regenerate tests/conformance/data from upstream sources at a release's tag: the facts are
upstream's, this script is ours. It reads a git mirror (``--git-dir``, e.g. a bare clone of
github.com/coredns/coredns) with ``git show TAG:PATH``; nothing is built or run.

    python scripts/upstream_facts.py coredns --git-dir DIR --tag v1.12.4 > coredns-1.12.4.json
    python scripts/upstream_facts.py flannel --git-dir DIR --tag v0.27.4 > flannel-0.27.4.json

What is read:
- CoreDNS: plugin.cfg (the directives compiled in, in order); for each plugin of
  ``PLUGINS``, the keywords its setup parses inside a block: the ``case`` labels of every
  ``switch c.Val() {`` in the plugin's Go files (string constants resolved).
- flannel: the fields of ``Config`` in pkg/subnet/config.go (net-conf.json's keys) and of
  the vxlan backend's config struct (pkg/backend/vxlan/vxlan.go).
"""

import argparse
import json
import re
import subprocess
import sys

PLUGINS = ("errors", "health", "ready", "kubernetes", "prometheus", "forward", "cache", "loop",
           "reload", "loadbalance", "log", "hosts")


def git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True,
                          capture_output=True, text=True).stdout


def block_keywords(go: str, constants: dict[str, str]) -> list[str]:
    """The labels of each ``switch c.Val() {`` (the keyword of a block's line; switches on a
    keyword's own arguments are written otherwise and are not read), constants resolved."""
    out: list[str] = []
    for sw in re.finditer(r"switch\s+c\.Val\(\)\s*\{", go):
        depth, i = 1, sw.end()
        while i < len(go) and depth > 0:
            if go[i] == "{":
                depth += 1
            elif go[i] == "}":
                depth -= 1
            elif depth == 1 and re.match(r"\bcase\s", go[i:i + 5]) and go[i - 1] in " \t\n":
                labels = go[i + 5:go.index(":", i)]
                for label in (x.strip() for x in labels.split(",")):
                    value = label.strip('"') if label.startswith('"') else constants.get(label)
                    if value and value not in out:
                        out.append(value)
            i += 1
    return out


def string_constants(go: str) -> dict[str, str]:
    """``Name = "value"`` constants of a Go file."""
    return dict(re.findall(r'^\s*(\w+)\s*(?:string\s*)?=\s*"([^"]*)"', go, re.M))


def coredns(git_dir: str, tag: str) -> dict:
    commit = git(git_dir, "rev-parse", f"{tag}^{{commit}}").strip()
    cfg = git(git_dir, "show", f"{tag}:plugin.cfg")
    directives, packages = [], {}
    for line in cfg.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, pkg = line.partition(":")
            directives.append(name)
            packages[name] = pkg
    options = {}
    for name in PLUGINS:
        folder = packages[name].rsplit("/", 1)[-1]  # "metrics", or a full import path
        files = [p for p in git(git_dir, "ls-tree", "--name-only", f"{tag}:plugin/{folder}")
                 .split() if p.endswith(".go") and not p.endswith("_test.go")]
        sources = [git(git_dir, "show", f"{tag}:plugin/{folder}/{f}") for f in files]
        constants = {k: v for go in sources for k, v in string_constants(go).items()}
        found: list[str] = []
        for go in sources:
            found += [k for k in block_keywords(go, constants) if k not in found]
        options[name] = found
    return {"source": {"repo": "github.com/coredns/coredns", "ref": tag, "commit": commit,
                       "files": ["plugin.cfg", *(f"plugin/{p}/*.go" for p in PLUGINS)],
                       "by": "scripts/upstream_facts.py"},
            "directives": directives, "options": options}


def struct_fields(go: str, struct: str) -> list[str]:
    """A Go struct's JSON keys: the json tag's name, else the field's name."""
    body = re.search(rf"type\s+{struct}\s+struct\s*\{{(.*?)\n\}}", go, re.S)
    if body is None:
        raise SystemExit(f"no struct {struct}")
    keys = []
    for line in body.group(1).splitlines():
        m = re.match(r"\s*([A-Z]\w*)\s+[^\s`]+(?:\s+`json:\"([^\",]*)[^`]*`)?", line)
        if m and m.group(2) != "-":
            keys.append(m.group(2) or m.group(1))
    return keys


def flannel(git_dir: str, tag: str) -> dict:
    commit = git(git_dir, "rev-parse", f"{tag}^{{commit}}").strip()
    config = git(git_dir, "show", f"{tag}:pkg/subnet/config.go")
    vxlan = git(git_dir, "show", f"{tag}:pkg/backend/vxlan/vxlan.go")
    return {"source": {"repo": "github.com/flannel-io/flannel", "ref": tag, "commit": commit,
                       "files": ["pkg/subnet/config.go", "pkg/backend/vxlan/vxlan.go"],
                       "by": "scripts/upstream_facts.py"},
            "net_conf_keys": struct_fields(config, "Config"),
            "backends": {"vxlan": ["Type", *struct_fields(vxlan, "VXLANConfig")]}}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["coredns", "flannel"])
    p.add_argument("--git-dir", required=True)
    p.add_argument("--tag", required=True)
    a = p.parse_args(argv)
    data = {"coredns": coredns, "flannel": flannel}[a.what](a.git_dir, a.tag)
    json.dump(data, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
