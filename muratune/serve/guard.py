"""Who may call the server: an allow-list of Host names, same-origin POSTs only, and an API key beyond loopback."""

from __future__ import annotations

import hmac
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from muratune.errors import UserError

API_KEY_ENV = "MURATUNE_API_KEY"
API_KEY_HEADER = "X-API-Key"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class ServeAccess:
    """Who may call: the bound host, extra Host names (``--allowed-host``) and the API key (None on loopback)."""

    host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()
    api_key: str | None = None

    def check(self) -> None:
        """Refuse binding beyond loopback without an API key.

        Raises:
            UserError: ``host`` is not a loopback address and no key is set.
        """
        if not is_loopback(self.host) and not self.api_key:
            raise UserError(
                f"--host {self.host}: binding beyond loopback needs an API key; pass --api-key or set {API_KEY_ENV}"
            )

    def host_patterns(self) -> list[str]:
        """Host header values to accept (as starlette's TrustedHostMiddleware matches them, IPv6 in brackets)."""
        names = [self.host, *LOOPBACK_NAMES, *self.allowed_hosts]
        if self.host in WILDCARD_HOSTS:  # all interfaces: the machine's own names reach it too
            names += [socket.gethostname(), socket.getfqdn()]
        return list(dict.fromkeys(_bracketed(n.strip().lower()) for n in names if n and n not in WILDCARD_HOSTS))


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback name or address (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bracketed(host: str) -> str:
    """An IPv6 literal as it appears in a Host header (``[::1]``); other names unchanged."""
    try:
        return f"[{host.strip('[]')}]" if ipaddress.ip_address(host.strip("[]")).version == 6 else host
    except ValueError:
        return host


def url_host(host: str) -> str:
    """``host`` as written in a URL (IPv6 literals in brackets)."""
    return _bracketed(host)


class SameOriginPost:
    """ASGI middleware: refuse (403) a state-changing request whose ``Origin`` is not this server's own.

    A browser names the page that sends a cross-site form or fetch in ``Origin``; plain API clients (curl,
    Python) send none and pass. The bundled page is same-origin: its ``Origin`` matches the ``Host`` it asked.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and not _same_origin(origin, headers.get("host")):
                response = JSONResponse({"detail": f"cross-origin request from {origin!r} refused"}, status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _same_origin(origin: str, host: str | None) -> bool:
    parts = urlsplit(origin.strip())
    return bool(host) and parts.scheme in ("http", "https") and parts.netloc.lower() == str(host).strip().lower()


class ApiKeyGate:
    """ASGI middleware: answer 401 to an API request without the key, from its headers, before any body is read.

    The key comes as ``X-API-Key`` or ``Authorization: Bearer``; the page (``/``) and the API docs are open, the page
    asks for the key itself.
    """

    def __init__(self, app: ASGIApp, api_key: str, paths: frozenset[str]):
        self.app = app
        self.want = api_key.encode()
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths and not self._has_key(Headers(scope=scope)):
            detail = f"missing or wrong API key ({API_KEY_HEADER} header or Authorization: Bearer)"
            response = JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _has_key(self, headers: Headers) -> bool:
        given = headers.get(API_KEY_HEADER)
        if given is None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            given = token if scheme.lower() == "bearer" else ""
        return hmac.compare_digest(given.encode(), self.want)
