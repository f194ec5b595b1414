"""
Tests for the control plane (:mod:`txsmtpclient.control`) in memory: the
resource tree rendered with ``DummyRequest`` (and whole HTTP requests parsed
by the real site over a ``StringTransport``), the spool service on a
:class:`Clock` with spool calls run in line and a sender the tests fire.
"""

from __future__ import annotations

import hmac
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_service import MESSAGE, NOW, HeldSender, clock, service_for, spool
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource, getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from txsmtpclient.control import _web
from txsmtpclient.control.api import ROUTES, ApiResource
from txsmtpclient.control.openapi import openapi_spec
from txsmtpclient.control.server import ControlPortError, check_control_port, make_site, read_token
from txsmtpclient.spool.envelope import State
from txsmtpclient.spool.service import SpoolService, StatusResource
from txsmtpclient.spool.store import Spool

TOKEN = b"s3cret-token-0123456789"
AUTH = {b"authorization": b"Bearer " + TOKEN}
SENDER = "f@example.test"

# The service tests' fixtures, used here by name.
__all__ = ["clock", "spool"]


class Control:
    """The site's root over a service on a Clock, and a way to ask it things."""

    def __init__(self, spool: Spool, clock: Clock, *, token: bytes | None = TOKEN) -> None:
        self.spool = spool
        self.clock = clock
        self.sender = HeldSender()
        self.service: SpoolService = service_for(spool, clock, self.sender, concurrency=1)
        self.site = make_site(self.service, token=token, max_body=4096)
        self.root: IResource = self.site.resource

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[bytes, bytes] | None = None,
        query: dict[str, str] | None = None,
    ) -> tuple[int, Any, Headers]:
        request = DummyRequest([p.encode() for p in path.lstrip("/").split("/")])
        request.method = method.encode()
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        request.content = io.BytesIO(b"" if body is None else raw)  # type: ignore[attr-defined]
        for name, value in (AUTH if headers is None else headers).items():
            request.requestHeaders.addRawHeader(name, value)
        request.args = {k.encode(): [v.encode()] for k, v in (query or {}).items()}
        resource = getChildForRequest(self.root, request)
        result = resource.render(request)
        if result is not NOT_DONE_YET:
            request.write(result)
            request.finish()
        assert request.finished, "the answer should be written at once with in-line spool calls"
        data = b"".join(request.written)
        assert request.responseCode is not None
        return request.responseCode, json.loads(data), request.responseHeaders

    def enqueue(self, **fields: Any) -> str:
        body = {"from": SENDER, "to": ["a@example.test"], "message": MESSAGE.decode()}
        if "message_base64" in fields:
            del body["message"]
        code, answer, _ = self.call("POST", "/v1/messages", {**body, **fields})
        assert code == 201, answer
        entry_id: str = answer["id"]
        return entry_id


@pytest.fixture
def control(spool: Spool, clock: Clock) -> Control:
    return Control(spool, clock)


