"""
End-to-end tests of the control plane: the daemon ``twist txsmtp`` builds
(:func:`txsmtpclient.tap.makeService`) with ``--control-port`` on loopback
port 0, driven over real HTTP with ``twisted.web.client.Agent``, delivering
to an aiosmtpd sink on loopback.  Waits are bounded.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from servers import AiosmtpdServer
from twisted.application.service import MultiService
from twisted.internet.task import deferLater
from twisted.python import usage

from txsmtpclient import tap

REPO = Path(__file__).resolve().parent.parent
SENDER = "sender@example.test"
TOKEN = "e2e-token-6f1c0a"
MESSAGE = (
    "From: sender@example.test\r\nTo: a@example.test\r\nSubject: via the API\r\n"
    "Message-ID: <api-1@example.test>\r\n\r\nSent through POST /v1/messages.\r\n"
)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class Http:
    """A small JSON client over twisted.web.client.Agent."""

    def __init__(self, base: str, token: str | None) -> None:
        from twisted.web.client import Agent

        self.agent = Agent(_reactor())
        self.base = base
        self.token = token

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        token: str | None = "default",
    ) -> tuple[int, bytes, Any]:
        from twisted.web.client import FileBodyProducer, readBody
        from twisted.web.http_headers import Headers

        sent = Headers()
        use = self.token if token == "default" else token
        if use is not None:
            sent.addRawHeader(b"authorization", f"Bearer {use}".encode())
        for name, value in (headers or {}).items():
            sent.addRawHeader(name.encode(), value.encode())
        producer = None
        if body is not None:
            sent.addRawHeader(b"content-type", b"application/json")
            producer = FileBodyProducer(io.BytesIO(json.dumps(body).encode()))
        response = await self.agent.request(
            method.encode(), (self.base + path).encode(), sent, producer
        )
        data = await readBody(response)
        return response.code, data, response.headers


async def _until(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(_reactor(), 0.05, lambda: None)


def _options(tmp_path: Path, relay: str, *extra: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(  # type: ignore[no-untyped-call]
        [
            "--relay",
            relay,
            "--spool",
            str(tmp_path / "spool"),
            "--tls",
            "never",
            "--poll-interval",
            "0.1",
            "--grace",
            "5",
            *extra,
        ]
    )
    return options


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_control_plane_over_http(smtp_server: AiosmtpdServer, tmp_path: Path) -> None:
    """
    Over real HTTP: the token is required, an enqueue with an Idempotency-Key
    is stored once and delivered byte for byte, the message shows its
    attempt, and /metrics counts the delivery.
    """
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    service = tap.makeService(
        _options(
            tmp_path,
            smtp_server.address,
            "--control-port",
            "tcp:0:interface=127.0.0.1",
            "--control-token-file",
            str(token_file),
        )
    )
    assert isinstance(service, MultiService)
    service.startService()
    try:
        control: Any = service.getServiceNamed("control")
        port = await control.when_listening()
        http = Http(f"http://127.0.0.1:{port.getHost().port}", TOKEN)

        code, raw, headers = await http.request("GET", "/v1/stats", token=None)
        assert code == 401 and json.loads(raw)["field"] == "Authorization"
        code, raw, _ = await http.request("GET", "/metrics", token="wrong")
        assert code == 401
        code, raw, _ = await http.request("GET", "/nonexistent")
        assert code == 404 and b"Traceback" not in raw

        body = {"from": SENDER, "to": ["a@example.test"], "message": MESSAGE}
        key = {"Idempotency-Key": "e2e-1"}
        code, raw, headers = await http.request("POST", "/v1/messages", body, key)
        assert code == 201, raw
        assert headers.getRawHeaders(b"content-type") == [b"application/json"]
        entry_id = json.loads(raw)["id"]
        code, raw, _ = await http.request("POST", "/v1/messages", body, key)
        assert (code, json.loads(raw)["id"]) == (201, entry_id)

        messages = await smtp_server.when_messages(1, timeout=10, reactor=_reactor())
        assert messages[0].content == MESSAGE.encode()
        assert messages[0].rcpt_tos == ("a@example.test",)

        async def delivered() -> bool:
            code, raw, _ = await http.request("GET", f"/v1/messages/{entry_id}")
            return code == 200 and json.loads(raw)["state"] == "done"

        await _until(delivered, "the entry to be done")
        code, raw, _ = await http.request("GET", f"/v1/messages/{entry_id}")
        shown = json.loads(raw)
        assert [a["code"] for a in shown["attempts"]] == [250]
        assert shown["attempts"][0]["relay"] == smtp_server.address

        code, raw, _ = await http.request("GET", "/v1/messages", None)
        assert [m["id"] for m in json.loads(raw)["messages"]] == [entry_id]
        code, raw, _ = await http.request("GET", "/v1/stats")
        assert json.loads(raw)["counts"]["done"] == 1

        code, raw, headers = await http.request("GET", "/metrics")
        assert code == 200
        assert headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
        text = raw.decode()
        for line in (
            'txsmtp_delivery_attempts_total{code_class="2xx",outcome="delivered"} 1.0',
            "txsmtp_delivery_latency_seconds_count 1.0",
            'txsmtp_queue_entries{state="done"} 1.0',
            'txsmtp_queue_entries{state="held"} 0.0',
            "txsmtp_retries_total 0.0",
            "txsmtp_set_aside_entries_total 0.0",
            "txsmtp_in_flight 0.0",
            "txsmtp_pool_connections ",
            "txsmtp_pool_idle_connections ",
            "txsmtp_pool_waiting_sends 0.0",
        ):
            assert line in text, line
        # Only the daemon's own registry: nothing from the process-wide one.
        assert "python_gc_objects_collected_total" not in text
        assert len(smtp_server.messages) == 1
    finally:
        await service.stopService()


def test_control_options_are_checked_before_start(tmp_path: Path) -> None:
    """Bad control settings are one-line usage errors from the option parser."""
    token_file = tmp_path / "token"
    token_file.write_text("t0k3n\n")
    cases = [
        (["--control-port", "tcp:8025"], "--control-port 'tcp:8025' is reachable"),
        (["--control-port", "8025", "--control-token-file", str(tmp_path / "none")], "cannot"),
        (["--control-token-file", str(token_file)], "needs --control-port"),
        (["--control-port", "tls:8025", "--control-token-file", str(token_file)], "ssl:"),
    ]
    for extra, message in cases:
        with pytest.raises(usage.UsageError, match=message) as caught:
            _options(tmp_path, "127.0.0.1:2525", *extra)
        assert "\n" not in str(caught.value)
    options = _options(
        tmp_path,
        "127.0.0.1:2525",
        "--control-port",
        "tcp:0",
        "--control-token-file",
        str(token_file),
    )
    assert options.settings["control_token"] == b"t0k3n"
    assert not options.settings["control_port"].local
    built = tap.makeService(options)
    assert built.getServiceNamed("control") is not None


def test_twist_refuses_open_control_port_without_traceback(tmp_path: Path) -> None:
    """`twist txsmtp --control-port tcp:8025` exits non-zero with one line and no traceback."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "twisted",
            "txsmtp",
            "--spool",
            str(tmp_path / "spool"),
            "--control-port",
            "tcp:8025",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert "--control-port 'tcp:8025' is reachable from other machines" in (
        result.stderr + result.stdout
    )


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_unix_socket_control_port_is_private(tmp_path: Path) -> None:
    """A Unix socket control port is made mode 600, so only its owner can steer the daemon."""
    import stat

    socket_path = tmp_path / "control.sock"
    service = tap.makeService(
        _options(tmp_path, "127.0.0.1:2525", "--control-port", f"unix:{socket_path}")
    )
    with warnings.catch_warnings():
        # Twisted's listenUNIX compares the bytes path with "\0" (a str),
        # which python -bb makes an error; it is Twisted's, not ours.
        warnings.simplefilter("ignore", BytesWarning)
        service.startService()
    try:
        control: Any = service.getServiceNamed("control")
        await control.when_listening()
        assert stat.S_ISSOCK(socket_path.stat().st_mode)
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
        from twisted.internet.endpoints import UNIXClientEndpoint
        from twisted.web.client import Agent, readBody

        class ToSocket:
            def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
                return UNIXClientEndpoint(_reactor(), str(socket_path))

        agent = Agent.usingEndpointFactory(_reactor(), ToSocket())
        response = await agent.request(b"GET", b"http://control/v1/stats")
        body = json.loads(await readBody(response))
        assert (response.code, body["counts"]["queue"]) == (200, 0)
    finally:
        with warnings.catch_warnings():
            # Closing the socket makes the same comparison.
            warnings.simplefilter("ignore", BytesWarning)
            await service.stopService()
        assert not socket_path.exists()
