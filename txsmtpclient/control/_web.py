"""
The control plane's HTTP plumbing on ``twisted.web``: JSON answers and
errors, the bearer-token check, the request-body cap, and the root resource
that puts them in front of ``/v1/`` and ``/metrics``.

Nothing here knows the API's routes (see :mod:`.api`).  No answer ever
carries a stack trace: errors are JSON objects ``{"error": TEXT, "field":
NAME-or-null}``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

__all__ = [
    "DEFAULT_MAX_BODY",
    "ApiError",
    "CappedRequest",
    "ControlRoot",
    "ControlSite",
    "ErrorResource",
    "read_body",
    "respond",
    "write_json",
]

#: The largest request body accepted by default, in bytes (a message of
#: about 24 MiB once base64 is undone).
DEFAULT_MAX_BODY = 32 * 1024 * 1024

_log = Logger(namespace="txsmtpclient.control")


class ApiError(Exception):
    """
    An answer other than success, as the client should see it.

    :param status: the HTTP status code.
    :param message: what is wrong, for a human.
    :param field: the request field (query parameter, JSON member, header or
        path part) at fault, if one is.
    :param headers: extra response headers (``Allow``, ``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        headers: dict[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """
        The JSON error object.
        """
        return {"error": self.message, "field": self.field}


def write_json(request: Request, status: int, body: Any) -> None:
    """
    Finish ``request`` with ``body`` as JSON (``application/json``, not
    cached).
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    data = json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8")
    request.setHeader(b"content-length", str(len(data) + 1).encode("ascii"))
    request.write(data + b"\n")
    request.finish()


def _write_error(request: Request, error: ApiError) -> None:
    for name, value in error.headers.items():
        request.setHeader(name, value)
    write_json(request, error.status, error.body())


def respond(request: Request, answer: Callable[[], Awaitable[tuple[int, Any]]]) -> int:
    """
    Run an async handler and write its ``(status, body)`` as JSON; an
    :class:`ApiError` becomes its JSON error, anything else is logged with
    its traceback and answered as a bare JSON 500.  Nothing is written if
    the client has gone meanwhile.

    :returns: ``NOT_DONE_YET``, for a ``render`` method to return.
    """
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    async def run() -> tuple[int, Any]:
        return await answer()

    def written(result: tuple[int, Any]) -> None:
        if not gone:
            write_json(request, *result)

    def failed(failure: Failure) -> None:
        error = failure.value
        if not isinstance(error, ApiError):
            _log.failure(
                "Control request {method} {uri} failed",
                failure,
                method=request.method.decode("ascii", "replace"),
                uri=(getattr(request, "uri", None) or b"").decode("ascii", "replace"),
            )
            error = ApiError(500, "internal error; the daemon's log has the details")
        if not gone and not request.finished:
            _write_error(request, error)

    # failed() also catches a fault in written(), so no request is left open.
    Deferred.fromCoroutine(run()).addCallback(written).addErrback(failed)
    return NOT_DONE_YET


def read_body(request: Request) -> Any:
    """
    The request's JSON body, or ``None`` when it is empty.

    :raises ApiError: 413 if the body was over the site's cap, 400 if it is
        not JSON.
    """
    if getattr(request, "body_too_large", False):
        raise ApiError(413, "the request body is too large", field="body")
    content = getattr(request, "content", None)
    raw = content.read() if content is not None else b""
    if not raw.strip():
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, f"the body is not UTF-8 JSON: {e}", field="body") from None


class CappedRequest(Request):
    """
    A request that keeps at most its site's ``max_body`` bytes of body: the
    rest is read and dropped, and :attr:`body_too_large` is set, so the
    resource answers 413 without the body ever filling memory or disk.
    """

    #: Whether the body was over the cap (the kept part is then empty).
    body_too_large = False
    _seen = 0

    def _cap(self) -> int:
        return int(getattr(getattr(self.channel, "site", None), "max_body", DEFAULT_MAX_BODY))

    def gotLength(self, length: int | None) -> None:
        """
        Note a declared length over the cap before any body byte arrives.
        """
        self._seen = 0
        self.body_too_large = length is not None and length > self._cap()
        super().gotLength(None if self.body_too_large else length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:
        """
        Keep a chunk of body while the total is within the cap.
        """
        self._seen += len(data)
        if self._seen > self._cap():
            if not self.body_too_large:
                self.body_too_large = True
                if self.content is not None:
                    self.content.seek(0)
                    self.content.truncate()
            return
        if not self.body_too_large:
            super().handleContentChunk(data)  # type: ignore[no-untyped-call]

    def processingFailed(self, reason: Failure) -> Failure:
        """
        A resource raised while rendering: log it and answer a bare JSON 500
        (never Twisted's HTML page).
        """
        _log.failure(
            "Control request {uri} failed", reason, uri=self.uri.decode("ascii", "replace")
        )
        if not self.startedWriting:
            _write_error(self, ApiError(500, "internal error; the daemon's log has the details"))
        elif not self.finished:
            self.finish()  # type: ignore[no-untyped-call]
        return reason


class ControlSite(Site):
    """
    The control plane's site: :class:`CappedRequest` requests, no tracebacks
    in error pages, no log line per request.

    :param max_body: the largest request body accepted, in bytes.
    """

    displayTracebacks = False
    noisy = False

    def __init__(self, resource: IResource, *, max_body: int = DEFAULT_MAX_BODY) -> None:
        super().__init__(resource, requestFactory=CappedRequest)  # type: ignore[no-untyped-call]
        self.max_body = max_body

    def log(self, request: http.Request) -> None:
        """
        No access log: the daemon's log is for deliveries.
        """


class ErrorResource(Resource):
    """
    Answers every request with one :class:`ApiError`.
    """

    isLeaf = True

    def __init__(self, error: ApiError) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.error = error

    def render(self, request: Request) -> bytes:
        """
        Write the error.
        """
        _write_error(request, self.error)
        return NOT_DONE_YET  # type: ignore[return-value]


def _not_found(request: Request) -> ErrorResource:
    raw = getattr(request, "path", None) or b"/"
    path = raw.decode("ascii", "replace")
    return ErrorResource(ApiError(404, f"no such resource: {path}", field="path"))


class ControlRoot(Resource):
    """
    The root of the control plane: checks the bearer token (when one is set)
    before any child is reached, and answers unknown paths with a JSON 404.

    :param token: the token every request must carry as ``Authorization:
        Bearer TOKEN``; ``None`` for none (loopback or a Unix socket only,
        which :func:`~txsmtpclient.control.server.check_control_port`
        enforces).
    """

    def __init__(self, token: bytes | None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._token = token

    def authorized(self, request: Request) -> bool:
        """
        Whether the request carries the token, compared in constant time
        (``hmac.compare_digest``) so its time says nothing about the token.
        """
        if self._token is None:
            return True
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer":
            given = b""
        return hmac.compare_digest(given.strip(), self._token)

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        """
        The child for ``path`` once the request is authorized; a 401 or 404
        error resource otherwise.
        """
        if not self.authorized(request):
            return ErrorResource(
                ApiError(
                    401,
                    "missing or wrong bearer token (Authorization: Bearer TOKEN)",
                    field="Authorization",
                    headers={b"www-authenticate": b'Bearer realm="txsmtp"'},
                )
            )
        child: IResource | None = self.children.get(path)
        if child is None:
            return _not_found(request)
        return child

    def render(self, request: Request) -> bytes:
        """
        ``/`` itself names nothing: 404 (after the token check).
        """
        return self.getChildWithDefault(b"", request).render(request)  # type: ignore[no-any-return]


class ExactPath(Resource):
    """
    Serves a leaf resource (``/metrics``) at exactly its path and for
    ``GET`` only: deeper paths get 404, other methods 405.
    """

    isLeaf = True

    def __init__(self, inner: IResource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.inner = inner

    def render(self, request: Request) -> bytes:
        """
        Hand the request to the inner resource, or answer the error.
        """
        if request.postpath not in ([], [b""]):
            return _not_found(request).render(request)
        if request.method != b"GET":
            return ErrorResource(
                ApiError(
                    405,
                    f"{request.method.decode('ascii', 'replace')} is not allowed here; use GET",
                    field="method",
                    headers={b"allow": b"GET"},
                )
            ).render(request)
        return self.inner.render(request)  # type: ignore[no-any-return]
