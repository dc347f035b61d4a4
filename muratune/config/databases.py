"""Existing SQLite databases a search would write into: refused when they hold another schema's tables."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

# Tables every database of each schema has (their other tables change between versions).
SCHEMA_TABLES: dict[str, frozenset[str]] = {
    "Optuna": frozenset({"studies", "trials", "version_info"}),
    "MLflow": frozenset({"experiments", "runs", "metrics"}),
}


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for other URLs and in-memory databases)."""
    if not url.startswith("sqlite:///"):
        return None
    name = url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(name).expanduser() if name and name != ":memory:" else None


def sqlite_tables(database: Path) -> set[str]:
    """The tables of an SQLite file, opened read-only (nothing is created or changed).

    Raises:
        sqlite3.DatabaseError: not an SQLite database, or unreadable.
    """
    uri = f"{database.resolve().as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows if not name.startswith("sqlite_")}


def check_sqlite_schema(url: str, schema: str) -> None:
    """Refuse an existing SQLite file at ``url`` that is not an empty database nor one of ``schema`` (a key of
    ``SCHEMA_TABLES``); a missing file, an empty one and other URLs pass.

    Raises:
        ValueError: one line naming the file and what it holds.
    """
    database = sqlite_file(url)
    if database is None or not database.exists():
        return
    if database.is_file() and database.stat().st_size == 0:
        return
    try:
        tables = sqlite_tables(database)
    except sqlite3.DatabaseError as err:
        raise ValueError(f"{database}: not an SQLite database ({err}); refusing to write into it") from None
    missing = SCHEMA_TABLES[schema] - tables
    if tables and missing:
        shown = ", ".join(sorted(tables)[:6]) + (", ..." if len(tables) > 6 else "")
        raise ValueError(
            f"{database}: holds another schema's tables ({shown}), not {schema}'s; refusing to write into a database "
            "muratune did not make (name a new file)"
        )
