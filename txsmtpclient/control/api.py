"""
The control plane's JSON API under ``/v1/``: list, show and enqueue
messages; hold, release, retry, cancel and reschedule one; queue
statistics; and this API's OpenAPI description.

:data:`ROUTES` is the whole API: :class:`ApiResource` dispatches on it, and
:mod:`.openapi` describes exactly these routes (a test holds them equal).
Every spool call, and every parse of a request body, runs off the reactor
thread through :meth:`~txsmtpclient.spool.service.SpoolService.run_blocking`.
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from txsmtpclient.control._input import (
    LISTABLE_STATES,
    decode_cursor,
    encode_cursor,
    idempotency_key,
    parse_enqueue,
    parse_when,
    sort_key,
    summary,
)
from txsmtpclient.control._web import ApiError, read_body, respond
from txsmtpclient.spool.codec import entry_json
from txsmtpclient.spool.envelope import Entry, EnvelopeError, State, is_valid_id
from txsmtpclient.spool.queue import EntryBusy, EntryNotFound, EntryStateError, SpoolFull
from txsmtpclient.spool.schedule import ScheduleError
from txsmtpclient.spool.service import SpoolService

__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "ROUTES", "ApiResource", "Route"]

T = TypeVar("T")

#: Entries per page of ``GET /v1/messages`` unless ``limit`` says otherwise.
DEFAULT_PAGE = 100
#: The largest ``limit``.
MAX_PAGE = 1000

Answer = tuple[int, Any]


@dataclass(frozen=True, slots=True)
class Route:
    """
    One operation: an HTTP method on a path template under ``/v1``
    (``{id}`` matches one path segment), handled by the :class:`ApiResource`
    method named ``handler``.
    """

    method: str
    path: str
    handler: str

    @property
    def segments(self) -> tuple[str, ...]:
        """
        The path's segments, ``("messages", "{id}", "hold")``.
        """
        return tuple(self.path.strip("/").split("/"))


#: Every operation of the API, in the order the OpenAPI description lists them.
ROUTES: tuple[Route, ...] = (
    Route("GET", "/messages", "list_messages"),
    Route("POST", "/messages", "enqueue"),
    Route("GET", "/messages/{id}", "show"),
    Route("POST", "/messages/{id}/hold", "hold"),
    Route("POST", "/messages/{id}/release", "release"),
    Route("POST", "/messages/{id}/retry", "retry"),
    Route("POST", "/messages/{id}/cancel", "cancel"),
    Route("POST", "/messages/{id}/reschedule", "reschedule"),
    Route("GET", "/stats", "stats"),
    Route("GET", "/openapi.json", "openapi"),
)


def _match(route: Route, parts: tuple[str, ...]) -> dict[str, str] | None:
    segments = route.segments
    if len(segments) != len(parts):
        return None
    params: dict[str, str] = {}
    for template, part in zip(segments, parts, strict=True):
        if template.startswith("{"):
            params[template.strip("{}")] = part
        elif template != part:
            return None
    return params


class ApiResource(Resource):
    """
    ``/v1``: dispatches each request on :data:`ROUTES`; unknown paths get
    404, a known path with another method 405 with ``Allow``.

    :param service: the daemon's spool service: its queue, its blocking
        runner, its clock, and :meth:`~.SpoolService.wake` after a change
        that makes an entry due.
    :param spec: the OpenAPI document served at ``/v1/openapi.json``.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, service: SpoolService, spec: Mapping[str, Any]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.service = service
        self.spec = spec

    def render(self, request: Request) -> bytes:
        """
        Find the route and run its handler; the answer is written when ready.
        """
        return respond(request, functools.partial(self._dispatch, request))  # type: ignore[return-value]

    async def _dispatch(self, request: Request) -> Answer:
        raw = list(request.postpath or [])
        if raw and raw[-1] == b"":
            raw.pop()  # "/v1/messages/" names "/v1/messages"
        try:
            parts = tuple(p.decode("ascii") for p in raw)
        except UnicodeDecodeError:
            parts = ("\ufffd",)
        matches = [(r, p) for r in ROUTES if (p := _match(r, parts)) is not None]
        if not matches:
            raise ApiError(404, f"no such resource: /v1/{'/'.join(parts)}", field="path")
        method = request.method.decode("ascii", "replace")
        for route, params in matches:
            if route.method == method:
                handler: Callable[[Request, dict[str, str]], Awaitable[Answer]]
                handler = getattr(self, route.handler)
                return await handler(request, params)
        allowed = sorted({r.method for r, _ in matches})
        raise ApiError(
            405,
            f"{method} is not allowed here; use {' or '.join(allowed)}",
            field="method",
            headers={b"allow": ", ".join(allowed).encode("ascii")},
        )

    # -- spool calls ------------------------------------------------------------

    async def _call(self, f: Callable[..., T], /, *args: Any) -> T:
        """
        Run a blocking call off the reactor thread, once the service's
        start-up recovery is over (it moves this process's held entries),
        turning the spool's errors into API errors.
        """
        if self.service.running:
            await self.service.when_ready()
        try:
            return await self.service.run_blocking(f, *args)
        except EntryNotFound as e:
            raise ApiError(404, str(e), field="id") from None
        except (EntryBusy, EntryStateError) as e:
            raise ApiError(409, str(e), field="id") from None
        except SpoolFull as e:
            raise ApiError(
                503, f"{e.strerror or e}; try again later", headers={b"retry-after": b"60"}
            ) from None
        except (EnvelopeError, ScheduleError) as e:
            raise ApiError(400, str(e)) from None

    @staticmethod
    def _id(params: dict[str, str]) -> str:
        entry_id = params["id"]
        if not is_valid_id(entry_id):
            raise ApiError(404, f"not a spool id: {entry_id!r}", field="id")
        return entry_id

    async def _change(self, f: Callable[[str], Entry], params: dict[str, str]) -> Answer:
        entry = await self._call(f, self._id(params))
        self._changed(f.__name__, entry)
        return 200, summary(entry)

    def _changed(self, action: str, entry: Entry) -> None:
        # An operator's change is worth a line in the daemon's log.
        self.log.info(
            "Control plane: {action} {id}: now {state}, due {due}",
            action=action,
            id=entry.id,
            state=entry.state.value,
            due=entry.due,
        )
        if entry.state is State.QUEUED:
            self.service.wake()

    # -- handlers ---------------------------------------------------------------

    async def list_messages(self, request: Request, params: dict[str, str]) -> Answer:
        """
        ``GET /v1/messages?state=&limit=&cursor=``: a page of entries in the
        spool's order, and the cursor of the next page (``null`` at the end).
        """
        args: dict[bytes, builtins.list[bytes]] = request.args or {}
        query: dict[str, str] = {}
        for name, values in args.items():
            key = name.decode("ascii", "replace")
            if key not in ("state", "limit", "cursor"):
                raise ApiError(400, f"unknown query parameter {key!r}", field=key)
            query[key] = values[-1].decode("utf-8", "replace")
        state: State | None = None
        if "state" in query:
            if query["state"] not in LISTABLE_STATES:
                raise ApiError(
                    400,
                    f"state: expected one of {', '.join(LISTABLE_STATES)}",
                    field="state",
                )
            state = State(query["state"])
        try:
            limit = int(query.get("limit", DEFAULT_PAGE))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PAGE:
            raise ApiError(400, f"limit: expected a whole number 1 to {MAX_PAGE}", field="limit")
        after = decode_cursor(query["cursor"]) if "cursor" in query else None

        def page() -> tuple[builtins.list[Entry], bool]:
            entries = sorted(self.service.queue.list(state), key=sort_key)
            if after is not None:
                entries = [e for e in entries if sort_key(e) > after]
            return entries[:limit], len(entries) > limit

        entries, more = await self._call(page)
        return 200, {
            "messages": [summary(e) for e in entries],
            "next_cursor": encode_cursor(sort_key(entries[-1])) if more else None,
        }

    async def enqueue(self, request: Request, params: dict[str, str]) -> Answer:
        """
        ``POST /v1/messages``: queue a message; 201 with its summary.  With an
        ``Idempotency-Key`` header a repeated request answers with the first
        entry and stores nothing.
        """
        key = idempotency_key(request.getHeader(b"idempotency-key"))
        queue = self.service.queue
        now = self.service.clock.seconds()

        def store() -> Entry:
            kwargs = parse_enqueue(read_body(request), now)
            try:
                entry_id = queue.enqueue(
                    kwargs.pop("message"),
                    kwargs.pop("sender"),
                    kwargs.pop("recipients"),
                    idempotency_key=key,
                    **kwargs,
                )
            except ValueError as e:
                if isinstance(e, (EnvelopeError, ScheduleError)):
                    raise
                raise ApiError(400, str(e), field="Idempotency-Key") from None
            return queue.get(entry_id)

        entry = await self._call(store)
        self._changed("enqueue", entry)
        return 201, summary(entry)

    async def show(self, request: Request, params: dict[str, str]) -> Answer:
        """
        ``GET /v1/messages/{id}``: the whole entry with its attempt history.
        """
        return 200, entry_json(await self._call(self.service.queue.get, self._id(params)))

    async def hold(self, request: Request, params: dict[str, str]) -> Answer:
        """
        ``POST /v1/messages/{id}/hold``: a queued entry is never sent until
        released.
        """
        return await self._change(self.service.queue.hold, params)

    async def release(self, request: Request, params: dict[str, str]) -> Answer:
        """
        ``POST /v1/messages/{id}/release``: a held entry goes back to the queue.
        """
        return await self._change(self.service.queue.unhold, params)

    async def retry(self, request: Request, params: dict[str, str]) -> Answer:
        """
        ``POST /v1/messages/{id}/retry``: a queued, failed or cancelled entry
        is due now.
        """
        return await self._change(self.service.queue.retry, params)

    async def cancel(self, request: Request, params: dict[str, str]) -> Answer:
        """
        ``POST /v1/messages/{id}/cancel``: a queued or held entry is cancelled.
        """
        return await self._change(self.service.queue.cancel, params)

    async def reschedule(self, request: Request, params: dict[str, str]) -> Answer:
        """
        ``POST /v1/messages/{id}/reschedule`` with ``{"at": ...}`` or
        ``{"in": ...}``: a queued or held entry is due then.
        """
        entry_id = self._id(params)
        queue = self.service.queue
        now = self.service.clock.seconds()

        def move() -> Entry:
            body = read_body(request)
            if not isinstance(body, dict):
                raise ApiError(400, 'expected a JSON object such as {"in": "10m"}', field="body")
            for name in body:
                if name not in ("at", "in", "timezone"):
                    raise ApiError(400, f"{name}: unknown field", field=name)
            when = parse_when(body, now, recurring=False)
            if "at" not in when:
                raise ApiError(400, "at: give at or in", field="at")
            return queue.set_due(entry_id, when["at"])

        entry = await self._call(move)
        self._changed("set_due", entry)
        return 200, summary(entry)

    async def stats(self, request: Request, params: dict[str, str]) -> Answer:
        """
        ``GET /v1/stats``: counts by state and the daemon's own state.
        """
        return 200, await self.service.status()

    async def openapi(self, request: Request, params: dict[str, str]) -> Answer:
        """
        ``GET /v1/openapi.json``: this API's OpenAPI 3 description.
        """
        return 200, self.spec
