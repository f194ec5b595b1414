"""
The OpenAPI 3 description of the control plane, served at
``/v1/openapi.json`` and built here in Python so it ships with the code it
describes.  Its ``paths`` are exactly :data:`~.api.ROUTES` plus
``/metrics`` (a test checks both ways).
"""

from __future__ import annotations

from typing import Any

from txsmtpclient.control._input import LISTABLE_STATES

__all__ = ["openapi_spec"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json(_ref("Error"), "An error: what is wrong and the field at fault.")
_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "A spool id, as enqueue returns it.",
    "schema": {"type": "string", "pattern": "^[0-9a-f]{1,16}-[0-9]{1,10}-[0-9a-f]{8}$"},
}
_TIME = {
    "oneOf": [{"type": "number"}, {"type": "string"}],
    "description": "Epoch seconds, or ISO 8601 text (read in `timezone` without an offset).",
}
_DURATION = {
    "oneOf": [{"type": "number", "minimum": 0}, {"type": "string"}],
    "description": "Seconds, or a duration such as 90s, 10m, 2h, 1d, PT10M.",
}


def _action(summary: str, description: str, *, body: dict[str, Any] | None = None) -> Any:
    operation: dict[str, Any] = {
        "summary": summary,
        "description": description,
        "parameters": [_ID],
        "responses": {
            "200": _json(_ref("Summary"), "The entry in its new state."),
            "400": _ERROR,
            "404": _ERROR,
            "409": _json(_ref("Error"), "The entry is not in a state that allows this."),
        },
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return {"post": operation}


def openapi_spec() -> dict[str, Any]:
    """
    The OpenAPI 3.0 document, as a JSON-ready dict.
    """
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error", "field"],
            "properties": {
                "error": {"type": "string"},
                "field": {"type": "string", "nullable": True},
            },
        },
        "Summary": {
            "type": "object",
            "description": "An entry in brief (times are epoch seconds).",
            "properties": {
                "id": {"type": "string"},
                "state": {"type": "string", "enum": list(LISTABLE_STATES)},
                "sender": {"type": "string"},
                "recipients": {"type": "array", "items": {"type": "object"}},
                "created": {"type": "number"},
                "due": {"type": "number"},
                "size": {"type": "integer"},
                "recurrence": {"type": "string", "nullable": True},
                "attempts": {"type": "integer"},
                "last_attempt": {"type": "object", "nullable": True},
                "outcome": {"type": "object", "nullable": True},
            },
        },
        "Entry": {
            "type": "object",
            "description": "The whole entry: envelope, recipients' progress, every "
            "attempt (code, text, relay, queue id, refusals) and the outcome.",
        },
        "Enqueue": {
            "type": "object",
            "required": ["from", "to"],
            "additionalProperties": False,
            "properties": {
                "from": {"type": "string", "description": "Envelope sender; '' for none."},
                "to": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "message": {"type": "string", "description": "The raw message as text."},
                "message_base64": {
                    "type": "string",
                    "description": "The raw message as base64 (instead of message).",
                },
                "mail_options": {"type": "array", "items": {"type": "string"}},
                "rcpt_options": {"type": "array", "items": {"type": "string"}},
                "dsn": {
                    "type": "object",
                    "properties": {
                        "ret": {"type": "string", "enum": ["FULL", "HDRS"]},
                        "envid": {"type": "string"},
                        "notify": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "at": _TIME,
                "in": _DURATION,
                "cron": {"type": "string", "description": "A cron expression: recurs."},
                "every": {"type": "string", "description": "A duration: recurs."},
                "timezone": {"type": "string", "description": "IANA zone for at and cron."},
            },
        },
        "Stats": {
            "type": "object",
            "properties": {
                "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                "in_flight": {"type": "integer"},
                "handled": {"type": "object", "additionalProperties": {"type": "integer"}},
                "disk_full": {"type": "boolean"},
                "stopping": {"type": "boolean"},
                "relay": {"type": "string"},
            },
        },
    }
    paths: dict[str, Any] = {
        "/v1/messages": {
            "get": {
                "summary": "List messages",
                "description": "A page of entries, queued ones by due time and the rest by "
                "creation; pass next_cursor as cursor for the next page.",
                "parameters": [
                    {
                        "name": "state",
                        "in": "query",
                        "schema": {"type": "string", "enum": list(LISTABLE_STATES)},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "messages": {"type": "array", "items": _ref("Summary")},
                                "next_cursor": {"type": "string", "nullable": True},
                            },
                        },
                        "A page of entries.",
                    ),
                    "400": _ERROR,
                },
            },
            "post": {
                "summary": "Enqueue a message",
                "description": "Queue a raw message with its envelope, now or at/in/cron/every. "
                "With an Idempotency-Key header, a repeated request answers with the first "
                "entry and stores nothing.",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "maxLength": 255},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("Enqueue")}},
                },
                "responses": {
                    "201": _json(_ref("Summary"), "The queued entry."),
                    "400": _ERROR,
                    "413": _ERROR,
                    "503": _json(_ref("Error"), "The spool's disk is full; try later."),
                },
            },
        },
        "/v1/messages/{id}": {
            "get": {
                "summary": "Show one message",
                "description": "The whole entry with its attempt history.",
                "parameters": [_ID],
                "responses": {"200": _json(_ref("Entry"), "The entry."), "404": _ERROR},
            }
        },
        "/v1/messages/{id}/hold": _action(
            "Hold a message", "A queued entry is held: never sent until released."
        ),
        "/v1/messages/{id}/release": _action(
            "Release a held message", "A held entry goes back to the queue."
        ),
        "/v1/messages/{id}/retry": _action(
            "Retry a message", "A queued, failed or cancelled entry is due now."
        ),
        "/v1/messages/{id}/cancel": _action(
            "Cancel a message", "A queued or held entry is cancelled."
        ),
        "/v1/messages/{id}/reschedule": _action(
            "Reschedule a message",
            "A queued or held entry is due at a new time (a held one stays held).",
            body={
                "type": "object",
                "properties": {"at": _TIME, "in": _DURATION, "timezone": {"type": "string"}},
            },
        ),
        "/v1/stats": {
            "get": {
                "summary": "Queue statistics",
                "responses": {"200": _json(_ref("Stats"), "Counts by state and daemon state.")},
            }
        },
        "/v1/openapi.json": {
            "get": {
                "summary": "This description",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "The metrics in Prometheus' text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    for item in paths.values():
        for operation in item.values():
            operation["responses"].setdefault("401", _ERROR)
            operation["responses"].setdefault("500", _ERROR)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "txsmtp control plane",
            "version": "1",
            "description": "Inspect and steer the twist txsmtp daemon's queue.  With a "
            "token set, every request needs Authorization: Bearer TOKEN.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
