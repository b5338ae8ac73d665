"""Reading rendered Ignition configs back: decoded files, units, Kubernetes objects."""

import json
import re
from pathlib import Path

import yaml

from k8simg.ignition.digest import decode_source
from k8simg.ignition.image import image_files
from k8simg.ignition.render import ADDON_VALUES


def files(doc: dict) -> dict[str, tuple[int, bytes]]:
    """path -> (mode, content) of every file in the config (what a remote one is, Ignition
    fetches: see :func:`remote_files`)."""
    return {f["path"]: (f.get("mode", 0o644), decode_source(f["contents"]))
            for f in doc.get("storage", {}).get("files", [])
            if f["contents"]["source"].startswith("data:")}


def remote_files(doc: dict) -> dict[str, tuple[int, str, str]]:
    """path -> (mode, URL, verification hash) of every file Ignition fetches."""
    return {f["path"]: (f.get("mode", 0o644), f["contents"]["source"],
                        f["contents"]["verification"]["hash"])
            for f in doc.get("storage", {}).get("files", [])
            if not f["contents"]["source"].startswith("data:")}


def node_view(doc: dict, kubernetes_version: str, etcd_version: str | None = None
              ) -> dict[str, tuple[int, bytes]]:
    """What the node's filesystem holds after first boot: the image's files (of an image
    carrying ``etcd_version``, default the release's) under the config's."""
    view = {p: (m, t.encode())
            for p, (m, t) in image_files(kubernetes_version, etcd_version).items()}
    view.update(files(doc))
    return view


def enabled_units(doc: dict) -> list[str]:
    return [u["name"] for u in doc.get("systemd", {}).get("units", []) if u.get("enabled")]


def unit_text(doc: dict, name: str, kubernetes_version: str, etcd_version: str | None = None
              ) -> str:
    """A unit's contents, whether the config carries it or the image does (an image carrying
    ``etcd_version``, default the release's)."""
    inline = next((u.get("contents") for u in doc.get("systemd", {}).get("units", [])
                   if u["name"] == name), None)
    if inline:
        return inline
    return node_view(doc, kubernetes_version, etcd_version)[
        f"/etc/systemd/system/{name}"][1].decode()


def exec_start(unit: str) -> list[str]:
    """The command a unit (or a drop-in) runs: its last non-empty ``ExecStart=`` (an empty
    one resets the list, as systemd reads it), continuation lines joined."""
    import shlex
    text = unit.replace("\\\n", " ")
    commands = [ln.removeprefix("ExecStart=") for ln in text.splitlines()
                if ln.startswith("ExecStart=")]
    return shlex.split([c for c in commands if c.strip()][-1])


def env_values(doc: dict, path: str) -> dict[str, str]:
    """The variables of an EnvironmentFile in the config."""
    return parse_env(files(doc)[path][1].decode())


def parse_env(text: str) -> dict[str, str]:
    """The variables of an EnvironmentFile's text."""
    import shlex
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        out[key] = " ".join(shlex.split(value))
    return out


def etcd_command(doc: dict, root: Path, node, kubernetes_version: str,
                 etcd_version: str | None = None, etcd: str = "etcd") -> list[str]:
    """The image's etcd unit's command for ``doc``'s node, its paths rebased under ``root``
    (and its metrics listener on the node's address: members sharing this machine's loopback
    each need their own)."""
    unit = unit_text(doc, "k8simg-etcd.service", kubernetes_version, etcd_version)
    return [etcd] + [a.replace("/etc/kubernetes/pki", f"{root}/etc/kubernetes/pki")
                     .replace("/var/lib/etcd", f"{root}/var/lib/etcd")
                     .replace("//127.0.0.1:2381", f"//{node.address}:2381")
                     for a in exec_start(unit)[1:]]


def kube_objects(doc: dict, kubernetes_version: str | None = None) -> list[tuple[str, dict]]:
    """Every Kubernetes object in the config (static pods, add-on values) with its file;
    with ``kubernetes_version``, also the image's add-on manifests the config applies."""
    out = []
    view = node_view(doc, kubernetes_version) if kubernetes_version else files(doc)
    for path, (_, data) in view.items():
        if (path.startswith("/etc/kubernetes/manifests/") or path == ADDON_VALUES
                or path.startswith("/usr/share/k8simg/addons/")):
            out += [(path, o) for o in yaml.safe_load_all(data) if o]
    return out


PEM_RE = re.compile(rb"-----BEGIN ([A-Z ]+)-----\n.*?-----END \1-----\n", re.S)


def normalised(doc: dict) -> str:
    """A stable, reviewable view of a config for golden files.

    File contents are decoded; PEM blocks (which change with every key) become placeholders;
    the add-on stream becomes one YAML document per object.
    """
    view = json.loads(json.dumps(doc))
    for f in view.get("storage", {}).get("files", []):
        data = decode_source(f["contents"])
        data = PEM_RE.sub(lambda m: b"<" + m.group(1) + b">\n", data)
        data = re.sub(rb"(certificate-authority-data|client-certificate-data|client-key-data): \S+",
                      rb"\1: <base64>", data)
        data = re.sub(rb"ssh-ed25519 [A-Za-z0-9+/=]+", rb"ssh-ed25519 <public key>", data)
        text = data.decode()
        if f["path"] == ADDON_VALUES:
            text = yaml.safe_dump_all([o for o in yaml.safe_load_all(text) if o], sort_keys=False)
        f["contents"] = {"compression": f["contents"].get("compression"), "text": text}
    return yaml.dump(view, Dumper=_LiteralDumper, sort_keys=False, width=100, allow_unicode=True)


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so golden diffs read like the files themselves."""


def _str(dumper, value):
    style = "|" if "\n" in value and not value.startswith(" ") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str)


def materialise(doc: dict, root: Path) -> None:
    """Write a config's files under ``root`` as Ignition would under /."""
    for path, (mode, data) in files(doc).items():
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        dest.chmod(mode)
