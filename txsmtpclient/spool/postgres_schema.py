"""
The PostgreSQL queue's schema: versioned migrations shipped as plain SQL
files (``txsmtpclient/spool/postgres_sql/NNNN_name.sql``), applied in order
by :func:`migrate`, checked at start-up by :func:`check_schema`; and the
one-line descriptions of database errors that the command line and the
daemon print.

Every function here blocks on the database: call them off the reactor
thread.  Nothing here imports Twisted.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from txsmtpclient.spool.queue import SpoolError

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "SCHEMA_VERSION",
    "QueueDatabaseError",
    "QueueUnavailable",
    "SchemaError",
    "check_schema",
    "describe_error",
    "is_queue_url",
    "is_unreachable",
    "migrate",
    "migrations",
    "open_checked",
    "redact_url",
    "schema_version",
]

_MIGRATION_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

# Any 64-bit number of ours: serialises concurrent migrators (two daemons
# started with --migrate at once) on the database.
_MIGRATION_LOCK = 0x7478736D7470


class QueueDatabaseError(SpoolError):
    """
    The queue database cannot be used as it is: unreachable, refused our
    credentials, or its schema does not match this version of txsmtpclient.
    The message is one line saying what to do.
    """


class SchemaError(QueueDatabaseError):
    """
    The database's schema is older than this txsmtpclient needs (run
    ``migrate``) or newer than it knows (upgrade txsmtpclient).
    """


class QueueUnavailable(QueueDatabaseError, OSError):
    """
    The database did not answer within the time allowed for reconnecting;
    the operation may be retried later (an ``OSError``, so the daemon keeps
    the entry and tries again).
    """


def migrations() -> list[tuple[int, str, str]]:
    """
    The shipped migrations, oldest first, as ``(version, name, sql)``.
    """
    found = []
    for item in resources.files("txsmtpclient.spool").joinpath("postgres_sql").iterdir():
        match = _MIGRATION_NAME.fullmatch(item.name)
        if match:
            found.append((int(match.group(1)), match.group(2), item.read_text("utf-8")))
    found.sort()
    return found


#: The schema version this txsmtpclient reads and writes.
SCHEMA_VERSION = max(v for v, _, _ in migrations())


def redact_url(url: str) -> str:
    """
    A database URL fit for logs and messages: the password is replaced by
    ``***`` (also a ``password=`` query parameter).
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable database URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.partition(":")[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = re.sub(r"(?i)(^|&)(password)=[^&]*", r"\1\2=***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def is_queue_url(text: str) -> bool:
    """
    Whether ``--queue`` names a PostgreSQL database (``postgresql://`` or
    ``postgres://``).
    """
    return text.startswith(("postgresql://", "postgres://"))


def _scrub(text: str, url: str | None) -> str:
    """
    ``text`` without the URL's password: libpq quotes a URL it cannot parse
    whole, or the part of it that is wrong, password included.
    """
    secrets = []
    if url is not None:
        userinfo = re.search(r"://([^/?#]*)@", url)
        if userinfo and ":" in userinfo.group(1):
            secrets.append(userinfo.group(1).partition(":")[2])
        secrets += re.findall(r"(?i)(?:^|[?&])password=([^&#]*)", url)
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***").replace(unquote(secret), "***")
    # Any other URL quoted in the text: no password either.
    return re.sub(r"(://[^:/@\s\"]*:)[^@\s\"]*@", r"\1***@", text)


def describe_error(error: BaseException, url: str | None = None) -> str:
    """
    One line for a database error: what failed and what to do, the URL's
    password redacted.
    """
    text = _scrub(" ".join(str(error).split()) or type(error).__name__, url)
    # libpq quotes the host and user; the URL is named (redacted) so the
    # operator sees which database was meant.
    where = redact_url(url) if url is not None else "the queue database"
    # libpq reports login failures at connect time without a SQLSTATE.
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate in ("28P01", "28000") or any(
        words in text for words in ("password authentication failed", "no password supplied")
    ):
        return (
            f"cannot log in to {where}: {text}; check the user and password "
            "(URL, ~/.pgpass or $PGPASSWORD)"
        )
    if sqlstate == "3D000" or ("database" in text and "does not exist" in text):
        return f"{where}: {text}; create it first (createdb)"
    if isinstance(error, QueueDatabaseError):
        return text
    return f"cannot use {where}: {text}; check that PostgreSQL runs and the URL is right"


# libpq's words for a server it could not reach (its connection errors carry
# no SQLSTATE); 57P03: the server is starting up or shutting down.
_UNREACHABLE = (
    "connection refused",
    "timeout expired",
    "no such file or directory",
    "could not translate host name",
    "failed to resolve host",
    "server closed the connection",
    "network is unreachable",
    "no route to host",
)


def is_unreachable(error: BaseException) -> bool:
    """
    Whether a database error says the server could not be reached (down,
    restarting, not resolvable), a temporary failure, rather than that the
    URL, the credentials or the database are wrong.
    """
    if getattr(error, "sqlstate", None) == "57P03":
        return True
    text = str(error).lower()
    return any(words in text for words in _UNREACHABLE)


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """
    The schema version applied to the database, 0 when none is.
    """
    row = conn.execute("SELECT to_regclass('txsmtp_migration') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM txsmtp_migration").fetchone()
    return int(row[0]) if row is not None else 0


def check_schema(conn: psycopg.Connection[Any]) -> int:
    """
    Check the database's schema is the one this txsmtpclient uses.

    :returns: the version.
    :raises SchemaError: if it is older (or absent) or newer.
    """
    version = schema_version(conn)
    if version < SCHEMA_VERSION:
        have = f"is at version {version}" if version else "has no txsmtp schema"
        raise SchemaError(
            f"the queue database {have}; this txsmtpclient needs version "
            f"{SCHEMA_VERSION}: run 'python -m txsmtpclient migrate --queue URL' "
            "or start the daemon with --migrate"
        )
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"the queue database's schema is at version {version}, newer than this "
            f"txsmtpclient knows ({SCHEMA_VERSION}): upgrade txsmtpclient"
        )
    return version


def migrate(conn: psycopg.Connection[Any]) -> list[int]:
    """
    Apply the migrations the database lacks, each in its own transaction,
    under an advisory lock so concurrent migrators take turns.

    :param conn: a connection not in a transaction.
    :returns: the versions applied now (empty when up to date).
    :raises SchemaError: if the database is newer than this txsmtpclient.
    """
    applied: list[int] = []
    for version, name, sql in migrations():
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS txsmtp_migration ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied timestamptz NOT NULL DEFAULT now())"
            )
            if schema_version(conn) >= version:
                continue
            conn.execute(sql.encode("utf-8"))
            conn.execute(
                "INSERT INTO txsmtp_migration (version, name) VALUES (%s, %s)", (version, name)
            )
            applied.append(version)
    check_schema(conn)
    return applied


def open_checked(
    url: str, *, apply_migrations: bool = False, connect_timeout: float = 10.0
) -> list[int]:
    """
    Connect once, migrate if asked, and check the schema: what the command
    line and the daemon do before they start, so that a wrong URL, password
    or schema is one clear line rather than a traceback later.

    :returns: the migrations applied.
    :raises QueueUnavailable: with a one-line message, when the server cannot
        be reached (a temporary failure: sysexits 75).
    :raises QueueDatabaseError: with a one-line message, for anything else
        (a wrong URL or password, the schema, psycopg missing).
    """
    try:
        import psycopg
    except ImportError as e:
        raise QueueDatabaseError(
            f"a PostgreSQL queue needs psycopg: pip install 'txsmtpclient[postgres]' ({e})"
        ) from None

    try:
        with psycopg.connect(
            url, autocommit=True, connect_timeout=max(1, round(connect_timeout))
        ) as conn:
            if apply_migrations:
                return migrate(conn)
            check_schema(conn)
            return []
    except QueueDatabaseError:
        raise
    except (psycopg.Error, ValueError) as e:
        if is_unreachable(e):
            raise QueueUnavailable(describe_error(e, url)) from e
        raise QueueDatabaseError(describe_error(e, url)) from e
