"""Building and reading X.509 certificates the way kubeadm's pkiutil does."""

import datetime as dt
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from k8simg.pki.certs import SANs
from k8simg.pki.keys import PrivateKey, signature_hash

# kubeadm backdates NotBefore so that nodes whose clocks lag a little accept fresh certificates
# (kubeadm constants.CertificateBackdate).
BACKDATE = dt.timedelta(minutes=5)

NO_SANS = SANs()

_EKU = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}


@dataclass(frozen=True)
class Subject:
    cn: str
    orgs: tuple[str, ...] = ()

    def name(self) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in self.orgs]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, self.cn))
        return x509.Name(attrs)


def issue(subject: Subject, usages: tuple[str, ...], key: PrivateKey, *, now: dt.datetime,
          days: int, sans: SANs = NO_SANS,
          signer: tuple[x509.Certificate, PrivateKey] | None = None) -> x509.Certificate:
    """Issue a certificate for ``key``: self-signed when ``signer`` is ``None``.

    A leaf never outlives its CA: its NotAfter is clamped to the CA's.

    :param usages: ``ca``, ``server`` and/or ``client``.
    :param signer: the CA certificate and key.
    """
    is_ca = "ca" in usages
    not_before = now - BACKDATE
    not_after = now + dt.timedelta(days=days)
    pub = key.public_key()
    if signer is None:
        issuer_name, sign_key, issuer_pub = subject.name(), key, pub
    else:
        ca_cert, sign_key = signer
        issuer_name, issuer_pub = ca_cert.subject, ca_cert.public_key()
        not_after = min(not_after, ca_cert.not_valid_after_utc)
    # KeyEncipherment only means something for RSA key transport (kubeadm drops it for ECDSA).
    rsa_key = isinstance(key, rsa.RSAPrivateKey)
    b = (x509.CertificateBuilder()
         .subject_name(subject.name())
         .issuer_name(issuer_name)
         .public_key(pub)
         .serial_number(secrets.randbits(127) | 1)
         .not_valid_before(not_before)
         .not_valid_after(not_after)
         .add_extension(x509.KeyUsage(
             digital_signature=True, content_commitment=False, key_encipherment=rsa_key,
             data_encipherment=False, key_agreement=False, key_cert_sign=is_ca,
             crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_pub),
                        critical=False))
    if is_ca:
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    ekus = [_EKU[u] for u in usages if u in _EKU]
    if ekus:
        b = b.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    if sans.dns or sans.ips:
        names = [x509.DNSName(d) for d in sans.dns] + [x509.IPAddress(i) for i in sans.ips]
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(sign_key, signature_hash(sign_key))


def cert_sans(cert: x509.Certificate) -> SANs:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return SANs()
    return SANs(tuple(ext.get_values_for_type(x509.DNSName)),
                tuple(ext.get_values_for_type(x509.IPAddress)))


def cert_orgs(cert: x509.Certificate) -> tuple[str, ...]:
    return tuple(a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))


def cert_cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return attrs[0].value if attrs else ""


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` issued ``cert`` (issuer name and signature both check)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
