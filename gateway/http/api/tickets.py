"""POST /api/tickets: an application's backend gets an upload ticket for one form post that a
page of its own, on another site, sends to /api/upload (gateway/uploads/tickets.py,
docs/tickets.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify

from gateway import errors
from gateway.http.api import json_body, services
from gateway.http.api.spec import BEARER, ERROR_RESPONSES, Described, named_response, ref
from gateway.http.auth import authenticate
from gateway.http.weblog import note
from gateway.uploads.tickets import FORM_FIELD, TicketRequest

bp = Blueprint("tickets", __name__)

_NUMBERS = {
    "maxFiles": "max_files",
    "maxFileBytes": "max_file_bytes",
    "maxBytes": "max_bytes",
    "expiresIn": "expires_in",
}
_TEXTS = {"tenant": "tenant", "redirect": "redirect"}
_LISTS = {"types": "types", "redirectOrigins": "redirect_origins"}
_KNOWN = {"projectId", "fields", *_NUMBERS, *_TEXTS, *_LISTS}


@bp.post("/api/tickets")
def issue() -> tuple[Response, int]:
    principal = authenticate()
    note(user=principal.subject, tenant=principal.tenant or None)
    ticket = services().tickets.issue(principal, parse_request(json_body(required=True)))
    note(ticket=ticket.id, project=ticket.project)
    expires = datetime.fromtimestamp(ticket.expires_at, UTC).isoformat(timespec="seconds")
    body = {
        "success": True,
        "ticket": ticket.token,
        "field": FORM_FIELD,
        "ticketId": ticket.id,
        "expiresAt": expires,
    }
    return jsonify(body), 201


def parse_request(payload: Any) -> TicketRequest:
    """The JSON body as a TicketRequest: every member of its type (the values are the
    service's to judge)."""
    if not isinstance(payload, dict):
        raise errors.InvalidJson()
    unknown = sorted(set(payload) - _KNOWN)
    if unknown:
        raise errors.InvalidTicketRequest(f"Unknown member(s): {', '.join(unknown)}.")
    project_id = payload.get("projectId")
    if project_id is None:
        raise errors.MissingProjectId()
    if not isinstance(project_id, str):
        raise errors.InvalidProjectId()
    values: dict[str, Any] = {}
    for name, attribute in _NUMBERS.items():
        value = payload.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise errors.InvalidTicketRequest(f"{name} must be an integer.")
        values[attribute] = value
    for name, attribute in _TEXTS.items():
        value = payload.get(name)
        if value is not None and not isinstance(value, str):
            raise errors.InvalidTicketRequest(f"{name} must be a string.")
        values[attribute] = value
    for name, attribute in _LISTS.items():
        value = payload.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(item, str) for item in value)
        ):
            raise errors.InvalidTicketRequest(f"{name} must be a list of strings.")
        if value is not None:
            values[attribute] = tuple(value)
    fields = payload.get("fields")
    if fields is not None and not (
        isinstance(fields, dict) and all(isinstance(v, str) for v in fields.values())
    ):
        raise errors.InvalidTicketRequest("fields must be an object of strings.")
    return TicketRequest(project_id=project_id, fields=fields or {}, **values)


def api_description() -> Described:
    limit = {"type": "integer", "minimum": 1}
    strings = {"type": "array", "items": {"type": "string"}}
    return Described(
        paths={
            "/api/tickets": {
                "post": {
                    "summary": "An upload ticket for one form post from another site",
                    "description": "The application's backend asks for what one post of a form "
                    "it renders may do; the form sends the ticket in its 'ticket' field, before "
                    "its files, to /api/upload, with no cookie and no token (docs/tickets.md). "
                    "The ticket's subject and tenant are the caller's; limits may only narrow "
                    "the gateway's.",
                    "security": BEARER,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("TicketRequest")}},
                    },
                    "responses": {
                        "201": named_response("Ticket", "The ticket."),
                        **ERROR_RESPONSES,
                    },
                }
            }
        },
        schemas={
            "TicketRequest": {
                "type": "object",
                "required": ["projectId"],
                "additionalProperties": False,
                "properties": {
                    "projectId": {"type": "string"},
                    "tenant": {"type": "string", "description": "Only the caller's own."},
                    "maxFiles": limit,
                    "maxFileBytes": limit,
                    "maxBytes": limit,
                    "types": {**strings, "description": "Within GATEWAY_ALLOWED_TYPES."},
                    "redirect": {"type": "string", "description": "Where the browser goes."},
                    "redirectOrigins": {
                        **strings,
                        "description": "Origins the form's redirect field may lead to.",
                    },
                    "fields": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "Field values the post must have (kept as metadata).",
                    },
                    "expiresIn": {
                        **limit,
                        "description": "Seconds (at most GATEWAY_TICKET_MAX_SECONDS).",
                    },
                },
            },
            "Ticket": {
                "type": "object",
                "required": ["success", "ticket", "field", "ticketId", "expiresAt"],
                "properties": {
                    "success": {"const": True},
                    "ticket": {"type": "string"},
                    "field": {"const": "ticket"},
                    "ticketId": {"type": "string"},
                    "expiresAt": {"type": "string", "format": "date-time"},
                },
            },
        },
    )
