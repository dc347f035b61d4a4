"""Who may call the server: an allow-list of Host names, same-origin POSTs only, and an API key beyond loopback."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from muratune.errors import UserError
from muratune.web_access import (  # noqa: F401 - LOOPBACK_NAMES, WILDCARD_HOSTS and url_host re-exported
    LOOPBACK_NAMES,
    SAFE_METHODS,
    WILDCARD_HOSTS,
    allowed_host_names,
    is_loopback,
    same_origin,
    url_host,
)

API_KEY_ENV = "MURATUNE_API_KEY"
API_KEY_HEADER = "X-API-Key"


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
        return allowed_host_names(self.host, self.allowed_hosts)


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
            if origin is not None and not same_origin(origin, headers.get("host")):
                response = JSONResponse({"detail": f"cross-origin request from {origin!r} refused"}, status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
