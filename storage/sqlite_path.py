"""Whether a SQLite path can hold the database, said before SQLite touches it.

SQLite's own errors for a folder, a device, another program's file or a read-only place are
terse, and on some of them aiosqlite's thread never stops; these checks name the path, the reason
and the fix, and never write to a file that is not SQLite.
"""
from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

from storage.engine import DatabaseUnavailable

SQLITE_HEADER = b"SQLite format 3\x00"


class DatabaseOpenError(DatabaseUnavailable):
    """The database file cannot be used; the message names the path, why, and what to do."""


def check_database_path(path: Path) -> None:
    """Refuse, with the reason, a path where the database cannot live; create its folder if needed."""
    try:
        info = path.stat()
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise DatabaseOpenError(f"The database path {path} cannot be used ({exc.strerror or exc}).") from None
    if info is None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseOpenError(f"The folder for the database {path} cannot be created ({exc.strerror or exc}): "
                                    "give a path in a folder you can write to.") from None
        try:
            path.open("ab").close()  # what SQLite would do first; here the reason can still be named
        except OSError as exc:
            raise DatabaseOpenError(f"The database {path} cannot be created ({exc.strerror or exc}): "
                                    "give a path in a folder you can write to.") from None
        return
    if stat.S_ISDIR(info.st_mode):
        raise DatabaseOpenError(f"The database path {path} is a folder: give a file path, e.g. {path / 'guildtune.db'}.")
    if not stat.S_ISREG(info.st_mode):
        raise DatabaseOpenError(f"The database path {path} is not a regular file (a device or a pipe): give the path "
                                "of a file, e.g. ./data/guildtune.db.")
    try:
        with path.open("rb") as stream:
            header = stream.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise DatabaseOpenError(f"The database {path} cannot be read ({exc.strerror or exc}).") from None
    if header and header != SQLITE_HEADER[:len(header)]:
        raise DatabaseOpenError(f"{path} is not a SQLite database (it holds something else), so it was left as it is: "
                                "give the path of guildtune's database, or of a new file.")


def unusable(path: str, exc: sqlite3.Error) -> str:
    reason = str(exc)
    if "readonly" in reason or "read-only" in reason:
        fix = "it is read-only: make it (and its folder) writable, or give another path"
    elif "not a database" in reason or "malformed" in reason:
        fix = "it is not a guildtune database, or it is damaged: give another path (keep this file for recovery)"
    elif "unable to open" in reason:
        fix = "the file cannot be created or opened there: give a path in a folder you can write to"
    else:
        fix = "give a path in a folder you can write to"
    return f"The database {path} cannot be used ({reason}): {fix}."


