"""
pytest fixtures for the testing kit, registered through the ``pytest11``
entry point when txsmtpclient is installed:

* ``txsmtp_script``: a fresh :class:`~txsmtpclient.testing.Script` to change
  before (or during) the test;
* ``txsmtp_memory_server``: a :class:`~txsmtpclient.testing.MemoryServer`
  following ``txsmtp_script`` on its own clock;
* ``txsmtp_server``: a started :class:`~txsmtpclient.testing.LoopbackServer`
  following ``txsmtp_script``, stopped after the test (needs pytest-twisted,
  which runs the reactor).

Nothing is imported from Twisted until a fixture is used, so the plugin
never installs a reactor behind pytest-twisted's back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from txsmtpclient.testing import LoopbackServer, MemoryServer, Script


@pytest.fixture
def txsmtp_script() -> Script:
    """A fresh script: a plain ESMTP server that accepts everything."""
    from txsmtpclient.testing import Script

    return Script()


@pytest.fixture
def txsmtp_memory_server(txsmtp_script: Script) -> MemoryServer:
    """An in-memory server following ``txsmtp_script``, on its own clock."""
    from txsmtpclient.testing import MemoryServer

    return MemoryServer(txsmtp_script)


@pytest.fixture
def txsmtp_server(txsmtp_script: Script) -> Iterator[LoopbackServer]:
    """A loopback server following ``txsmtp_script``; stopped after the test."""
    try:
        import pytest_twisted
    except ImportError:
        pytest.skip("the txsmtp_server fixture needs pytest-twisted to run the reactor")
    from txsmtpclient.testing import LoopbackServer

    server = LoopbackServer(txsmtp_script).start()
    try:
        yield server
    finally:
        pytest_twisted.blockon(server.stop())
