"""
The one TLS policy of every front: Mozilla's "intermediate" profile
(https://wiki.mozilla.org/Security/Server_Side_TLS), server side.

TLS 1.2 and 1.3 only; on TLS 1.2 only forward-secret AEAD suites (ECDHE with
AES-GCM or ChaCha20-Poly1305); TLS 1.3's own suites are all of that kind.
Mozilla's list also has DHE suites: left out, as they need Diffie-Hellman
parameters from the operator and add nothing a client of today lacks.

Every server-side context is made here: C{ssl:} listeners
(L{mailsvc.listeners}) and STARTTLS/STLS (L{mailsvc.fronts.standard}).
Twisted's defaults would also offer suites without forward secrecy
(C{AES128-SHA}, C{AES256-SHA}) and CBC ones, and an C{ssl:} description's
C{sslmethod=} could lower the protocol version: so the policy is not
negotiable from a description (L{refusal}).
"""

from twisted.internet import ssl
from twisted.python.filepath import FilePath

# Mozilla intermediate, v5.7, without its DHE suites; in its order.
TLS12_SUITES = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)
MINIMUM = ssl.TLSVersion.TLSv1_2

# ssl: description parameters that would change the policy, and why each is refused.
WEAKENING = {
    "sslmethod": "the TLS versions are fixed (TLS 1.2 and 1.3)",
    "dhParameters": "only ECDHE suites are offered, which need no Diffie-Hellman parameters",
}


def refusal(parameters):
    """Why an C{ssl:} description with these keyword C{parameters} is refused, or None."""
    for name, why in WEAKENING.items():
        if name in parameters:
            return "%s= is not accepted: %s (mailsvc's TLS policy, docs/security.md)" % (
                name,
                why,
            )
    return None


def server_options(private_key, certificate=None, chain=None):
    """
    The server's TLS settings (a L{ssl.CertificateOptions}) from PEM files:
    C{private_key}, C{certificate} (default: the key file holds both) and
    C{chain}, the intermediate certificates (or None).
    """
    cert_pem = FilePath(certificate or private_key).getContent()
    key_pem = FilePath(private_key).getContent()
    identity = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    intermediates = None
    if chain is not None:
        intermediates = [
            ssl.Certificate.loadPEM(pem).original for pem in _certificates(FilePath(chain))
        ]
    return ssl.CertificateOptions(
        privateKey=identity.privateKey.original,
        certificate=identity.original,
        extraCertChain=intermediates,
        raiseMinimumTo=MINIMUM,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(":".join(TLS12_SUITES)),
    )


def _certificates(path):
    text = path.getContent()
    end = b"-----END CERTIFICATE-----"
    found = [block + end for block in text.split(end) if b"-----BEGIN CERTIFICATE-----" in block]
    if not found:
        raise ValueError("%s holds no PEM certificate" % (path.path,))
    return [block[block.index(b"-----BEGIN") :] for block in found]
