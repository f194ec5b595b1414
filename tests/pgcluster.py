"""
A private PostgreSQL cluster for the tests: ``initdb`` into a temporary
folder, ``pg_ctl start`` on a free loopback port and a Unix socket in that
folder, as an unprivileged user (PostgreSQL refuses to run as root; as root
the folder is given to ``nobody``).  Never the system's service.

The superuser ``postgres`` logs in with a password over TCP (so a wrong
password can be tested) and without one over the socket.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from servers import free_loopback_port

__all__ = ["PASSWORD", "PostgresCluster", "PostgresUnavailable", "find_pg_bin"]

PASSWORD = "txsmtp-test-secret"
_USER = "nobody"


class PostgresUnavailable(Exception):
    """PostgreSQL's server binaries are not installed (or cannot run here)."""


def find_pg_bin() -> Path:
    """
    The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb``.

    :raises PostgresUnavailable: if none does.
    """

    def version(path: str) -> int:
        name = Path(path).parent.parent.name
        return int(name) if name.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if not found:
        on_path = shutil.which("initdb")
        if on_path:
            return Path(on_path).parent
        raise PostgresUnavailable(
            "PostgreSQL is not installed (apt-get install postgresql; .ci/run does)"
        )
    return Path(found[-1]).parent


class PostgresCluster:
    """
    One private cluster; :meth:`start` it, :meth:`url` a fresh database per
    test with :meth:`create_database`, :meth:`stop` it at the end.
    """

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        self.bin = find_pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="txsmtp-pg-"))
        self.data = self.root / "data"
        self.port = free_loopback_port()
        self._as_user: dict[str, Any] = {}
        self._template: str | None = None
        self._shared: str | None = None
        if os.geteuid() == 0:
            user = pwd.getpwnam(_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        os.chmod(self.root, 0o755)

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            cwd=self.root,
            timeout=120,
            **self._as_user,
        )
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{args[0]} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).decode(errors='replace')[-800:]}"
            )

    def start(self) -> PostgresCluster:
        """
        Create the cluster and start it; waits until it accepts connections.
        """
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_user:
            os.chown(pwfile, self._as_user["user"], self._as_user["group"])
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--pwfile",
            str(pwfile),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
            )
            if not self.durable:
                # Tests need no crash safety from the server itself.
                conf.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        self._pg_ctl("start")
        return self

    def _pg_ctl(self, action: str, *extra: str) -> None:
        self._run(
            "pg_ctl", action, "-D", str(self.data), "-w", "-t", "60", "-l", str(self.log), *extra
        )

    @property
    def log(self) -> Path:
        """The server's log file."""
        return self.root / "server.log"

    def restart(self) -> None:
        """Restart the server (fast shutdown: every connection is dropped)."""
        self._pg_ctl("restart", "-m", "fast")

    def stop(self) -> None:
        """Stop the server and remove its folder."""
        with contextlib.suppress(PostgresUnavailable):
            self._pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", *, password: str = PASSWORD) -> str:
        """A TCP URL with the superuser's password."""
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, template: str | None = None) -> str:
        """A new database, empty or a copy of ``template``; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        copy = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{copy}'.encode())
        return self.url(name)

    def migrated_database(self) -> str:
        """A new database with the current schema (a copy of one migrated once)."""
        if self._template is None:
            from txsmtpclient.spool.postgres_schema import open_checked

            url = self.create_database()
            open_checked(url, apply_migrations=True)
            self._template = url.rpartition("/")[2]
        return self.create_database(self._template)

    def shared_database(self) -> str:
        """One migrated database for many tests, emptied at each call."""
        import psycopg

        if self._shared is None:
            self._shared = self.migrated_database()
        with psycopg.connect(self._shared, autocommit=True) as conn:
            conn.execute(b"TRUNCATE txsmtp_entry CASCADE")
        return self._shared
