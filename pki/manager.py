"""The cluster PKI on disk: create what is missing, check what exists, renew, report expiry.

Layout, as kubeadm's ``/etc/kubernetes/pki``::

    ca.crt ca.key front-proxy-ca.* front-proxy-client.* apiserver-kubelet-client.*
    apiserver-etcd-client.* sa.key sa.pub etcd/ca.* etcd/healthcheck-client.*
    ssh/bastion_host_ed25519_key{,.pub}           the bastion's SSH host key (pinned)
    etcd-snapshot.key                           the key etcd snapshots are encrypted with
                                                (AES-256, never on a node)
    kubeconfig/<identity>.*                     client identities of the kubeconfigs
    nodes/<node>/apiserver.*  nodes/<node>/etcd/{server,peer}.*  nodes/<node>/kubelet-client.*

Nothing is ever overwritten by :meth:`Pki.ensure`; every file is written atomically and every
key 0600.
"""

import base64
import datetime as dt
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from k8simg.errors import PkiError
from k8simg.fsutil import atomic_write, atomic_write_all
from k8simg.pki import certs as table
from k8simg.pki.certs import CertInstance, PkiContext
from k8simg.pki.keys import (
    KeyFactory,
    PrivateKey,
    generate_key,
    key_pem,
    load_key,
    public_pem,
    same_public_key,
)
from k8simg.pki.kubeconfig import kubeconfig
from k8simg.pki.x509 import Subject, cert_sans, issue, signed_by

BASTION_HOST_KEY = "ssh/bastion_host_ed25519_key"
# 32 random bytes, base64: the key k8simg encrypts the cluster's etcd snapshots with on the
# operator's machine. Not derived from a CA key, so a CA rotation leaves old snapshots
# readable; never in a node's config.
SNAPSHOT_KEY = "etcd-snapshot.key"
SNAPSHOT_KEY_BYTES = 32

Clock = Callable[[], dt.datetime]
Progress = Callable[[str], None]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def pair_paths(root: Path, path: str) -> tuple[Path, Path]:
    """The one place that knows the ``<dir>/<name>.crt|.key`` convention."""
    return root / f"{path}.crt", root / f"{path}.key"


@dataclass
class Loaded:
    cert: x509.Certificate | None = None
    key: PrivateKey | None = None


@dataclass
class EnsureResult:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # exist, but lack SANs the plan now needs


@dataclass(frozen=True)
class CertRecord:
    """What ``pki show`` and ``pki check-expiration`` print for one certificate."""

    instance: CertInstance
    file: str
    subject: str
    issuer: str
    not_after: dt.datetime
    sans: tuple[str, ...]
    signer: str | None

    def residual(self, now: dt.datetime) -> dt.timedelta:
        return self.not_after - now


