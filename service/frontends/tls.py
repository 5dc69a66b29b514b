"""TLS for both front ends from PEM files: HTTPS (uvicorn) and gRPC, optionally mutual.

With ``tls_client_ca_file`` set, clients must present a certificate that CA signed (mTLS); a
handshake without one fails before any request is read.
"""

from __future__ import annotations

import ssl

import grpc

from service.settings import Settings


def _files(settings: Settings) -> bool:
    """Is TLS on? Both cert and key, or neither; a CA without them is an error."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if (cert is None) != (key is None):
        raise ValueError("TLS needs both --tls-cert-file and --tls-key-file")
    if cert is None and settings.tls_client_ca_file is not None:
        raise ValueError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file")
    return cert is not None


def uvicorn_options(settings: Settings) -> dict[str, object]:
    """``uvicorn.Config`` keyword arguments for HTTPS ({} = plain HTTP)."""
    if not _files(settings):
        return {}
    options: dict[str, object] = {
        "ssl_certfile": str(settings.tls_cert_file),
        "ssl_keyfile": str(settings.tls_key_file),
    }
    if settings.tls_client_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.tls_client_ca_file)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def grpc_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Server credentials for ``add_secure_port`` (None = insecure port)."""
    if not _files(settings):
        return None
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    chain = settings.tls_cert_file.read_bytes()
    key = settings.tls_key_file.read_bytes()
    client_ca = settings.tls_client_ca_file
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca.read_bytes() if client_ca is not None else None,
        require_client_auth=client_ca is not None,
    )