def test_token_missing_or_wrong_is_401(control: Control, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the right bearer token every path answers 401; the check is hmac.compare_digest."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(_web.hmac, "compare_digest", spy)  # type: ignore[attr-defined]
    for headers in (
        {},
        {b"authorization": b"Bearer wrong"},
        {b"authorization": b"Basic " + TOKEN},
        {b"authorization": b"Bearer " + TOKEN[:-1]},
    ):
        for path in ("/v1/stats", "/metrics", "/nonexistent"):
            code, body, response = control.call("GET", path, headers=headers)
            assert (code, body["field"]) == (401, "Authorization")
            assert response.getRawHeaders(b"www-authenticate") == [b'Bearer realm="txsmtp"']
    assert len(compared) == 12
    assert all(expected == TOKEN for _, expected in compared)
    code, body, _ = control.call("GET", "/v1/stats")
    assert code == 200 and body["relay"] == "relay.test:25"
    assert compared[-1] == (TOKEN, TOKEN)


def test_no_token_configured_lets_requests_through(spool: Spool, clock: Clock) -> None:
    """Without a token (a loopback or Unix socket port) no Authorization is needed."""
    control = Control(spool, clock, token=None)
    code, body, _ = control.call("GET", "/v1/stats", headers={})
    assert code == 200 and body["counts"]["queue"] == 0


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/nonexistent",
        "/v1",
        "/v1/nope",
        "/v1/messages/6615ae2d8caa3-7967-af987231/frob",
        "/v1/messages/not-an-id",
        "/v1/messages/6615ae2d8caa3-7967-af987231",
        "/metrics/extra",
    ],
)
def test_unknown_paths_are_404(control: Control, path: str) -> None:
    """Unknown paths, malformed ids and absent entries answer a JSON 404."""
    code, body, response = control.call("GET", path)
    assert code == 404, body
    assert set(body) == {"error", "field"}
    assert response.getRawHeaders(b"content-type") == [b"application/json"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/messages", b"GET, POST"),
        ("PUT", "/v1/messages/6615ae2d8caa3-7967-af987231", b"GET"),
        ("GET", "/v1/messages/6615ae2d8caa3-7967-af987231/hold", b"POST"),
        ("POST", "/v1/stats", b"GET"),
        ("POST", "/metrics", b"GET"),
    ],
)
def test_wrong_method_is_405_with_allow(
    control: Control, method: str, path: str, allow: bytes
) -> None:
    """A known path with another method answers 405 naming the allowed ones."""
    code, body, response = control.call(method, path, {})
    assert (code, body["field"]) == (405, "method")
    assert response.getRawHeaders(b"allow") == [allow]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        ([1, 2], "body"),
        ({"to": ["a@x"], "message": "x"}, "from"),
        ({"from": 5, "to": ["a@x"], "message": "x"}, "from"),
        ({"from": "a b@x", "to": ["a@x"], "message": "x"}, "from"),
        ({"from": "", "message": "x"}, "to"),
        ({"from": "", "to": [], "message": "x"}, "to"),
        ({"from": "", "to": ["a@x\r\nRSET"], "message": "x"}, "to"),
        ({"from": "", "to": ["a@x"]}, "message"),
        ({"from": "", "to": ["a@x"], "message": "x", "message_base64": "eA=="}, "message"),
        ({"from": "", "to": ["a@x"], "message_base64": "***"}, "message_base64"),
        ({"from": "", "to": ["a@x"], "message": "x", "mail_options": ["A B"]}, "mail_options"),
        ({"from": "", "to": ["a@x"], "message": "x", "rcpt_options": "X\n"}, "rcpt_options"),
        ({"from": "", "to": ["a@x"], "message": "x", "dsn": {"ret": "ALL"}}, "dsn"),
        ({"from": "", "to": ["a@x"], "message": "x", "at": "tomorrowish"}, "at"),
        ({"from": "", "to": ["a@x"], "message": "x", "at": True}, "at"),
        ({"from": "", "to": ["a@x"], "message": "x", "in": "-5m"}, "in"),
        ({"from": "", "to": ["a@x"], "message": "x", "in": 5, "at": 5}, "in"),
        ({"from": "", "to": ["a@x"], "message": "x", "cron": "61 * * * *"}, "cron"),
        ({"from": "", "to": ["a@x"], "message": "x", "timezone": "Mars/Olympus"}, "timezone"),
        ({"from": "", "to": ["a@x"], "message": "x", "colour": "red"}, "colour"),
    ],
)
def test_bad_enqueue_is_400_naming_the_field(control: Control, body: Any, field: str) -> None:
    """Each bad enqueue body answers 400 with the member at fault, and stores nothing."""
    code, answer, _ = control.call("POST", "/v1/messages", body)
    assert (code, answer["field"]) == (400, field), answer
    assert control.spool.counts()["queue"] == 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"state": "corrupt"}, "state"),
        ({"state": "nope"}, "state"),
        ({"limit": "0"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"cursor": "garbage"}, "cursor"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_list_query_is_400(control: Control, query: dict[str, str], field: str) -> None:
    """A bad list query answers 400 naming the parameter."""
    code, answer, _ = control.call("GET", "/v1/messages", query=query)
    assert (code, answer["field"]) == (400, field)


def test_bad_idempotency_key_is_400(control: Control) -> None:
    """An Idempotency-Key that is empty, too long or not ASCII is refused by name."""
    body = {"from": "", "to": ["a@x"], "message": "x"}
    for key in (b"", b"k" * 256, "clé".encode()):
        code, answer, _ = control.call(
            "POST", "/v1/messages", body, headers={**AUTH, b"idempotency-key": key}
        )
        assert (code, answer["field"]) == (400, "Idempotency-Key")
    assert control.spool.counts()["queue"] == 0


def _raw_http(control: Control, request: bytes) -> bytes:
    """Feed one raw HTTP request to the real site over a StringTransport."""
    protocol = control.site.buildProtocol(  # type: ignore[no-untyped-call]
        IPv4Address("TCP", "127.0.0.1", 40000)
    )
    assert protocol is not None
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(request)
    data: bytes = transport.value()
    protocol.connectionLost(None)
    return data


def test_request_body_over_the_cap_is_413(control: Control) -> None:
    """A body over the site's cap (declared or chunked) answers 413 and stores nothing."""
    head = b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN + b"\r\n"
    big = b"x" * 5000
    declared = _raw_http(control, head + b"Content-Length: 5000\r\n\r\n" + big)
    assert declared.startswith(b"HTTP/1.1 413 ")
    assert json.loads(declared.split(b"\r\n\r\n", 1)[1])["field"] == "body"
    chunked = b"".join(b"%x\r\n%s\r\n" % (1000, b"y" * 1000) for _ in range(5)) + b"0\r\n\r\n"
    answer = _raw_http(control, head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert control.spool.counts()["queue"] == 0
    small = json.dumps({"from": "", "to": ["a@x"], "message": "hi"}).encode()
    ok = _raw_http(control, head + b"Content-Length: %d\r\n\r\n" % len(small) + small)
    assert ok.startswith(b"HTTP/1.1 201 ")


def test_idempotency_key_returns_first_id_and_one_copy(control: Control) -> None:
    """Two enqueues with one Idempotency-Key give one id and one entry on disk."""
    body = {"from": SENDER, "to": ["a@example.test"], "message": "one", "in": 60}
    headers = {**AUTH, b"idempotency-key": b"order-1234"}
    first = control.call("POST", "/v1/messages", body, headers=headers)
    second = control.call("POST", "/v1/messages", {**body, "message": "two"}, headers=headers)
    assert first[0] == second[0] == 201
    assert first[1]["id"] == second[1]["id"]
    assert control.spool.counts()["queue"] == 1
    assert len(list((Path(control.spool.path) / "msg").iterdir())) == 1
    assert control.spool.read_message(first[1]["id"]) == b"one"
    third = control.call("POST", "/v1/messages", body, headers={**AUTH, b"idempotency-key": b"2"})
    assert third[1]["id"] != first[1]["id"]


def test_enqueue_fields_reach_the_spool(control: Control) -> None:
    """Envelope, options, DSN and schedule given as JSON are what the spool stores."""
    entry_id = control.enqueue(
        to=["a@example.test", "b@example.test"],
        message_base64="SGk=",
        mail_options=["SMTPUTF8"],
        rcpt_options=["NOTIFY=NEVER"],
        dsn={"ret": "HDRS", "envid": "e1", "notify": "FAILURE,DELAY"},
        at="2027-01-15T09:30:00+00:00",
    )
    entry = control.spool.get(entry_id)
    assert entry.recipients[1].address == "b@example.test"
    assert (entry.mail_options, entry.rcpt_options) == (("SMTPUTF8",), ("NOTIFY=NEVER",))
    assert entry.dsn is not None and entry.dsn.notify == ("FAILURE", "DELAY")
    assert entry.due == 1_800_005_400.0
    assert control.spool.read_message(entry_id) == b"Hi"
    recurring = control.enqueue(cron="0 9 * * *", timezone="Europe/Paris")
    assert control.spool.get(recurring).recurrence is not None
    later = control.enqueue(**{"in": "10m"})
    assert control.spool.get(later).due == NOW + 600


def test_held_message_is_not_sent_until_released(control: Control) -> None:
    """A held entry is never sent however long the daemon runs; release sends it."""
    control.service.startService()
    entry_id = control.enqueue(**{"in": 30})
    code, body, _ = control.call("POST", f"/v1/messages/{entry_id}/hold")
    assert (code, body["state"]) == (200, "held")
    for _ in range(120):
        control.clock.advance(1)
    assert control.sender.sends == []
    code, body, _ = control.call("GET", "/v1/messages", query={"state": "held"})
    assert [m["id"] for m in body["messages"]] == [entry_id]
    code, body, _ = control.call("POST", f"/v1/messages/{entry_id}/hold")
    assert (code, body["field"]) == (409, "id")
    code, body, _ = control.call("POST", f"/v1/messages/{entry_id}/release")
    assert (code, body["state"]) == (200, "queue")
    # Release wakes the service: the due entry goes at once, no poll needed.
    assert [to for to, _ in control.sender.sends] == [["a@example.test"]]
    control.sender.accept(0)
    assert control.spool.get(entry_id).state is State.DONE
    code, body, _ = control.call("GET", f"/v1/messages/{entry_id}")
    assert (code, body["state"], body["attempts"][0]["code"]) == (200, "done", 250)
    control.service.stopService()


def test_cancel_retry_reschedule(control: Control) -> None:
    """cancel, retry and reschedule move the entry; wrong states answer 409."""
    entry_id = control.enqueue(**{"in": 3600})
    path = f"/v1/messages/{entry_id}"
    code, body, _ = control.call("POST", path + "/reschedule", {"in": "2h"})
    assert (code, body["due"]) == (200, NOW + 7200)
    assert control.spool.get(entry_id).due == NOW + 7200
    code, body, _ = control.call("POST", path + "/reschedule", {"at": NOW + 60})
    assert body["due"] == NOW + 60
    for bad, field in (({}, "at"), ({"when": 1}, "when"), ([], "body"), ({"in": "x"}, "in")):
        code, body, _ = control.call("POST", path + "/reschedule", bad)
        assert (code, body["field"]) == (400, field)
    code, body, _ = control.call("POST", path + "/hold")
    code, body, _ = control.call("POST", path + "/reschedule", {"in": 10})
    assert (code, body["state"], body["due"]) == (200, "held", NOW + 10)
    with capturedLogs() as events:
        code, body, _ = control.call("POST", path + "/cancel")
    assert (code, body["state"]) == (200, "cancelled")
    assert [(e["action"], e["id"], e["state"]) for e in events if "action" in e] == [
        ("cancel", entry_id, "cancelled")
    ]
    code, body, _ = control.call("POST", path + "/cancel")
    assert code == 409 and "cancelled" in body["error"]
    code, body, _ = control.call("POST", path + "/reschedule", {"in": 10})
    assert code == 409
    code, body, _ = control.call("POST", path + "/retry")
    assert (code, body["state"], body["due"]) == (200, "queue", NOW)
    code, body, _ = control.call("POST", "/v1/messages/6615ae2d8caa3-7967-af987231/retry")
    assert (code, body["field"]) == (404, "id")


def test_list_pages_with_a_cursor(control: Control) -> None:
    """Pages of `limit` entries in due order; the last page's cursor is null."""
    ids = [control.enqueue(**{"in": 100 - i}) for i in range(5)]
    expected = list(reversed(ids))
    seen: list[str] = []
    query: dict[str, str] = {"limit": "2", "state": "queue"}
    pages = 0
    while True:
        code, body, _ = control.call("GET", "/v1/messages", query=query)
        assert code == 200
        seen += [m["id"] for m in body["messages"]]
        pages += 1
        if body["next_cursor"] is None:
            break
        query["cursor"] = body["next_cursor"]
    assert (seen, pages) == (expected, 3)
    code, body, _ = control.call("GET", "/v1/messages", query={"state": "done"})
    assert (code, body) == (200, {"messages": [], "next_cursor": None})


def test_unexpected_error_is_a_bare_json_500(control: Control) -> None:
    """A bug answers 500 with no traceback or detail; the log has the failure."""

    def broken() -> dict[str, int]:
        raise RuntimeError("secret internal detail")

    control.spool.counts = broken  # type: ignore[method-assign]
    with capturedLogs() as events:
        code, body, _ = control.call("GET", "/v1/stats")
    assert code == 500
    text = json.dumps(body)
    assert "secret" not in text and "Traceback" not in text and "RuntimeError" not in text
    assert any(e.get("log_failure") is not None for e in events)


def test_requests_wait_for_startup_recovery(spool: Spool, clock: Clock) -> None:
    """While start-up recovery runs, an API call waits; it is answered once recovery ends."""
    recovering: list[Deferred[Any]] = []

    def blocking(f: Callable[..., Any], /, *args: Any) -> Deferred[Any]:
        if f == spool.recover:
            d: Deferred[Any] = Deferred()
            recovering.append(d)
            return d.addCallback(lambda _: f(*args))
        return maybeDeferred(f, *args)

    sender = HeldSender()
    service = SpoolService(
        spool, sender, relay="relay.test:25", clock=clock, blocking=blocking, concurrency=1
    )
    site = make_site(service, token=None)
    service.startService()
    request = DummyRequest([b"v1", b"messages"])
    resource = getChildForRequest(site.resource, request)
    assert resource.render(request) == NOT_DONE_YET
    assert request.finished == 0
    recovering[0].callback(None)
    assert request.finished == 1
    assert json.loads(b"".join(request.written)) == {"messages": [], "next_cursor": None}
    service.stopService()


def test_unwritable_answer_is_a_json_500(
    control: Control, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer that cannot be written as JSON (a bug) still finishes the request: 500."""

    async def odd(self: ApiResource, request: Any, params: Any) -> tuple[int, Any]:
        return 200, {"value": object()}

    monkeypatch.setattr(ApiResource, "stats", odd)
    code, body, _ = control.call("GET", "/v1/stats")
    assert (code, body["field"]) == (500, None)


def test_render_error_is_a_json_500(control: Control, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resource raising while rendering still answers JSON 500, no HTML, no traceback."""

    def explode(self: ApiResource, request: Any) -> bytes:
        raise RuntimeError("secret render detail")

    monkeypatch.setattr(ApiResource, "render", explode)
    with capturedLogs() as events:
        answer = _raw_http(
            control,
            b"GET /v1/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN + b"\r\n\r\n",
        )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 ")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body) == {
        "error": "internal error; the daemon's log has the details",
        "field": None,
    }
    assert b"secret" not in answer and b"Traceback" not in answer
    assert any(e.get("log_failure") is not None for e in events)


def test_openapi_describes_exactly_the_routes(control: Control) -> None:
    """Every route in the resource tree is in the OpenAPI description, and the reverse."""
    served: set[tuple[str, str]] = set()
    for name, child in control.root.children.items():  # type: ignore[attr-defined]
        if isinstance(child, ApiResource):
            served |= {(f"/{name.decode()}{r.path}", r.method.lower()) for r in ROUTES}
        else:
            served.add((f"/{name.decode()}", "get"))
    spec = openapi_spec()
    described = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert served == described
    assert len(served) == len(ROUTES) + 1
    code, body, _ = control.call("GET", "/v1/openapi.json")
    assert (code, body["openapi"], body["paths"].keys()) == (200, "3.0.3", spec["paths"].keys())


def test_status_port_answers_404_off_its_root(spool: Spool, clock: Clock) -> None:
    """The older --status-port resource serves / only: /nonexistent is 404."""
    service = service_for(spool, clock, HeldSender())
    request = DummyRequest([b"nonexistent"])
    result = StatusResource(service).render_GET(request)  # type: ignore[arg-type]
    assert result == b'{"error": "not found"}\n'
    assert request.responseCode == 404


@pytest.mark.parametrize(
    ("description", "has_token", "listen", "local"),
    [
        ("8025", False, "tcp:8025:interface=127.0.0.1", True),
        ("tcp:8025:interface=127.0.0.1", False, "tcp:8025:interface=127.0.0.1", True),
        ("tcp:0:127.0.0.2", False, "tcp:0:127.0.0.2", True),
        ("tcp6:8025:interface=\\:\\:1", False, "tcp6:8025:interface=\\:\\:1", True),
        ("unix:/run/c.sock", False, "unix:/run/c.sock:mode=600", True),
        ("unix:/run/c.sock:mode=660", False, "unix:/run/c.sock:mode=660", True),
        ("tcp:8025", True, "tcp:8025", False),
        ("tcp:8025:interface=0.0.0.0", True, "tcp:8025:interface=0.0.0.0", False),
        # Read as Twisted reads them: keywords for positional arguments.
        ("tcp:port=8025:interface=127.0.0.1", False, "tcp:port=8025:interface=127.0.0.1", True),
        ("unix:address=/run/c.sock", False, "unix:address=/run/c.sock:mode=600", True),
        ("unix:/run/c.sock:mode=0600", False, "unix:/run/c.sock:mode=0600", True),
    ],
)
def test_check_control_port_accepts(
    description: str, has_token: bool, listen: str, local: bool
) -> None:
    """Loopback and Unix sockets need no token; anything reachable from afar needs one."""
    plan = check_control_port(description, has_token=has_token)
    assert (plan.description, plan.local, plan.tls) == (listen, local, False)


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ("tcp:8025", "reachable from other machines"),
        ("tcp:8025:interface=192.0.2.1", "reachable from other machines"),
        ("tcp6:8025", "reachable from other machines"),
        ("tcp:8025:interface=localhost", "reachable from other machines"),
        ("tcp:port=8025", "reachable from other machines"),
        ("tcp:8025:bogus=1", ": got an unexpected keyword argument 'bogus'$"),
        ("systemd:domain=INET:index=0", "systemd passed this process no socket"),
        ("tcp:http", "invalid literal"),
        ("tcp:70000:interface=127.0.0.1", "port number"),
        ("unix:", "socket path"),
        ("tls:8025", "ssl:PORT:privateKey"),
        (
            "ssl:8025:privateKey=/nonexistent/key.pem:interface=127.0.0.1",
            "cannot read /nonexistent",
        ),
    ],
)
def test_check_control_port_refuses(description: str, message: str) -> None:
    """Unsafe or unusable descriptions are refused with a one-line reason."""
    with pytest.raises(ControlPortError, match=message) as caught:
        check_control_port(description, has_token=False)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("has_token", "outcome"), [(True, "local=False"), (False, "reachable")])
