"""Pure checks of who calls a local web server (Host allow-list, same origin), shared by `serve` and `dashboard`."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback name or address (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bracketed(host: str) -> str:
    """An IPv6 literal as it appears in a Host header (``[::1]``); other names unchanged."""
    try:
        return f"[{host.strip('[]')}]" if ipaddress.ip_address(host.strip("[]")).version == 6 else host
    except ValueError:
        return host


def url_host(host: str) -> str:
    """``host`` as written in a URL (IPv6 literals in brackets)."""
    return bracketed(host)


def allowed_host_names(host: str, extra: Iterable[str] = ()) -> list[str]:
    """Host header names (no port) a server bound to ``host`` answers: it, loopback, ``extra``, and the machine's
    own names when bound to all interfaces. IPv6 literals in brackets, lower case."""
    names = [host, *LOOPBACK_NAMES, *extra]
    if host in WILDCARD_HOSTS:  # all interfaces: the machine's own names reach it too
        names += [socket.gethostname(), socket.getfqdn()]
    return list(dict.fromkeys(bracketed(n.strip().lower()) for n in names if n and n not in WILDCARD_HOSTS))


def host_header_name(host_header: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:8080`` -> ``[::1]``), lower case."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value.split("]", 1)[0] + "]"
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def same_origin(origin: str, host: str | None) -> bool:
    """Whether a browser's ``Origin`` header names the server it asked (``host``: that request's ``Host``)."""
    parts = urlsplit(origin.strip())
    return bool(host) and parts.scheme in ("http", "https") and parts.netloc.lower() == str(host).strip().lower()
