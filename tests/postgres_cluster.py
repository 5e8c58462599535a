"""A throw-away PostgreSQL cluster on loopback for the tests: initdb into a temp folder, pg_ctl
start on a free port, one fresh database per test, everything deleted at the end.

The server is the Debian package's (`scripts/install_postgres.sh`, run by `make test`). PostgreSQL
refuses to run as root, so as root the cluster belongs to the package's `postgres` user.
"""
from __future__ import annotations

import glob
import itertools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "guildtune"
INSTALL_HINT = "run `bash scripts/install_postgres.sh` (Debian: apt-get install -y postgresql)"


class ClusterUnavailable(Exception):
    """The server is not installed here; the PostgreSQL tests are skipped with this message.
    (An installed server that fails to start is an error, not a skip.)"""


def server_bindir() -> Path:
    """The folder holding initdb and pg_ctl: on PATH, or the newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("pg_ctl")
    if found and Path(found).resolve().with_name("initdb").exists():
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    raise ClusterUnavailable(f"the PostgreSQL server (initdb, pg_ctl) is not installed: {INSTALL_HINT}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    def __init__(self):
        self.bindir = server_bindir()
        self.password = secrets.token_hex(12)
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="guildtune-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._names = itertools.count(1)
        self._free: list[str] = []
        self._owner = None
        if os.geteuid() == 0:
            try:
                self._owner = pwd.getpwnam("postgres")
            except KeyError:
                raise ClusterUnavailable("running as root and there is no `postgres` user to run the server as: "
                                         + INSTALL_HINT) from None

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._owner is not None:
            cmd = ["runuser", "-u", self._owner.pw_name, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr)[-2000:]
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {tail}")

    def start(self) -> "PostgresCluster":
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._owner is not None:
            for path in (self.root, pwfile):
                os.chown(path, self._owner.pw_uid, self._owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={pwfile}",
                  "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
        # Durability is worthless for a cluster deleted after the run; speed is not.
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options)
        return self

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    async def create_database(self) -> str:
        """An empty database; returns its URL. Creating one costs most of a second here, so a
        database handed back with `drop_database` is wiped and handed out again instead."""
        if self._free:
            return self._free.pop()
        name = f"test_{os.getpid()}_{next(self._names)}"
        await self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    async def drop_database(self, url: str) -> None:
        """Empty the database (ending any connection a test left open) for the next test."""
        import asyncpg

        name = url.rsplit("/", 1)[1]
        await self._admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          f"WHERE datname = '{name}' AND pid <> pg_backend_pid()")
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        finally:
            await conn.close()
        self._free.append(url)

    async def _admin(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
