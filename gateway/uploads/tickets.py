"""Upload tickets: what one form post from another site may do, signed by the gateway or by the
application that renders the form (docs/tickets.md). No Flask in here.

A form on another site has no other way to authenticate: a browser sends no ``SameSite=Lax``
cookie with a cross-site POST, a form cannot set an Authorization header, and a CSRF token
belongs to a cookie session. As S3's browser POST policies do, the application's server signs
what one post may do, and the form carries it in a hidden ``ticket`` field before its first file
part, within the body's first 16 KiB (as ``csrf_token``): it is verified before anything is
reserved, stored or sent to the object store.

The format is a JWT (RFC 7519) signed with HS256, with its own audience ``upload-gateway:ticket``
(``TICKET_AUDIENCE``). Every language has a JWT library, or signs one with 20 lines of HMAC-SHA256;
the gateway checks it with the PyJWT it trusts for bearer tokens; and the audience keeps the two
kinds apart both ways: a ticket must carry the ticket audience, which a bearer token never does
(``GATEWAY_JWT_AUDIENCE`` may not be it), and the bearer check (gateway/http/auth.py) refuses
any token that carries it (flask-jwt-extended checks no audience at all unless one is
configured, so it must be refused by name). The keys are apart as well: the gateway's own
ticket key is ``GATEWAY_TICKET_SECRET`` or else one derived from the JWT secret, never the JWT
secret itself. A tenant's key (``kid: "tenant:<name>"``,
``GATEWAY_TICKET_TENANT_KEYS``) signs tickets of that tenant only.

A ticket is used once: the post that stores files saves its answer under the ticket's id in the
same atomic write as its records (the idempotency claim of gateway/uploads/idempotency.py, in a
scope of its own), so "used" and "stored" cannot disagree. A post that fails frees the ticket
again (nothing was stored: the user may go back and choose another file); the same post sent
again (a browser's double submit) gets the first answer; any other post with a used ticket
is 409 ``ticket_used``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from gateway import errors
from gateway.config import TICKET_AUDIENCE, origin_of
from gateway.media.naming import IDENTIFIER_RE, check_project_id
from gateway.media.principal import Principal
from gateway.media.records import IdempotencyStore, SavedResponse
from gateway.uploads import csrf
from gateway.uploads.idempotency import AnswerPlan, Outcome, Render, run_once
from gateway.uploads.redirects import check_redirect
from gateway.uploads.sniff import ANY_TYPE, is_allowed

AUDIENCE = TICKET_AUDIENCE
ALGORITHM = "HS256"
FORM_FIELD = "ticket"
TENANT_KID = "tenant:"  # the JWT header kid of a ticket signed with a tenant's key
ID_RE = re.compile(r"[\x21-\x7e]{1,128}")  # jti: visible ASCII
TYPE_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/(\*|[a-z0-9][a-z0-9!#$&^_.+-]{0,126})")
MAX_SUBJECT_CHARS = 256
MAX_FIELD_NAME_CHARS = 64  # form.METADATA_NAME_CHARS: a longer name is cut as metadata
MAX_LIST_ITEMS = 20  # types, redirect origins
# Fields the form protocol itself reads: a ticket cannot fix them as metadata.
RESERVED_FIELDS = frozenset(
    {"projectId", "redirect", "sha256", "file", "files", FORM_FIELD, csrf.FORM_FIELD}
)
# A post whose ticket another post is using waits this long for that one to end (a browser's
# double submit cancels the first post: its claim ends as its connection closes).
CLAIM_WAIT_SECONDS = 2.0
CLAIM_POLL_SECONDS = 0.1
USED_MARGIN_SECONDS = 60  # the used mark outlives the ticket's last valid second by this much
SCOPE = "ticket:"  # the idempotency scope of tickets ("ticket:<tenant>"; callers' have a '#')
LIMIT_CLAIMS = {"maxFiles": "max_files", "maxFileBytes": "max_file_bytes", "maxBytes": "max_bytes"}


@dataclass(frozen=True)
class TicketPolicy:
    """The settings tickets read (built once, in ``Services``)."""

    max_seconds: int
    leeway: int
    max_files: int
    max_bytes: int  # GATEWAY_MAX_UPLOAD_BYTES
    allowed_types: tuple[str, ...]
    max_fields: int
    max_field_bytes: int
    redirect_origins: tuple[str, ...]  # GATEWAY_REDIRECT_ORIGINS


@dataclass(frozen=True)
class TicketKeys:
    own: bytes | None  # signs what POST /api/tickets issues; may sign any tenant's ticket
    tenants: Mapping[str, bytes] = field(default_factory=dict)  # tenant -> its key

    @property
    def any(self) -> bool:
        return self.own is not None or bool(self.tenants)


@dataclass(frozen=True)
class TicketRequest:
    """What an application asks ``POST /api/tickets`` for (parsed at the edge)."""

    project_id: str
    tenant: str | None = None
    max_files: int | None = None
    max_file_bytes: int | None = None
    max_bytes: int | None = None
    types: tuple[str, ...] | None = None
    redirect: str | None = None
    redirect_origins: tuple[str, ...] = ()
    fields: Mapping[str, str] = field(default_factory=dict)
    expires_in: int | None = None


@dataclass(frozen=True)
class Ticket:
    """A ticket whose signature and claims were checked; the limits are the ticket's within the
    gateway's own (the lower of the two)."""

    id: str
    subject: str
    tenant: str
    project: str
    expires_at: float
    max_files: int
    max_file_bytes: int
    max_bytes: int
    types: tuple[str, ...] | None  # None: the gateway's allow-list alone
    redirect: str | None
    redirect_origins: tuple[str, ...]  # the ticket's and the gateway's
    fields: Mapping[str, str]
    token: str = field(default="", repr=False)

    def principal(self) -> Principal:
        return Principal(
            subject=self.subject, tenant=self.tenant, projects=frozenset({self.project})
        )

    def check_project(self, project_id: str) -> None:
        if project_id != self.project:
            raise errors.TicketProject(f"The ticket is for project {self.project!r}.")

    def check_field(self, name: str, value: str) -> None:
        """A text field of the post: a fixed one must have the fixed value; a second ticket
        field must be the same ticket."""
        if name == FORM_FIELD:
            if value != self.token:
                raise errors.TicketField("A post carries one ticket.")
            return
        fixed = self.fields.get(name)
        if fixed is not None and value != fixed:
            raise errors.TicketField(f"The ticket fixes the field {name!r}.")

    def check_files(self, count: int) -> None:
        if count > self.max_files:
            raise errors.FormLimit(f"The ticket allows at most {self.max_files} file(s).")

    def check_bytes(self, file_bytes: int, total_bytes: int) -> None:
        if file_bytes > self.max_file_bytes:
            raise errors.TooLarge(f"The ticket allows at most {self.max_file_bytes} bytes a file.")
        if total_bytes > self.max_bytes:
            raise errors.TooLarge(f"The ticket allows at most {self.max_bytes} bytes in all.")

    def redirect_for(self, requested: str | None) -> str | None:
        """Where the browser goes afterwards: the ticket's redirect (the form may repeat it, not
        change it), else the form's ``redirect`` field, on the ticket's or the gateway's origins."""
        if self.redirect is not None:
            if requested is not None and requested != self.redirect:
                raise errors.TicketField("The ticket fixes the redirect.")
            return self.redirect
        if requested is None:
            return None
        return check_redirect(requested, self.redirect_origins)


