"""
Shared pytest fixtures: real SMTP servers on loopback (see ``tests/servers.py``).

The reactor is never imported here at module level: pytest-twisted installs the one
chosen with ``--reactor`` before the tests run, and the fixtures below do not need it.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import (
    AiosmtpdServer,
    PostfixInstance,
    PostfixUnavailable,
    ServerScript,
    TLSFiles,
    find_postfix,
    make_self_signed_cert,
)

#: Builds a started aiosmtpd server; takes :class:`AiosmtpdServer`'s arguments.
ServerFactory = Callable[..., AiosmtpdServer]


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A self-signed certificate for localhost, 127.0.0.1 and the test host names."""
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback TCP port the test holds open (listening), so nothing else can listen on it."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


@pytest.fixture
def smtp_server() -> Iterator[AiosmtpdServer]:
    """An aiosmtpd server on 127.0.0.1 accepting everything, stopped after the test."""
    server = AiosmtpdServer(ServerScript()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def smtp_server_factory() -> Iterator[ServerFactory]:
    """
    A function building a started, customised aiosmtpd server; every server it built
    is stopped after the test.  Example::

        server = smtp_server_factory(ServerScript(refuse_ehlo=True), tls=tls_files)
    """
    servers: list[AiosmtpdServer] = []

    def build(*args: Any, **kwargs: Any) -> AiosmtpdServer:
        server = AiosmtpdServer(*args, **kwargs)
        servers.append(server)
        return server.start()

    try:
        yield build
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def postfix_instance(tls_files: TLSFiles) -> Iterator[PostfixInstance]:
    """
    One private Postfix for the whole run (it takes about two seconds to start).

    Skips when Postfix is not installed or we are not root.  Its folder is made in
    ``/tmp`` rather than pytest's ``tmp_path`` (or ``$TMPDIR``), because Postfix's
    unprivileged processes must be able to reach it and pytest's base folder is
    private to its owner.
    """
    try:
        find_postfix()
    except PostfixUnavailable as e:
        pytest.skip(f"needs Postfix: {e}")
    base = Path(tempfile.mkdtemp(prefix="txsmtpclient-postfix-", dir="/tmp"))
    instance = PostfixInstance(base, tls=tls_files)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postfix(postfix_instance: PostfixInstance) -> PostfixInstance:
    """
    The session's Postfix with its queue drained and its Maildir emptied, so a test
    sees only the messages it sent.
    """
    postfix_instance.wait_for_queue_empty()
    postfix_instance.clear_maildir()
    return postfix_instance


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """
    One private PostgreSQL cluster for the whole run (``tests/pgcluster.py``);
    skips when PostgreSQL is not installed.
    """
    from pgcluster import PostgresCluster, PostgresUnavailable

    try:
        cluster = PostgresCluster().start()
    except PostgresUnavailable as e:
        pytest.skip(f"no private PostgreSQL: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Any) -> str:
    """
    The URL of a database in the private cluster with the current schema,
    emptied for this test (one database for the run: creating one per test
    costs seconds on a loaded machine).
    """
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")
    url: str = pg_cluster.shared_database()
    return url


@pytest.fixture
def make_queue(pg_url: str) -> Iterator[Callable[..., Any]]:
    """
    Builds PostgresQueues (workers) on the test's database (``pg_url``);
    closes them after.
    """
    from txsmtpclient.spool.postgres import PostgresQueue

    made: list[PostgresQueue] = []

    def make(**kwargs: Any) -> PostgresQueue:
        kwargs.setdefault("reconnect_for", 5.0)
        queue = PostgresQueue(pg_url, max_connections=3, **kwargs)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close()
