"""An Ignition 3.3.0 config, built as data and serialised once.

Contents travel as data URLs. Each file is stored in whichever encoding is smaller: plain
percent-encoded text (PEM barely compresses, and base64 would grow it by a third) or gzip
plus base64 (manifests shrink about threefold). Ignition 2.14 decompresses per file, never the
config as a whole.
"""

import base64
import gzip
import json
import urllib.parse
from dataclasses import dataclass, field

SPEC_VERSION = "3.3.0"
DEFAULT_FILE_MODE = 0o644

# Characters a data URL may carry unescaped (RFC 2397 over RFC 3986 "uric").
_SAFE = "/+=:;,._-~!$&'()*@"


def data_url(data: bytes, compress: bool = True) -> tuple[str, str | None]:
    """The smallest data URL for ``data`` and its Ignition ``compression`` value."""
    plain = "data:," + urllib.parse.quote(data, safe=_SAFE)
    if not compress:
        return plain, None
    # mtime=0: the same input always gives the same bytes (golden files, idempotent deploys).
    gz = "data:;base64," + base64.b64encode(gzip.compress(data, 9, mtime=0)).decode()
    return (gz, "gzip") if len(gz) < len(plain) else (plain, None)


@dataclass
class Ignition:
    """The pieces of one node's config; :meth:`to_dict` gives the document."""

    files: list[dict] = field(default_factory=list)
    directories: list[dict] = field(default_factory=list)
    filesystems: list[dict] = field(default_factory=list)
    units: list[dict] = field(default_factory=list)
    users: list[dict] = field(default_factory=list)

    def file(self, path: str, data: str | bytes, mode: int = 0o644, compress: bool = True,
             overwrite: bool = False) -> None:
        """Add a file. Defaults are left out of the document: every byte counts against Nova's
        limit, and Ignition's own defaults (mode 0644, no overwrite) are what we want for
        files the image does not already have.
        """
        if any(f["path"] == path for f in self.files):
            raise ValueError(f"{path} added twice")
        if isinstance(data, str):
            data = data.encode()
        source, compression = data_url(data, compress)
        contents = {"source": source}
        if compression:
            contents["compression"] = compression
        entry: dict = {"path": path}
        if mode != DEFAULT_FILE_MODE:
            entry["mode"] = mode
        if overwrite:
            entry["overwrite"] = True
        entry["contents"] = contents
        self.files.append(entry)

    def remote_file(self, path: str, url: str, sha512: str, mode: int = 0o644) -> None:
        """Add a file Ignition fetches from ``url`` and refuses unless its SHA-512 is
        ``sha512`` (hex)."""
        if any(f["path"] == path for f in self.files):
            raise ValueError(f"{path} added twice")
        entry: dict = {"path": path}
        if mode != DEFAULT_FILE_MODE:
            entry["mode"] = mode
        entry["contents"] = {"source": url, "verification": {"hash": f"sha512-{sha512}"}}
        self.files.append(entry)

    def directory(self, path: str, mode: int = 0o755) -> None:
        self.directories.append({"path": path, "mode": mode})

    def unit(self, name: str, contents: str | None = None, enabled: bool | None = True,
             dropins: dict[str, str] | None = None) -> None:
        """Add a systemd unit, or (without ``contents``) enable one the image provides.

        Ignition enables units by writing a preset file; the image's initramfs applies it to
        the units it names on first boot (k8simg-ignition-presets).
        """
        u: dict = {"name": name}
        if enabled is not None:
            u["enabled"] = enabled
        if contents is not None:
            u["contents"] = contents
        if dropins:
            u["dropins"] = [{"name": n, "contents": c} for n, c in dropins.items()]
        self.units.append(u)

    def filesystem(self, device: str, fmt: str, label: str, path: str | None = None) -> None:
        fs = {"device": device, "format": fmt, "label": label, "wipeFilesystem": False}
        if path:
            fs["path"] = path
        self.filesystems.append(fs)

    def user(self, name: str, ssh_keys: list[str], groups: list[str]) -> None:
        self.users.append({"name": name, "sshAuthorizedKeys": ssh_keys, "groups": groups})

    def to_dict(self) -> dict:
        doc: dict = {"ignition": {"version": SPEC_VERSION}}
        storage = {k: v for k, v in (("filesystems", self.filesystems),
                                     ("directories", self.directories),
                                     ("files", self.files)) if v}
        if storage:
            doc["storage"] = storage
        if self.units:
            doc["systemd"] = {"units": self.units}
        if self.users:
            doc["passwd"] = {"users": self.users}
        return doc


def dumps(doc: dict) -> bytes:
    """The compact serialisation that travels as user_data (no whitespace to pay for)."""
    return json.dumps(doc, separators=(",", ":"), sort_keys=False).encode()
