"""
Throwaway TLS certificates for the tests, made with the C{cryptography}
package: a self-signed certificate for C{localhost} (DNS:localhost and
IP:127.0.0.1 in its subjectAltName) and its private key, written as PEM files.
"""

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Identity:
    """
    C{key} and C{cert}: the PEM files a server is given (C{privateKey=},
    C{certKey=}). C{roots}: a directory holding only the certificate, as
    C{cert.pem}, for a client to trust (C{caCertsDir=} or C{trustRoots=} load
    every C{*.pem} in a directory).
    """

    key: Path
    cert: Path
    roots: Path


def self_signed(directory, name="localhost", ip="127.0.0.1", kind="ec"):
    """
    Make a key and a self-signed certificate for C{name} and C{ip} in
    C{directory} (created if missing); return the L{Identity}.

    C{kind} "ec": an elliptic-curve key, made in microseconds (an RSA key
    takes tens of milliseconds or more). "rsa": a 2048-bit RSA key, for
    what only an RSA key can be offered (ECDHE-RSA suites, and those without
    forward secrecy, such as AES128-SHA).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address(ip))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path = directory / "key.pem"
    cert_path = directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(cert_pem)
    roots = directory / "roots"
    roots.mkdir(exist_ok=True)
    (roots / "cert.pem").write_bytes(cert_pem)
    return Identity(key_path, cert_path, roots)