class Pki:
    """The PKI of one cluster, rooted at ``root`` (``<cluster>/pki``).

    :param ctx: the cluster-dependent inputs of the table.
    :param clock: injected for deterministic tests.
    :param keygen: injected key factory (tests reuse keys to stay fast).
    """

    def __init__(self, root: Path, ctx: PkiContext, *, clock: Clock = utcnow,
                 keygen: KeyFactory = generate_key, progress: Progress | None = None):
        self.root = Path(root)
        self.ctx = ctx
        self.clock = clock
        self.keygen = keygen
        self.progress = progress or (lambda _msg: None)
        self.algorithm = ctx.config.pki.key_algorithm

    # -- reading -----------------------------------------------------------------------------

    def paths(self, inst: CertInstance) -> tuple[Path, Path]:
        return pair_paths(self.root, inst.path)

    def _rel(self, p: Path) -> str:
        return str(p.relative_to(self.root))

    def _load(self, inst: CertInstance, problems: list) -> Loaded:
        crt, key = self.paths(inst)
        out = Loaded()
        if crt.exists():
            try:
                out.cert = x509.load_pem_x509_certificate(crt.read_bytes())
            except ValueError as e:
                problems.append((self._rel(crt), f"not a PEM certificate ({e})"))
        if key.exists():
            try:
                out.key = load_key(key.read_bytes())
            except (ValueError, TypeError) as e:
                problems.append((self._rel(key), f"not a usable private key ({e})"))
        if crt.exists() and not key.exists():
            problems.append((self._rel(crt), "certificate without its key"))
        if out.cert and out.key and not same_public_key(out.cert.public_key(), out.key.public_key()):
            problems.append((self._rel(key), f"does not match {crt.name}"))
        return out

    def _check_all(self) -> tuple[dict[str, Loaded], list[tuple[str, str]]]:
        problems: list[tuple[str, str]] = []
        loaded = {}
        for inst in table.instances(self.ctx):
            got = self._load(inst, problems)
            loaded[inst.id] = got
            spec = inst.spec
            if got.cert is None:
                continue
            if spec.is_ca:
                bc = _basic_constraints(got.cert)
                if not (bc and bc.ca):
                    problems.append((self._rel(self.paths(inst)[0]), "is not a CA certificate"))
                continue
            ca = loaded[spec.ca].cert
            ca_file = f"{table.BY_NAME[spec.ca].path}.crt"
            if ca is None:
                problems.append((self._rel(self.paths(inst)[0]), f"its CA {ca_file} is missing"))
            elif not signed_by(got.cert, ca):
                problems.append((self._rel(self.paths(inst)[0]), f"does not chain to {ca_file}"))
        self._check_sa(problems)
        self._check_files(problems)
        self._check_ca_validity(loaded, problems)
        self._check_bastion_host_key(problems)
        self._check_snapshot_key(problems)
        return loaded, problems

    def _files(self) -> list[tuple[Path, bool]]:
        """Every file of the PKI that exists, with whether it is a private key."""
        out = []
        for inst in table.instances(self.ctx):
            crt, key = self.paths(inst)
            out += [(crt, False), (key, True)]
        host = self.bastion_host_key_path
        out += [(self.root / "sa.key", True), (self.root / "sa.pub", False), (host, True),
                (host.with_name(host.name + ".pub"), False), (self.root / SNAPSHOT_KEY, True)]
        return [(p, private) for p, private in out if p.exists() or p.is_symlink()]

    def _check_files(self, problems: list) -> None:
        """Keys readable by anyone but their owner, and files that lead out of the PKI."""
        root = self.root.resolve()
        for path, private in self._files():
            rel = self._rel(path)
            real = path.resolve()
            if not real.is_relative_to(root):
                problems.append((rel, f"leads to {real}, outside the cluster's pki/: k8simg "
                                      "never follows a link out of it; put the file itself "
                                      "there"))
            elif private and path.exists() and path.stat().st_mode & 0o077:
                mode = path.stat().st_mode & 0o777
                problems.append((rel, f"is a private key readable by others (mode "
                                      f"{mode:04o}): chmod 600 {path}"))

    def _check_ca_validity(self, loaded: dict[str, Loaded], problems: list) -> None:
        """A CA that has expired or is not valid yet (nothing it signs verifies)."""
        now = self.clock()
        for inst in table.instances(self.ctx):
            cert = loaded[inst.id].cert
            if not inst.spec.is_ca or cert is None:
                continue
            rel = self._rel(self.paths(inst)[0])
            if now < cert.not_valid_before_utc:
                start = f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M}"
                problems.append((rel, f"is not valid until {start} UTC (this machine's clock, or "
                                      "a CA from the future)"))
            elif now > cert.not_valid_after_utc:
                problems.append((rel, f"expired on {cert.not_valid_after_utc:%Y-%m-%d}: a new "
                                      "CA means new certificates and new nodes for the whole "
                                      "cluster, which k8simg does not automate yet"))

    def _check_bastion_host_key(self, problems: list) -> None:
        key = self.bastion_host_key_path
        pub = key.with_name(key.name + ".pub")
        if key.is_file():
            try:
                serialization.load_ssh_private_key(key.read_bytes(), None)
            except (ValueError, TypeError) as e:
                problems.append((BASTION_HOST_KEY, f"not an OpenSSH private key ({e})"))
        if pub.is_file():
            try:
                kind, data = pub.read_bytes().split()[:2]
                serialization.load_ssh_public_key(kind + b" " + data)
            except (ValueError, TypeError) as e:
                problems.append((BASTION_HOST_KEY + ".pub", f"not an OpenSSH public key ({e})"))

    def _check_snapshot_key(self, problems: list) -> None:
        path = self.root / SNAPSHOT_KEY
        if path.is_file():
            try:
                key = base64.b64decode(path.read_bytes().strip(), validate=True)
            except ValueError:
                key = b""
            if len(key) != SNAPSHOT_KEY_BYTES:
                problems.append((SNAPSHOT_KEY, f"not {SNAPSHOT_KEY_BYTES} bytes in base64"))

    def snapshot_key(self, create: bool = True) -> bytes:
        """The key etcd snapshots are encrypted with; made (0600) when missing and ``create``,
        exclusively: of two runs making it at once, both end up with the one that won.

        :raises PkiError: when the file exists but is not such a key, or is missing and not
            to be made.
        """
        path = self.root / SNAPSHOT_KEY
        problems: list = []
        self._check_snapshot_key(problems)
        if problems:
            raise PkiError(problems)
        if not path.is_file():
            if not create:
                raise PkiError([(SNAPSHOT_KEY, "missing: `k8simg pki init` makes it (every "
                                               "snapshot needs it to be read again)")])
            self.progress("generating the etcd snapshot key")
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                os.fchmod(fd, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(base64.b64encode(os.urandom(SNAPSHOT_KEY_BYTES)) + b"\n")
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, path)  # fails if another run made it first: theirs is kept
                except FileExistsError:
                    pass
            finally:
                os.unlink(tmp)
        return base64.b64decode(path.read_bytes().strip())

    def _check_sa(self, problems: list) -> None:
        key, pub = self.root / "sa.key", self.root / "sa.pub"
        if pub.exists() and not key.exists():
            problems.append(("sa.pub", "public key without sa.key"))
        if key.exists():
            try:
                k = load_key(key.read_bytes())
            except (ValueError, TypeError) as e:
                problems.append(("sa.key", f"not a usable private key ({e})"))
                return
            if pub.exists():
                try:
                    p = serialization.load_pem_public_key(pub.read_bytes())
                except ValueError as e:
                    problems.append(("sa.pub", f"not a PEM public key ({e})"))
                    return
                if not same_public_key(p, k.public_key()):
                    problems.append(("sa.pub", "does not match sa.key"))

    def verify(self) -> list[tuple[str, str]]:
        """Every inconsistency of the PKI on disk, as ``(file, message)``; missing files are not."""
        return self._check_all()[1]

    # -- writing -----------------------------------------------------------------------------

    def _issue(self, inst: CertInstance, key: PrivateKey, signer) -> x509.Certificate:
        cfg = self.ctx.config.pki
        days = cfg.ca_validity_days if inst.spec.is_ca else cfg.cert_validity_days
        return issue(Subject(inst.cn, inst.spec.orgs), inst.spec.usages, key, now=self.clock(),
                     days=days, sans=inst.sans(self.ctx), signer=signer)

    def _write(self, inst: CertInstance, cert: x509.Certificate, key: PrivateKey | None) -> None:
        crt_path, key_path = self.paths(inst)
        if key is not None:  # key first: a crash in between leaves a key that is reused next time
            atomic_write(key_path, key_pem(key), 0o600)
        atomic_write(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def stale_sans(self) -> list[str]:
        """The leaf certificates (instance IDs) whose SANs lack what the definition now asks
        for (an extra API name, a new floating IP); reads only.

        :raises PkiError: listing every inconsistency.
        """
        loaded, problems = self._check_all()
        if problems:
            raise PkiError(problems)
        return [inst.id for inst in table.instances(self.ctx)
                if not inst.spec.is_ca and loaded[inst.id].cert is not None
                and _missing_sans(loaded[inst.id].cert, inst.sans(self.ctx))]

    def renew_outgrown(self, stale: list[str] | None = None, *, also: tuple[str, ...] = (),
                       kubeconfig_dir: Path | None = None) -> list[str]:
        """Renew the certificates whose SANs the definition has outgrown (``stale``: as
        :meth:`stale_sans` or :meth:`ensure` found them; found now when None), every instance
        of their kind, with the names or IDs ``also``; keys kept. Returns the outgrown IDs."""
        stale = self.stale_sans() if stale is None else stale
        names = {s.split("@")[0] for s in stale} | set(also)
        if names:
            self.renew(sorted(names), kubeconfig_dir=kubeconfig_dir)
        return stale

    def ensure(self) -> EnsureResult:
        """Create every missing key and certificate; never touch one that exists.

        A key whose certificate is missing (an interrupted run) is reused.

        :raises PkiError: listing every inconsistency, before anything is written.
        """
        loaded, problems = self._check_all()
        if problems:
            raise PkiError(problems)
        result = EnsureResult()
        for inst in table.instances(self.ctx):
            got = loaded[inst.id]
            if got.cert is not None:
                result.existing.append(inst.id)
                if not inst.spec.is_ca and _missing_sans(got.cert, inst.sans(self.ctx)):
                    result.stale.append(inst.id)
                continue
            self.progress(f"generating {inst.display}")
            new_key = got.key is None
            key = got.key or self.keygen(self.algorithm)
            signer = None
            if not inst.spec.is_ca:
                ca = loaded[inst.spec.ca]
                signer = (ca.cert, ca.key)
            cert = self._issue(inst, key, signer)
            self._write(inst, cert, key if new_key else None)
            loaded[inst.id] = Loaded(cert, key)
            result.created.append(inst.id)
        if self._ensure_sa():
            result.created.append(table.SA_KEY)
        else:
            result.existing.append(table.SA_KEY)
        if self.ctx.config.bastion.enabled:
            (result.created if self._ensure_bastion_host_key() else result.existing).append(
                BASTION_HOST_KEY)
        made = not (self.root / SNAPSHOT_KEY).is_file()
        self.snapshot_key()
        (result.created if made else result.existing).append(SNAPSHOT_KEY)
        return result

    @property
    def bastion_host_key_path(self) -> Path:
        return self.root / BASTION_HOST_KEY

    def _ensure_bastion_host_key(self) -> bool:
        """The bastion's SSH host key: made here so the operator's side can pin it in
        ``known_hosts`` before the bastion has ever booted (no trust on first use)."""
        key_path = self.bastion_host_key_path
        pub_path = key_path.with_name(key_path.name + ".pub")
        if key_path.exists():
            key = serialization.load_ssh_private_key(key_path.read_bytes(), None)
            created = False
        else:
            self.progress("generating the bastion's SSH host key")
            key = ed25519.Ed25519PrivateKey.generate()
            atomic_write(key_path, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption()), 0o600)
            created = True
        if not pub_path.exists():
            pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                serialization.PublicFormat.OpenSSH)
            atomic_write(pub_path, pub + f" {self.ctx.config.name}-bastion\n".encode(), 0o644)
        return created

    def bastion_host_public_key(self) -> str:
        """``ssh-ed25519 AAAA… <cluster>-bastion``."""
        return self.bastion_host_key_path.with_name(
            BASTION_HOST_KEY.rsplit("/", 1)[1] + ".pub").read_text().strip()

    def _ensure_sa(self) -> bool:
        key_path, pub_path = self.root / "sa.key", self.root / "sa.pub"
        created = False
        if not key_path.exists():
            self.progress("generating service-account key pair")
            key = self.keygen(self.algorithm)
            atomic_write(key_path, key_pem(key), 0o600)
            created = True
        else:
            key = load_key(key_path.read_bytes())
        if not pub_path.exists():
            atomic_write(pub_path, public_pem(key), 0o644)
        return created

    def renew(self, names: list[str] | None = None, kubeconfig_dir: Path | None = None
              ) -> list[str]:
        """Reissue leaf certificates from the existing CAs, keeping their keys.

        Subjects and SANs are derived from the table again, so a renewal also picks up a new
        API address. The key is kept, so a renewal is one atomic write per certificate.

        :param names: table names (``apiserver``) or instance ids (``apiserver@node``); all
            leaves when ``None``.
        :param kubeconfig_dir: where the kubeconfigs are: rewritten with the new certificates in
            the same all-or-nothing step (nothing is renewed when one cannot be written).
        :returns: the ids renewed.
        :raises PkiError: for an unknown name, a CA, or an inconsistent PKI.
        :raises OSError: when a file cannot be written (then nothing was changed).
        """
        all_leaves = [i for i in table.instances(self.ctx) if not i.spec.is_ca]
        if names:
            unknown = [n for n in names if n not in table.BY_NAME
                       and n not in {i.id for i in all_leaves}]
            cas = [n for n in names if n in table.BY_NAME and table.BY_NAME[n].is_ca]
            if unknown or cas:
                raise PkiError([(n, "no such certificate") for n in unknown]
                               + [(n, "is a CA: CAs are not renewed in place") for n in cas])
            chosen = [i for i in all_leaves if i.spec.name in names or i.id in names]
        else:
            chosen = all_leaves
        loaded, problems = self._check_all()
        missing = [(i.path + ".crt", "missing: run `k8simg pki init` first")
                   for i in chosen if loaded[i.id].cert is None]
        if problems or missing:
            raise PkiError(problems + missing)
        renewed: dict[str, bytes] = {}
        for inst in chosen:
            self.progress(f"renewing {inst.display}")
            ca = loaded[inst.spec.ca]
            cert = self._issue(inst, loaded[inst.id].key, (ca.cert, ca.key))
            renewed[inst.id] = cert.public_bytes(serialization.Encoding.PEM)
        files = {self.paths(i)[0]: (renewed[i.id], 0o644) for i in chosen}
        if kubeconfig_dir is not None:
            files.update({p: (text, 0o600) for p, text in
                          self._kubeconfigs(kubeconfig_dir, renewed).items()})
        # Every certificate and every kubeconfig carrying one, or none of them.
        atomic_write_all(files)
        return [i.id for i in chosen]

    # -- kubeconfigs -------------------------------------------------------------------------

    def client_credentials(self, name: str = "admin") -> tuple[str, Path, Path, Path]:
        """``(API URL, CA file, certificate file, key file)`` of the kubeconfig identity
        ``name``, as files in the cluster's PKI: a client given these paths writes no copy of
        the key anywhere (the Kubernetes client writes an embedded key to /tmp, and a killed
        process leaves it there).

        :raises PkiError: when the identity's certificate or key is missing.
        """
        inst = next(i for i in table.instances(self.ctx) if i.spec.name == name)
        crt, key = self.paths(inst)
        missing = [(self._rel(p), "missing; run `k8simg pki init`") for p in (crt, key)
                   if not p.exists()]
        if missing:
            raise PkiError(missing)
        return self.kubeconfig_server(inst), self.root / "ca.crt", crt, key

    def kubeconfig_server(self, inst: CertInstance) -> str:
        name = inst.spec.name
        if name in ("controller-manager", "scheduler"):
            return f"https://127.0.0.1:{self.ctx.config.api.port}"  # their own master's API
        if name == "kubelet":
            return self.ctx.internal_api_server_url
        return self.ctx.api_server_url

    def _kubeconfigs(self, out_dir: Path, certs: dict[str, bytes] | None = None
                     ) -> dict[Path, str]:
        """Every kubeconfig's path and text, credentials embedded; ``certs`` (by instance id)
        stand in for the certificates on disk."""
        ca_pem = (self.root / "ca.crt").read_bytes()
        out = {}
        for inst in table.instances(self.ctx):
            if not inst.spec.kubeconfig:
                continue
            crt, key = self.paths(inst)
            cert_pem = (certs or {}).get(inst.id) or crt.read_bytes()
            text = kubeconfig(self.ctx.config.name, self.kubeconfig_server(inst), inst.cn,
                              ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key.read_bytes())
            out[out_dir / (f"nodes/{inst.node.name}/" if inst.node else "")
                / inst.spec.kubeconfig] = text
        return out

    def write_kubeconfigs(self, out_dir: Path) -> list[Path]:
        """(Re)write every kubeconfig, credentials embedded, 0600. They are derived files."""
        written = []
        for dest, text in self._kubeconfigs(out_dir).items():
            if not dest.exists() or dest.read_text() != text:
                atomic_write(dest, text, 0o600)
            written.append(dest)
        return written

    # -- reporting ---------------------------------------------------------------------------

    def records(self) -> list[CertRecord]:
        """Every certificate that exists on disk and parses, in table order (one that does
        not parse is among :meth:`verify`'s problems)."""
        out = []
        for inst in table.instances(self.ctx):
            crt, _ = self.paths(inst)
            if not crt.exists():
                continue
            try:
                cert = x509.load_pem_x509_certificate(crt.read_bytes())
            except ValueError:
                continue
            sans = cert_sans(cert)
            out.append(CertRecord(
                instance=inst, file=self._rel(crt), subject=cert.subject.rfc4514_string(),
                issuer=cert.issuer.rfc4514_string(), not_after=cert.not_valid_after_utc,
                sans=tuple(sans.dns) + tuple(str(i) for i in sans.ips), signer=inst.spec.ca))
        return out

    def expiring(self, days: int) -> tuple[list[str], list[str]]:
        """``(leaves a renewal gets past the horizon, CAs within it)`` (instance IDs): the
        certificates that expire within ``days`` of now (or already have), by this manager's
        clock. A leaf whose CA expires within ``days`` too is not among the leaves: renewed, it
        would end with its CA (a leaf never outlives it), inside the horizon again.

        :raises PkiError: when ``days`` is not less than ``pki.cert_validity_days``: every
            renewed leaf would expire within ``days`` again, and each run would renew (and
            roll) them all.
        """
        validity = self.ctx.config.pki.cert_validity_days
        if days >= validity:
            raise PkiError([("pki.cert_validity_days",
                             f"{validity} days: a renewal within {days} days would leave every "
                             f"leaf expiring within {days} days again; renew within fewer days "
                             "than leaves are valid")])
        limit = self.clock() + dt.timedelta(days=days)
        soon = [r.instance for r in self.records() if r.not_after <= limit]
        cas = [i.id for i in soon if i.spec.is_ca]
        return [i.id for i in soon if not i.spec.is_ca and i.spec.ca not in cas], cas

    def missing(self) -> list[str]:
        missing = [i.id for i in table.instances(self.ctx) if not self.paths(i)[0].exists()]
        if self.ctx.config.bastion.enabled and not self.bastion_host_key_path.exists():
            missing.append(BASTION_HOST_KEY)
        return missing


def _basic_constraints(cert: x509.Certificate):
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _missing_sans(cert: x509.Certificate, want) -> bool:
    have = cert_sans(cert)
    return not (set(want.dns) <= set(have.dns) and set(want.ips) <= set(have.ips))
