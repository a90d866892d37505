"""TLS for bucketlyd: the server's ``SSLContext`` from ``--tls-cert``, ``--tls-key`` and
``--tls-client-ca``, and the check that warns when credentials would cross a network in clear."""

from __future__ import annotations

import ipaddress
import ssl

from ..errors import ConfigError
from .config import ServerConfig

__all__ = ["MINIMUM_TLS_VERSION", "is_loopback", "server_ssl_context"]

#: TLS 1.2 and later: older versions have known weaknesses, and every maintained client has 1.2.
MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2


def server_ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The context to listen with, or ``None`` without TLS. Raises ``ConfigError``."""
    if config.tls_cert is None:
        if config.tls_key is not None or config.tls_client_ca is not None:
            raise ConfigError("--tls-key and --tls-client-ca need --tls-cert")
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_TLS_VERSION
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the TLS certificate {config.tls_cert!r}"
            + (f" with key {config.tls_key!r}" if config.tls_key else "")
            + f": {exc}"
        ) from None
    if config.tls_client_ca is not None:
        try:
            context.load_verify_locations(cafile=config.tls_client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the client CA file {config.tls_client_ca!r}: {exc}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def is_loopback(host: str) -> bool:
    """Whether a bound address only carries traffic of this machine."""
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"
