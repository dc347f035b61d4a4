"""`muratune dashboard`: optuna-dashboard on an experiment's Optuna study, bound to loopback by default."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from muratune.errors import UserError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


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
    return f"sqlite:///{database}", config.name


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def allow_hosts(app: Callable, hosts: Iterable[str]) -> Callable:
    """Wrap a WSGI app so it answers only requests whose ``Host`` names one of ``hosts`` (DNS rebinding)."""
    allowed = {h.lower() for h in hosts}

    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST", "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name not in allowed:
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"Host not allowed\n"]
        return app(environ, start_response)

    return guarded


def create_dashboard_server(
    experiment: str | os.PathLike, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> WSGIServer:
    """optuna-dashboard's WSGI app on the experiment's study storage, behind a listening (not yet serving) server.

    Call ``serve_forever()`` on the result to serve, ``shutdown()`` from another thread to stop, ``server_close()``.
    Bound to loopback, it answers only requests for a loopback name (``127.0.0.1``, ``localhost``, ``[::1]``).

    Raises:
        UserError: no study, optuna-dashboard not installed, or the address cannot be listened on.
    """
    storage, _ = study_storage(experiment)
    try:
        import optuna_dashboard
    except ImportError:
        raise UserError("muratune dashboard needs optuna-dashboard; pip install 'muratune[dashboard]'") from None
    app = optuna_dashboard.wsgi(storage)
    if _is_loopback(host):
        app = allow_hosts(app, {host, "localhost", "127.0.0.1", "[::1]"})
    try:
        return make_server(host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    except OSError as err:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None


def serve_dashboard(
    experiment: str | os.PathLike,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    echo: Callable[[str], None] = print,
) -> None:
    """Serve optuna-dashboard on the experiment's study until interrupted (Ctrl-C)."""
    server = create_dashboard_server(experiment, host, port)
    _, name = study_storage(experiment)
    shown = f"[{host}]" if ":" in host else host
    if not _is_loopback(host):
        echo(f"warning: {host} is not loopback; optuna-dashboard has no login and lets visitors edit the study")
    echo(f"optuna-dashboard for study {name!r}: http://{shown}:{server.server_port}/dashboard (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
