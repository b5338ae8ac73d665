"""Private keys: the algorithms a cluster may choose, generation and PEM encoding."""

from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
KeyFactory = Callable[[str], PrivateKey]

ALGORITHMS = ("ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096")


def generate_key(algorithm: str) -> PrivateKey:
    """A new private key for ``algorithm`` (one of :data:`ALGORITHMS`).

    :raises ValueError: for an unknown algorithm.
    """
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if algorithm.startswith("rsa-") and algorithm in ALGORITHMS:
        return rsa.generate_private_key(public_exponent=65537, key_size=int(algorithm[4:]))
    raise ValueError(f"unknown key algorithm {algorithm!r}")


def signature_hash(key: PrivateKey) -> hashes.HashAlgorithm:
    """The digest a signature by ``key`` uses: SHA-384 for P-384, SHA-256 otherwise."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def key_pem(key: PrivateKey) -> bytes:
    """PEM of ``key``: SEC1 for EC, PKCS#1 for RSA, as kubeadm writes them."""
    fmt = serialization.PrivateFormat.TraditionalOpenSSL
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_key(data: bytes) -> PrivateKey:
    """Parse a PEM private key.

    :raises ValueError: when it is not an unencrypted EC or RSA private key.
    """
    # RSA key validation (a primality check) costs ~0.4 s per 4096-bit key, and every command
    # loads every key: the keys are the ones k8simg wrote into the cluster directory, and
    # each is still checked against its certificate's public key.
    key = serialization.load_pem_private_key(data, password=None,
                                             unsafe_skip_rsa_key_validation=True)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported key type {type(key).__name__}")
    return key


def same_public_key(a, b) -> bool:
    """Whether two public keys are the same key."""
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(serialization.Encoding.DER, fmt) == b.public_bytes(
        serialization.Encoding.DER, fmt)
