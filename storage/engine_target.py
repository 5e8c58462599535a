"""Which database a GUILDTUNE_DB value (or a `db copy --from/--to`) names, and how to show it.

A file path or `sqlite:///path` is SQLite (three slashes then a relative path, four for an absolute
one); `postgresql://…` (or `postgres://…`) is a PostgreSQL server. Passwords never reach a message:
every place that shows a location shows `redact(location)`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SQLITE_SCHEMES = ("sqlite://",)
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
ALLOWED = ("a SQLite file path (data/guildtune.db), sqlite:///relative/path.db, sqlite:////absolute/path.db "
           "or postgresql://user:password@host:5432/database")


class DatabaseTargetError(ValueError):
    """GUILDTUNE_DB (or a --from/--to) names no database this program can open."""


@dataclass(frozen=True)
class DatabaseTarget:
    engine: str     # "sqlite" | "postgresql"
    location: str   # the SQLite file (or ":memory:"), or the PostgreSQL URL with its password

    def __str__(self) -> str:
        return redact(self.location)


def parse_target(value: str | Path) -> DatabaseTarget:
    """Which engine and where, from a GUILDTUNE_DB value; a clear error for anything else."""
    text = str(value).strip()
    if not text:
        raise DatabaseTargetError(f"no database given: use {ALLOWED}.")
    lowered = text.lower()
    if lowered.startswith(POSTGRES_SCHEMES):
        try:
            urlsplit(text).port  # noqa: B018 (raises on a port that is not a number)
        except ValueError:
            raise DatabaseTargetError(f"{redact(text)} has a port that is not a number: use {ALLOWED}.") from None
        return DatabaseTarget("postgresql", text)
    if lowered.startswith(SQLITE_SCHEMES):
        rest = text[len("sqlite://"):]
        if not rest.startswith("/") or len(rest) < 2:
            raise DatabaseTargetError(f"{text!r} is not a SQLite URL: use {ALLOWED}.")
        return DatabaseTarget("sqlite", rest[1:])  # sqlite:///rel → rel, sqlite:////abs → /abs
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise DatabaseTargetError(f"{scheme}:// databases are not supported: use {ALLOWED}.")
    return DatabaseTarget("sqlite", text)


def redact(location: str) -> str:
    """The location with any password replaced by ***, for messages and logs."""
    if "://" not in location:
        return location
    parts = urlsplit(location)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
