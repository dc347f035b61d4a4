"""`muratune dashboard`: optuna-dashboard on an experiment's Optuna study, bound to loopback by default."""

from __future__ import annotations

import hmac
import os
import secrets
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from muratune.config.databases import check_sqlite_schema, sqlite_file
from muratune.errors import UserError
from muratune.web_access import (
    SAFE_METHODS,
    WILDCARD_HOSTS,
    allowed_host_names,
    host_header_name,
    is_loopback,
    same_origin,
    url_host,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
TOKEN_ENV = "MURATUNE_DASHBOARD_TOKEN"
TOKEN_COOKIE = "muratune_dashboard_token"
TOKEN_QUERY = "token"
TOKEN_HINT = f"X-Dashboard-Token header, Authorization: Bearer, or ?{TOKEN_QUERY}= once"


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per request (as optuna-dashboard's own CLI serves), threads not waited for."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Drop the per-request access log lines."""


def study_storage(experiment: str | os.PathLike) -> tuple[str, str]:
    """The Optuna storage URL and study name of an experiment folder.

    The study is in the experiment's ``optuna.db``, or in the database its resolved config names
    (``optuna.storage``); the study is named after the search.

    Raises:
        UserError: not an experiment folder, or no Optuna study in it.
    """
    from muratune.experiment_folder import load_resolved_config
    from muratune.layout import OPTUNA_DB

    folder = Path(experiment)
    config = load_resolved_config(folder)
    if config.optuna.storage:
        return config.optuna.storage, config.name
    database = folder.resolve() / OPTUNA_DB
    if not database.is_file():
        raise UserError(f"{folder}: no Optuna study here (no {OPTUNA_DB}; a search with nothing searched has none)")
    try:
        check_sqlite_schema(f"sqlite:///{database}", "Optuna")
    except ValueError as err:
        raise UserError(str(err)) from None
    return f"sqlite:///{database}", config.name


@dataclass(frozen=True)
class DashboardAccess:
    """Who may call the dashboard: the bound host (its Host names are allowed) and the token (None: none needed).

    Beyond loopback a token is always needed: ``MURATUNE_DASHBOARD_TOKEN``, else one made at random and printed once.
    On loopback the token is needed only when that variable is set.
    """

    host: str = DEFAULT_HOST
    token: str | None = None

    @classmethod
    def for_host(cls, host: str, token: str | None = None) -> DashboardAccess:
        """The access rules for a server bound to ``host``, with ``token`` or the environment's, or a new one."""
        token = token or os.environ.get(TOKEN_ENV) or None
        if token is None and not is_loopback(host):
            token = secrets.token_urlsafe(24)
        return cls(host, token)


def _refuse(start_response: Callable, status: str, message: str) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")])
    return [message.encode() + b"\n"]


def _given_tokens(environ: dict) -> dict[str, str]:
    """The tokens a request carries, by where: header (X-Dashboard-Token or Bearer), cookie, query parameter."""
    given = {}
    bearer = environ.get("HTTP_AUTHORIZATION", "")
    if bearer.lower().startswith("bearer "):
        given["header"] = bearer[7:].strip()
    if "HTTP_X_DASHBOARD_TOKEN" in environ:
        given["header"] = environ["HTTP_X_DASHBOARD_TOKEN"]
    cookies = SimpleCookie()
    try:
        cookies.load(environ.get("HTTP_COOKIE", ""))
    except CookieError:
        pass
    if TOKEN_COOKIE in cookies:
        given["cookie"] = cookies[TOKEN_COOKIE].value
    query = parse_qs(environ.get("QUERY_STRING", "")).get(TOKEN_QUERY)
    if query:
        given["query"] = query[0]
    return given


def _token_source(environ: dict, token: str) -> str | None:
    """Where the request carries the right ``token`` (``header``, ``cookie`` or ``query``), None if nowhere."""
    want = token.encode()
    for source, given in _given_tokens(environ).items():
        if hmac.compare_digest(given.encode(), want):
            return source
    return None


def guard_dashboard(app: Callable, access: DashboardAccess) -> Callable:
    """Wrap a WSGI app: answer only an allowed ``Host`` (DNS rebinding), refuse a state-changing request from a
    foreign ``Origin`` (403), and with a token answer 401 unless the request carries it. A right ``?token=`` sets
    a same-site cookie, so the page's own requests carry it."""
    allowed = set(allowed_host_names(access.host))

    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST", "")
        if host_header_name(host) not in allowed:
            return _refuse(start_response, "403 Forbidden", "Host not allowed")
        origin = environ.get("HTTP_ORIGIN")
        if environ.get("REQUEST_METHOD", "GET") not in SAFE_METHODS and origin and not same_origin(origin, host):
            return _refuse(start_response, "403 Forbidden", f"cross-origin request from {origin!r} refused")
        if access.token is None:
            return app(environ, start_response)
        source = _token_source(environ, access.token)
        if source is None:
            return _refuse(start_response, "401 Unauthorized", f"missing or wrong dashboard token ({TOKEN_HINT})")
        if source != "query":
            return app(environ, start_response)
        cookie = f"{TOKEN_COOKIE}={access.token}; Path=/; HttpOnly; SameSite=Strict"

        def with_cookie(status: str, headers: list, exc_info: Any = None) -> Callable:
            return start_response(status, [*headers, ("Set-Cookie", cookie)], exc_info)

        return app(environ, with_cookie)

    return guarded


def create_dashboard_server(
    experiment: str | os.PathLike,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    access: DashboardAccess | None = None,
) -> WSGIServer:
    """optuna-dashboard's WSGI app on the experiment's study storage, behind a listening (not yet serving) server.

    Call ``serve_forever()`` on the result to serve, ``shutdown()`` from another thread to stop, ``server_close()``.
    It answers only requests for the bound host's or a loopback name, refuses cross-origin edits, and asks for the
    token of ``access`` (default: `DashboardAccess.for_host`, a token beyond loopback).

    Raises:
        UserError: no study, optuna-dashboard not installed, or the address cannot be listened on.
    """
    storage, _ = study_storage(experiment)
    database = sqlite_file(storage)
    if database is not None and not database.is_file():  # optuna-dashboard would make an empty one there
        raise UserError(f"optuna.storage {storage}: no such database; no Optuna study there")
    try:
        import optuna_dashboard
    except ImportError:
        raise UserError("muratune dashboard needs optuna-dashboard; pip install 'muratune[dashboard]'") from None
    try:
        app = optuna_dashboard.wsgi(storage)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's and Optuna's errors alike: the storage is unusable
        raise UserError(f"optuna.storage {storage}: not a readable Optuna database ({type(err).__name__})") from None
    app = guard_dashboard(app, access or DashboardAccess.for_host(host))
    try:
        return make_server(host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    except OSError as err:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None


def dashboard_url(access: DashboardAccess, port: int) -> str:
    """The address to open: the bound host (the machine's name when bound to all), with a generated token."""
    shown = url_host(socket.gethostname() if access.host in WILDCARD_HOSTS else access.host)
    query = f"?{TOKEN_QUERY}={access.token}" if access.token and not os.environ.get(TOKEN_ENV) else ""
    return f"http://{shown}:{port}/dashboard{query}"


def serve_dashboard(
    experiment: str | os.PathLike,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    echo: Callable[[str], None] = print,
) -> None:
    """Serve optuna-dashboard on the experiment's study until interrupted (Ctrl-C)."""
    access = DashboardAccess.for_host(host)
    server = create_dashboard_server(experiment, host, port, access)
    _, name = study_storage(experiment)
    if access.token and os.environ.get(TOKEN_ENV):
        echo(f"the dashboard asks for the token in {TOKEN_ENV} ({TOKEN_HINT})")
    elif access.token:
        echo(f"{host} is not loopback: the dashboard asks for this token, shown once: {access.token}")
    echo(f"optuna-dashboard for study {name!r}: {dashboard_url(access, server.server_port)} (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
