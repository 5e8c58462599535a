"""Whether a SQLite path can hold the database, said before SQLite touches it.

SQLite's own errors for a folder, a device or a read-only place are terse, and on some of them
aiosqlite's thread never stops; these checks name the path, the reason and the fix. A file that is
not SQLite is refused by SQLite on its first read, before anything is written (`unusable`).
"""
from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

from storage.engine import DatabaseUnavailable

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
    # The file is not opened here to read its header: closing any descriptor of a database file drops
    # every POSIX lock this process holds on it, so a connection already open in this process would
    # lose its locks (stale reads, "disk I/O error"). SQLite itself refuses a file that is not a
    # database on its first read, before writing anything; `unusable` says so.


def unusable(path: str, exc: sqlite3.Error) -> str:
    reason = str(exc)
    if "readonly" in reason or "read-only" in reason:
        fix = "it is read-only: make it (and its folder) writable, or give another path"
    elif "not a database" in reason or "malformed" in reason:
        return (f"{path} is not a SQLite database, or it is damaged ({reason}), so it was left as it is: give the "
                "path of guildtune's database, or of a new file (keep this one for recovery).")
    elif "unable to open" in reason:
        fix = "the file cannot be created or opened there: give a path in a folder you can write to"
    else:
        fix = "give a path in a folder you can write to"
    return f"The database {path} cannot be used ({reason}): {fix}."


