"""TLS at the load balancer: the server context for `--tls-cert`/`--tls-key`.

HTTP/1.1 over TLS 1.2 or later (ALPN `http/1.1`), with Python's default server ciphers (forward
secrecy, no RC4/3DES/NULL), no TLS compression, and the server's cipher order. The same context
serves the data plane and the control plane: they share one listener.
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["TLSConfigError", "server_context"]


class TLSConfigError(ValueError):
    """The certificate or key cannot be used; the message names the file and why."""


def _readable(what: str, path: Path) -> None:
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as exc:
        raise TLSConfigError(
            f"{what} {str(path)!r} cannot be read: {exc.strerror or exc}"
        ) from None


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS server context for `cert` (PEM chain, the server's certificate first) and `key`.

    Raises:
        TLSConfigError: a file is missing or unreadable, not PEM, or the key does not match.
    """
    _readable("AYGOLOG_TLS_CERT (--tls-cert)", cert)
    _readable("AYGOLOG_TLS_KEY (--tls-key)", key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    try:
        # An empty password: an encrypted key fails here rather than prompting on a terminal.
        context.load_cert_chain(cert, key, password="")
    except ssl.SSLError as exc:
        reason = exc.reason or exc.strerror or str(exc)
        hint = (
            "the key does not belong to the certificate"
            if "MISMATCH" in str(reason).upper()
            else "not a PEM certificate chain and its unencrypted PEM private key"
        )
        raise TLSConfigError(
            f"AYGOLOG_TLS_CERT {str(cert)!r} / AYGOLOG_TLS_KEY {str(key)!r}: {hint} ({reason})"
        ) from None
    return context