def test_systemd_control_port_needs_a_token(has_token: bool, outcome: str) -> None:
    """
    A socket systemd passes in (its type is not one whose interface can be
    read) is taken as reachable from other machines: it needs a token.  Run
    in a process given LISTEN_FDS, as systemd starts one.
    """
    code = (
        "from txsmtpclient.control.server import ControlPortError, check_control_port\n"
        "try:\n"
        f"    plan = check_control_port('systemd:domain=INET:index=0', has_token={has_token})\n"
        "    print(f'local={plan.local}')\n"
        "except ControlPortError as e:\n"
        "    print(e)\n"
    )
    result = subprocess.run(
        [
            "sh",
            "-c",
            'LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=control exec "$0" -c "$1"',
            sys.executable,
            code,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)),
    )
    assert outcome in result.stdout, result.stdout + result.stderr


def test_ssl_control_port_with_readable_files(tmp_path: Path, tls_files: Any) -> None:
    """An ssl: port naming readable key and certificate files is TLS and accepted."""
    description = (
        f"ssl:8025:privateKey={tls_files.key_path}:certKey={tls_files.cert_path}:"
        "interface=127.0.0.1"
    )
    plan = check_control_port(description, has_token=False)
    assert (plan.tls, plan.local) == (True, True)


def test_read_token(tmp_path: Path) -> None:
    """The token is the file's first line; a missing, empty or spaced one is refused."""
    good = tmp_path / "token"
    good.write_bytes(b"abc-123\nignored\n")
    assert read_token(str(good)) == b"abc-123"
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n")
    spaced = tmp_path / "spaced"
    spaced.write_bytes(b"a b\n")
    for path, message in (
        (tmp_path / "none", "cannot read"),
        (empty, "no token"),
        (spaced, "printable ASCII"),
    ):
        with pytest.raises(ControlPortError, match=message):
            read_token(str(path))
