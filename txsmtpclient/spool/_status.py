"""
:class:`StatusResource`: the sending daemon's small ``twisted.web`` status
page (the queue's counts by state as JSON), importable from
:mod:`txsmtpclient.spool.service` too.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

if TYPE_CHECKING:
    from txsmtpclient.spool.service import SpoolService

__all__ = ["StatusResource"]


class StatusResource(Resource):
    """
    ``GET /`` answers with
    :meth:`~txsmtpclient.spool.service.SpoolService.status` as JSON
    (``application/json``); other paths get 404, other methods 405.  The
    control plane's ``GET /v1/stats`` (:mod:`txsmtpclient.control`)
    supersedes it.
    """

    isLeaf = True

    def __init__(self, service: SpoolService) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.service = service

    def render_GET(self, request: Request) -> int | bytes:
        """
        Start building the status; the response is written when it is ready.
        """
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            return b'{"error": "not found"}\n'
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def respond(code: int, body: dict[str, Any]) -> None:
            if gone:
                return  # the client hung up meanwhile
            request.setResponseCode(code)
            data = json.dumps(body, indent=2, sort_keys=True).encode("utf-8") + b"\n"
            # Sized, not chunked: Twisted's chunked path trips a BytesWarning
            # under python -bb once an HTTP client ran in the process.
            request.setHeader(b"content-length", b"%d" % len(data))
            request.write(data)
            request.finish()

        def write(status: dict[str, Any]) -> None:
            respond(200, status)

        def failed(failure: Failure) -> None:
            respond(500, {"error": str(failure.value)})

        self.service.status().addCallbacks(write, failed)
        return NOT_DONE_YET