class _Bad(Exception):
    """A claim or request value that is not valid (the caller picks the error)."""


class Tickets:
    """Issues, reads and uses tickets."""

    def __init__(
        self,
        keys: TicketKeys,
        policy: TicketPolicy,
        *,
        store: IdempotencyStore,
        lock_timeout: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.keys = keys
        self.policy = policy
        self.store = store
        self.lock_timeout = lock_timeout
        self.clock = clock
        self.sleep = sleep

    # -- issuing -------------------------------------------------------------------------------
    def issue(self, principal: Principal, request: TicketRequest) -> Ticket:
        """A ticket for one post by the caller, in its tenant, to a project it may use."""
        key = self.keys.own
        if key is None:
            raise errors.TicketsUnavailable()
        if request.tenant is not None and request.tenant != principal.tenant:
            raise errors.TicketTenant("A ticket may only be for the caller's own tenant.")
        principal.check_project(check_project_id(request.project_id))
        policy = self.policy
        life = policy.max_seconds if request.expires_in is None else request.expires_in
        try:
            _check_range("expiresIn", life, policy.max_seconds)
            for name, limit in (
                ("maxFiles", request.max_files),
                ("maxFileBytes", request.max_file_bytes),
                ("maxBytes", request.max_bytes),
            ):
                if limit is not None:
                    _check_range(name, limit, self._gateway_limit(name))
            for pattern in request.types or ():
                if not _within(pattern, policy.allowed_types):
                    raise _Bad(
                        f"types: {pattern!r} is not within the gateway's "
                        f"{', '.join(policy.allowed_types)}."
                    )
            now = int(self.clock())
            claims: dict[str, Any] = {
                "aud": AUDIENCE,
                "sub": principal.subject,
                "project": request.project_id,
                "jti": uuid.uuid4().hex,
                "iat": now,
                "exp": now + life,
            }
            optional = {
                "tenant": principal.tenant or None,
                "maxFiles": request.max_files,
                "maxFileBytes": request.max_file_bytes,
                "maxBytes": request.max_bytes,
                "types": None if request.types is None else list(request.types),
                "redirect": request.redirect,
                "redirectOrigins": list(request.redirect_origins) or None,
                "fields": dict(request.fields) or None,
            }
            claims.update({name: value for name, value in optional.items() if value is not None})
            token = jwt.encode(claims, key, algorithm=ALGORITHM)
            return self._ticket(claims, token)
        except _Bad as exc:
            raise errors.InvalidTicketRequest(str(exc)) from None

    def _gateway_limit(self, claim: str) -> int:
        policy = self.policy
        return {
            "maxFiles": policy.max_files,
            "maxFileBytes": policy.max_bytes,
            "maxBytes": policy.max_bytes,
        }[claim]

    # -- reading -------------------------------------------------------------------------------
    def read(self, token: str) -> Ticket:
        """The ticket, if its signature and claims are valid (its expiry is ``check_live``'s:
        an expired ticket still says where to send the browser)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise errors.TicketInvalid("The ticket is not a JWT.") from None
        key, tenant = self._key(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                leeway=self.policy.leeway,
                options={
                    "verify_exp": False,
                    "require": ["aud", "sub", "jti", "iat", "exp", "project"],
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise errors.TicketInvalid(f"The ticket has no {exc.claim!r} claim.") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            raise errors.TicketInvalid("This token is not an upload ticket (audience).") from None
        except jwt.ImmatureSignatureError:
            raise errors.TicketInvalid("The ticket is not valid yet.") from None
        except jwt.InvalidSignatureError:
            raise errors.TicketInvalid("The ticket's signature is not valid.") from None
        except jwt.PyJWTError:
            raise errors.TicketInvalid() from None
        try:
            ticket = self._ticket(claims, token)
        except _Bad as exc:
            raise errors.TicketInvalid(str(exc)) from None
        if tenant is not None and ticket.tenant != tenant:
            raise errors.TicketTenant(f"The key of tenant {tenant!r} signs its own tickets only.")
        return ticket

    def _key(self, kid: Any) -> tuple[bytes, str | None]:
        """The key that must have signed a ticket with this ``kid``, and the tenant it binds."""
        keys = self.keys
        if not keys.any:
            raise errors.TicketsUnavailable()
        if kid is None and keys.own is not None:
            return keys.own, None
        if isinstance(kid, str) and kid.startswith(TENANT_KID):
            tenant = kid.removeprefix(TENANT_KID)
            key = keys.tenants.get(tenant)
            if key is not None:
                return key, tenant
        raise errors.TicketInvalid("The ticket's key (kid) is not known.")

    def check_live(self, ticket: Ticket) -> None:
        if self.clock() >= ticket.expires_at + self.policy.leeway:
            raise errors.TicketExpired()

    def _ticket(self, claims: Mapping[str, Any], token: str) -> Ticket:
        """The claims as a Ticket (``_Bad`` for any that is not valid)."""
        policy = self.policy
        try:
            json.dumps(claims, ensure_ascii=False).encode()
        except UnicodeEncodeError:  # JSON may escape half a UTF-16 pair: not text
            raise _Bad("A claim holds an unpaired surrogate (\\ud800-\\udfff).") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT_CHARS:
            raise _Bad(f"sub must be 1-{MAX_SUBJECT_CHARS} characters.")
        tenant = claims.get("tenant", "")
        if not isinstance(tenant, str) or (tenant and not IDENTIFIER_RE.fullmatch(tenant)):
            raise _Bad("tenant must be an identifier.")
        project = claims["project"]
        if not isinstance(project, str) or not _is_project_id(project):
            raise _Bad("project must be a project id.")
        ticket_id = claims["jti"]
        if not isinstance(ticket_id, str) or not ID_RE.fullmatch(ticket_id):
            raise _Bad("jti must be 1-128 visible ASCII characters.")
        issued, expires = claims["iat"], claims["exp"]
        if not (_is_number(issued) and _is_number(expires)):
            raise _Bad("iat and exp must be numbers (seconds since the epoch).")
        if expires - issued > policy.max_seconds:
            raise _Bad(f"A ticket lives at most {policy.max_seconds} seconds (exp - iat).")
        limits = {
            attribute: _limit(claims, name, self._gateway_limit(name))
            for name, attribute in LIMIT_CLAIMS.items()
        }
        redirect = claims.get("redirect")
        if redirect is not None:
            _check_target(redirect)
        return Ticket(
            id=ticket_id,
            subject=subject,
            tenant=tenant,
            project=project,
            expires_at=float(expires),
            types=_types(claims.get("types")),
            redirect=redirect,
            redirect_origins=(*policy.redirect_origins, *_origins(claims.get("redirectOrigins"))),
            fields=_fields(claims.get("fields"), policy),
            token=token,
            **limits,
        )

    # -- using ---------------------------------------------------------------------------------
    def once(
        self,
        ticket: Ticket,
        *,
        render: Render,
        first: Callable[[AnswerPlan], tuple[int, dict[str, Any]]],
        fingerprint_of_retry: Callable[[], str],
    ) -> Outcome:
        """Run the post (``first``) unless the ticket was used: the same post again gets the
        first answer, another is ``TicketUsed``; while another post holds the ticket, wait up to
        ``CLAIM_WAIT_SECONDS`` for it to end, then ``TicketInProgress``."""
        now = self.clock()
        plan = AnswerPlan(
            scope=SCOPE + ticket.tenant,
            key=ticket.id,
            ttl=ticket.expires_at + self.policy.leeway + USED_MARGIN_SECONDS - now,
            render=render,
            clock=self.clock,
        )
        patient = _Patient(self.store, self.clock, self.sleep)
        try:
            return run_once(
                patient,
                plan,
                lock_timeout=self.lock_timeout,
                first=first,
                fingerprint_of_retry=fingerprint_of_retry,
            )
        except errors.IdempotencyKeyMismatch:
            raise errors.TicketUsed() from None


@dataclass(frozen=True)
class _Patient:
    """The idempotency store, with a claim that waits a moment for a post holding the ticket."""

    store: IdempotencyStore
    clock: Callable[[], float]
    sleep: Callable[[float], None]

    def claim(
        self, scope: str, key: str, *, now: float, lock_timeout: float, ttl: float
    ) -> SavedResponse | None:
        deadline = now + CLAIM_WAIT_SECONDS
        while True:
            try:
                return self.store.claim(scope, key, now=now, lock_timeout=lock_timeout, ttl=ttl)
            except errors.IdempotencyInProgress:
                if self.clock() >= deadline:
                    raise errors.TicketInProgress() from None
            self.sleep(CLAIM_POLL_SECONDS)
            now = self.clock()

    def release(self, scope: str, key: str) -> None:
        self.store.release(scope, key)


# -- claim values ---------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_project_id(value: str) -> bool:
    try:
        check_project_id(value)
    except errors.InvalidProjectId:
        return False
    return True


def _check_range(name: str, value: int, limit: int) -> None:
    if not 1 <= value <= limit:
        raise _Bad(f"{name} must be 1-{limit}.")


def _limit(claims: Mapping[str, Any], name: str, gateway: int) -> int:
    """A limit claim within the gateway's (a ticket never allows more than the gateway)."""
    value = claims.get(name)
    if value is None:
        return gateway
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _Bad(f"{name} must be a positive integer.")
    return min(value, gateway)


def _types(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not _is_list(value, str) or not value or any(not _is_type(t) for t in value):
        raise _Bad(f"types must be 1-{MAX_LIST_ITEMS} of type/subtype, type/* or */*.")
    return tuple(value)


def _is_type(pattern: str) -> bool:
    return pattern == ANY_TYPE or TYPE_RE.fullmatch(pattern) is not None


def _within(pattern: str, allowed: tuple[str, ...]) -> bool:
    """Whether the gateway's allow-list admits everything ``pattern`` does."""
    if ANY_TYPE in allowed:
        return True
    if pattern.endswith("/*"):
        return pattern in allowed
    return is_allowed(pattern, allowed)


def _check_target(url: Any) -> None:
    """A ticket's redirect: a path on the gateway, or an http(s) URL (the ticket allows it)."""
    if not isinstance(url, str):
        raise _Bad("redirect must be a string.")
    origin = origin_of(url)
    try:
        check_redirect(url, (origin,) if origin else ())
    except errors.InvalidRedirect:
        raise _Bad("redirect must be an http(s) URL or a path on the gateway.") from None


def _origins(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not _is_list(value, str) or any(origin_of(o) != o.lower() for o in value):
        raise _Bad(f"redirectOrigins must be 0-{MAX_LIST_ITEMS} origins (scheme://host[:port]).")
    return tuple(o.lower() for o in value)


def _fields(value: Any, policy: TicketPolicy) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > policy.max_fields:
        raise _Bad(f"fields must be an object of at most {policy.max_fields} fields.")
    for name, text in value.items():
        if not 0 < len(name) <= MAX_FIELD_NAME_CHARS or name in RESERVED_FIELDS:
            raise _Bad(f"fields: {name!r} is not a field a ticket may fix.")
        if not isinstance(text, str) or len(text.encode()) > policy.max_field_bytes:
            raise _Bad(f"fields: {name!r} must be text of at most {policy.max_field_bytes} bytes.")
    return dict(value)


def _is_list(value: Any, kind: type) -> bool:
    return (
        isinstance(value, list)
        and len(value) <= MAX_LIST_ITEMS
        and all(isinstance(item, kind) for item in value)
    )
