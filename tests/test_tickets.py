"""gateway.uploads.tickets without HTTP: issuing, reading (signature, audience, keys, every
claim), the checks a post goes through, and single use on a real SQLite record store.
(The routes: test_tickets_api.py; through nginx and Chromium: test_tickets_e2e.py.)"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest

from gateway import errors
from gateway.config import Settings
from gateway.media.principal import Principal
from gateway.media.records.sqlite import SqliteRecordStore
from gateway.services import ticket_policy
from gateway.uploads import tickets as tk
from gateway.uploads.idempotency import Outcome
from gateway.uploads.tickets import (
    Ticket,
    TicketKeys,
    TicketPolicy,
    TicketRequest,
    Tickets,
)

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

OWN = b"own-ticket-key-" + b"k" * 32
ACME = b"acme-ticket-key-" + b"a" * 32
NOW = 1_700_000_000  # in the past: PyJWT checks iat and nbf against the real time
POLICY = TicketPolicy(
    max_seconds=3600,
    leeway=30,
    max_files=10,
    max_bytes=1000,
    allowed_types=("image/*", "video/mp4"),
    max_fields=3,
    max_field_bytes=8,
    redirect_origins=("https://own.test",),
)
PAST = {"verify_exp": False}  # NOW is long gone: read the claims as they were
ALICE = Principal(subject="alice", tenant="acme", projects=frozenset({"p1", "p2"}))


class Clock:
    """A clock that moves only when slept on (``now`` = start + the sleeps so far)."""

    def __init__(self, now: float = NOW) -> None:
        self.start, self.elapsed = float(now), 0.0
        self.slept: list[float] = []

    @property
    def now(self) -> float:
        return self.start + self.elapsed

    @now.setter
    def now(self, value: float) -> None:
        self.start, self.elapsed = float(value), 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.elapsed += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path):
    records = SqliteRecordStore(str(tmp_path / "records.db"))
    records.create_schema()
    return records


def service(clock, store=None, *, keys=None, policy=POLICY) -> Tickets:
    return Tickets(
        keys or TicketKeys(OWN, {"acme": ACME}),
        policy,
        store=store,
        lock_timeout=600.0,
        clock=clock,
        sleep=clock.sleep,
    )


def claims(**changes) -> dict:
    values = {
        "aud": tk.AUDIENCE,
        "sub": "alice",
        "project": "p1",
        "jti": "t-1",
        "iat": NOW,
        "exp": NOW + 600,
    }
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


def sign(values: dict, key: bytes = OWN, **headers) -> str:
    return jwt.encode(values, key, algorithm="HS256", headers=headers or None)


def read(clock, values: dict, key: bytes = OWN, **headers) -> Ticket:
    return service(clock).read(sign(values, key, **headers))


def invalid(clock, values: dict, key: bytes = OWN, **headers) -> str:
    with pytest.raises(errors.TicketInvalid) as info:
        read(clock, values, key, **headers)
    assert info.value.status == 401 and info.value.code == "ticket_invalid"
    return info.value.message


# -- the format ----------------------------------------------------------------------------------
def test_the_wire_names_are_fixed():
    assert tk.AUDIENCE == "upload-gateway:ticket" and tk.ALGORITHM == "HS256"
    assert tk.FORM_FIELD == "ticket" and tk.TENANT_KID == "tenant:" and tk.SCOPE == "ticket:"
    assert {
        "projectId",
        "redirect",
        "sha256",
        "file",
        "files",
        "ticket",
        "csrf_token",
    } == tk.RESERVED_FIELDS


def test_a_ticket_read_back_is_what_was_signed(clock):
    token = sign(
        claims(
            tenant="acme",
            maxFiles=2,
            maxFileBytes=300,
            maxBytes=500,
            types=["image/png"],
            redirect="https://partner.test/done",
            redirectOrigins=["https://partner.test"],
            fields={"caption": "hi"},
        )
    )
    ticket = service(clock).read(token)
    assert ticket == Ticket(
        id="t-1",
        subject="alice",
        tenant="acme",
        project="p1",
        expires_at=NOW + 600.0,
        max_files=2,
        max_file_bytes=300,
        max_bytes=500,
        types=("image/png",),
        redirect="https://partner.test/done",
        redirect_origins=("https://own.test", "https://partner.test"),
        fields={"caption": "hi"},
        token=token,
    )
    assert ticket.principal() == Principal("alice", "acme", frozenset({"p1"}), admin=False)


def test_what_a_ticket_leaves_out_is_the_gateways(clock):
    ticket = read(clock, claims())
    assert (ticket.tenant, ticket.max_files, ticket.max_file_bytes, ticket.max_bytes) == (
        "",
        10,
        1000,
        1000,
    )
    assert ticket.types is None and ticket.redirect is None and ticket.fields == {}
    assert ticket.redirect_origins == ("https://own.test",)


def test_limits_above_the_gateways_count_as_the_gateways(clock):
    ticket = read(clock, claims(maxFiles=11, maxFileBytes=1001, maxBytes=5000))
    assert (ticket.max_files, ticket.max_file_bytes, ticket.max_bytes) == (10, 1000, 1000)
    ticket = read(clock, claims(maxFiles=10, maxFileBytes=1000, maxBytes=1000))
    assert (ticket.max_files, ticket.max_file_bytes, ticket.max_bytes) == (10, 1000, 1000)


# -- keys and the audience -----------------------------------------------------------------------
def test_a_ticket_signed_with_another_key_is_refused(clock):
    assert invalid(clock, claims(), b"x" * 48) == "The ticket's signature is not valid."
    # a tenant's key without its kid is not the own key
    assert invalid(clock, claims(tenant="acme"), ACME) == "The ticket's signature is not valid."


def test_a_token_of_another_audience_is_not_a_ticket(clock):
    for audience in ("upload-gateway", "api", ["api", "other"]):
        message = invalid(clock, claims(aud=audience))
        assert message == "This token is not an upload ticket (audience)."
    assert read(clock, claims(aud=["api", tk.AUDIENCE])).id == "t-1"  # one of its audiences
    assert invalid(clock, claims(aud=None)) == "The ticket has no 'aud' claim."


@pytest.mark.parametrize("claim", ["sub", "jti", "iat", "exp", "project"])
def test_every_required_claim_must_be_there(clock, claim):
    assert invalid(clock, claims(**{claim: None})) == f"The ticket has no {claim!r} claim."


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_only_hs256_is_accepted(clock, algorithm):
    token = jwt.encode(claims(), OWN, algorithm=algorithm)
    with pytest.raises(errors.TicketInvalid) as info:
        service(clock).read(token)
    assert info.value.message == "The upload ticket is not valid."


@pytest.mark.parametrize(
    "token, message",
    [
        (jwt.encode(claims(), None, algorithm="none"), "The upload ticket is not valid."),
        ("", "The ticket is not a JWT."),
        ("not a jwt", "The ticket is not a JWT."),
        ("a.b.c", "The ticket is not a JWT."),
        ("e30.e30.e30", "The upload ticket is not valid."),  # no alg
        (sign(claims(), b"k" * 40), "The ticket's signature is not valid."),
    ],
)
def test_alg_none_and_garbage_are_refused(clock, token, message):
    with pytest.raises(errors.TicketInvalid) as info:
        service(clock).read(token)
    assert info.value.message == message


def test_a_tenant_key_signs_its_own_tenants_tickets_only(clock):
    ticket = read(clock, claims(tenant="acme"), ACME, kid="tenant:acme")
    assert ticket.tenant == "acme"
    for tenant in ("globex", None):
        with pytest.raises(errors.TicketTenant) as info:
            read(clock, claims(tenant=tenant), ACME, kid="tenant:acme")
        assert info.value.status == 403 and info.value.code == "ticket_tenant"
        assert info.value.message == "The key of tenant 'acme' signs its own tickets only."


def test_the_own_key_signs_any_tenants_tickets(clock):
    assert read(clock, claims(tenant="globex")).tenant == "globex"


@pytest.mark.parametrize("kid", ["tenant:globex", "acme", "tenant:", "own", "TENANT:acme"])
def test_an_unknown_kid_is_refused(clock, kid):
    token = jwt.encode(claims(tenant="acme"), ACME, algorithm="HS256", headers={"kid": kid})
    with pytest.raises(errors.TicketInvalid) as info:
        service(clock).read(token)
    assert info.value.message == "The ticket's key (kid) is not known."


def test_a_kid_that_is_no_string_is_refused(clock):
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    for kid in (5, ["tenant:acme"], {"t": "acme"}):
        signed = part({"alg": "HS256", "kid": kid}) + "." + part(claims(tenant="acme"))
        digest = hmac.new(ACME, signed.encode(), hashlib.sha256).digest()
        token = signed + "." + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        with pytest.raises(errors.TicketInvalid):
            service(clock).read(token)


def test_without_an_own_key_only_tenant_keys_sign(clock):
    tickets = service(clock, keys=TicketKeys(None, {"acme": ACME}))
    with pytest.raises(errors.TicketInvalid) as info:
        tickets.read(sign(claims()))
    assert info.value.message == "The ticket's key (kid) is not known."
    assert tickets.read(sign(claims(tenant="acme"), ACME, kid="tenant:acme")).tenant == "acme"


def test_without_any_key_tickets_are_unavailable(clock):
    tickets = service(clock, keys=TicketKeys(None))
    assert not TicketKeys(None).any and TicketKeys(OWN).any and TicketKeys(None, {"a": ACME}).any
    with pytest.raises(errors.TicketsUnavailable) as info:
        tickets.read(sign(claims()))
    assert info.value.status == 501 and info.value.code == "tickets_unavailable"
    with pytest.raises(errors.TicketsUnavailable):
        tickets.issue(ALICE, TicketRequest(project_id="p1"))


def test_the_own_key_is_derived_from_the_jwt_secret_unless_set():
    secret = "j" * 40
    derived = hmac.new(secret.encode(), b"upload-gateway ticket", hashlib.sha256).digest()
    assert Settings(jwt_secret=secret).ticket_key == derived != secret.encode()
    assert Settings(jwt_secret=secret, ticket_secret="t" * 32).ticket_key == b"t" * 32
    rs256 = Settings(jwt_public_key="-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----")
    assert rs256.ticket_key is None
    assert rs256.replace(ticket_secret="t" * 32).ticket_key == b"t" * 32
    tenants = Settings(
        jwt_secret=secret, ticket_tenant_keys=("acme:" + "a" * 32, "b:x:" + "y" * 32)
    )
    assert tenants.ticket_tenant_key_map == {"acme": b"a" * 32, "b": b"x:" + b"y" * 32}


# -- time ----------------------------------------------------------------------------------------
def test_expiry_is_checked_apart_so_an_expired_ticket_still_says_where_to_go(clock):
    tickets = service(clock)
    ticket = tickets.read(sign(claims(exp=NOW - 3600, iat=NOW - 3700, redirect="/back")))
    assert ticket.redirect == "/back"
    with pytest.raises(errors.TicketExpired) as info:
        tickets.check_live(ticket)
    assert info.value.status == 401 and info.value.code == "ticket_expired"


def test_a_ticket_expires_at_exp_plus_the_leeway(clock):
    tickets = service(clock)
    ticket = tickets.read(sign(claims()))
    clock.now = NOW + 600 + 30 - 1
    tickets.check_live(ticket)
    clock.now = NOW + 600 + 30
    with pytest.raises(errors.TicketExpired):
        tickets.check_live(ticket)


def test_a_ticket_lives_at_most_the_maximum(clock):
    assert read(clock, claims(iat=NOW, exp=NOW + 3600)).expires_at == NOW + 3600
    message = invalid(clock, claims(iat=NOW, exp=NOW + 3601))
    assert message == "A ticket lives at most 3600 seconds (exp - iat)."
    assert read(clock, claims(iat=NOW + 0.5, exp=NOW + 3600.5)).expires_at == NOW + 3600.5


def test_a_ticket_issued_in_the_future_or_not_yet_valid_is_refused(clock):
    now = int(time.time())  # PyJWT's clock for iat and nbf
    assert read(clock, claims(iat=now + 20, exp=now + 600)).id == "t-1"  # within the leeway
    assert invalid(clock, claims(iat=now + 120, exp=now + 600)) == "The ticket is not valid yet."
    assert invalid(clock, claims(iat=now, exp=now + 600, nbf=now + 120)) == (
        "The ticket is not valid yet."
    )


NOT_NUMBERS = "iat and exp must be numbers (seconds since the epoch)."


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("iat", str(NOW), NOT_NUMBERS),  # PyJWT reads "1700000000" as a number; we do not
        ("iat", True, NOT_NUMBERS),
        ("iat", [NOW], "The upload ticket is not valid."),  # PyJWT's own refusal
        ("exp", str(NOW + 600), NOT_NUMBERS),
        ("exp", False, NOT_NUMBERS),
        ("exp", [NOW], NOT_NUMBERS),
    ],
)
def test_times_must_be_numbers(clock, field, value, message):
    assert invalid(clock, claims(**{field: value})) == message


# -- claims --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"sub": ""}, "sub must be 1-256 characters."),
        ({"sub": "s" * 257}, "sub must be 1-256 characters."),
        ({"tenant": "no such/tenant"}, "tenant must be an identifier."),
        ({"tenant": 7}, "tenant must be an identifier."),
        ({"project": "a/b"}, "project must be a project id."),
        ({"project": "a..b"}, "project must be a project id."),
        ({"project": 7}, "project must be a project id."),
        ({"jti": "j" * 129}, "jti must be 1-128 visible ASCII characters."),
        ({"jti": "a b"}, "jti must be 1-128 visible ASCII characters."),
        ({"maxFiles": 0}, "maxFiles must be a positive integer."),
        ({"maxFileBytes": "5"}, "maxFileBytes must be a positive integer."),
        ({"maxBytes": True}, "maxBytes must be a positive integer."),
        ({"maxBytes": 1.5}, "maxBytes must be a positive integer."),
        ({"types": []}, "types must be 1-20 of type/subtype, type/* or */*."),
        ({"types": "image/*"}, "types must be 1-20 of type/subtype, type/* or */*."),
        ({"types": ["image"]}, "types must be 1-20 of type/subtype, type/* or */*."),
        ({"types": ["*/png"]}, "types must be 1-20 of type/subtype, type/* or */*."),
        ({"types": ["Image/PNG"]}, "types must be 1-20 of type/subtype, type/* or */*."),
        ({"types": [5]}, "types must be 1-20 of type/subtype, type/* or */*."),
        ({"types": ["image/png"] * 21}, "types must be 1-20 of type/subtype, type/* or */*."),
        ({"redirect": 5}, "redirect must be a string."),
        (
            {"redirect": "javascript:alert(1)"},
            "redirect must be an http(s) URL or a path on the gateway.",
        ),
        ({"redirect": "//evil.test/"}, "redirect must be an http(s) URL or a path on the gateway."),
        (
            {"redirectOrigins": "https://a.test"},
            "redirectOrigins must be 0-20 origins (scheme://host[:port]).",
        ),
        (
            {"redirectOrigins": ["https://a.test/x"]},
            "redirectOrigins must be 0-20 origins (scheme://host[:port]).",
        ),
        ({"redirectOrigins": [1]}, "redirectOrigins must be 0-20 origins (scheme://host[:port])."),
        ({"fields": ["caption"]}, "fields must be an object of at most 3 fields."),
        (
            {"fields": {"a": "1", "b": "2", "c": "3", "d": "4"}},
            "fields must be an object of at most 3 fields.",
        ),
        ({"fields": {"": "x"}}, "fields: '' is not a field a ticket may fix."),
        ({"fields": {"n" * 65: "x"}}, f"fields: {'n' * 65!r} is not a field a ticket may fix."),
        ({"fields": {"projectId": "p2"}}, "fields: 'projectId' is not a field a ticket may fix."),
        ({"fields": {"a": 1}}, "fields: 'a' must be text of at most 8 bytes."),
        ({"fields": {"a": "ééééé"}}, "fields: 'a' must be text of at most 8 bytes."),
        ({"fields": {"a": "\ud800"}}, "A claim holds an unpaired surrogate (\\ud800-\\udfff)."),
        ({"sub": "\udfff"}, "A claim holds an unpaired surrogate (\\ud800-\\udfff)."),
    ],
)
def test_every_claim_that_is_not_valid_is_refused(clock, changes, message):
    assert invalid(clock, claims(**changes)) == message


@pytest.mark.parametrize("name", sorted(tk.RESERVED_FIELDS))
def test_a_ticket_cannot_fix_what_the_form_protocol_reads(clock, name):
    assert invalid(clock, claims(fields={name: "x"})) == (
        f"fields: {name!r} is not a field a ticket may fix."
    )


def test_claims_at_their_bounds_are_valid(clock):
    ticket = read(
        clock,
        claims(
            sub="s" * 256,
            jti="j" * 128,
            tenant="",
            types=["image/png"] * 20,
            redirectOrigins=["HTTPS://A.test:8443"] + ["https://b.test"] * 19,
            fields={"a": "éééé", "n" * 64: "12345678", "c": ""},
        ),
    )
    assert ticket.subject == "s" * 256 and ticket.id == "j" * 128 and ticket.tenant == ""
    assert ticket.redirect_origins[:2] == ("https://own.test", "https://a.test:8443")
    assert ticket.fields == {"a": "éééé", "n" * 64: "12345678", "c": ""}
    assert read(clock, claims(types=["*/*"], redirect="/done")).types == ("*/*",)


# -- what a post is checked against --------------------------------------------------------------
def ticket(**changes) -> Ticket:
    values = {
        "id": "t-1",
        "subject": "alice",
        "tenant": "acme",
        "project": "p1",
        "expires_at": float(NOW + 600),
        "max_files": 2,
        "max_file_bytes": 100,
        "max_bytes": 150,
        "types": None,
        "redirect": None,
        "redirect_origins": ("https://partner.test",),
        "fields": {"caption": "hi"},
        "token": "the.ticket.token",
    }
    values.update(changes)
    return Ticket(**values)


def test_the_project_is_the_tickets():
    ticket().check_project("p1")
    with pytest.raises(errors.TicketProject) as info:
        ticket().check_project("p2")
    assert info.value.status == 403 and info.value.code == "ticket_project"
    assert info.value.message == "The ticket is for project 'p1'."


def test_fixed_fields_and_the_ticket_field_must_match():
    t = ticket()
    t.check_field("caption", "hi")
    t.check_field("other", "anything")
    t.check_field("ticket", "the.ticket.token")
    with pytest.raises(errors.TicketField) as info:
        t.check_field("caption", "hi ")
    assert info.value.status == 403 and info.value.code == "ticket_field"
    assert info.value.message == "The ticket fixes the field 'caption'."
    with pytest.raises(errors.TicketField) as info:
        t.check_field("ticket", "another.ticket.token")
    assert info.value.message == "A post carries one ticket."


def test_file_count_and_bytes_are_bounded_exactly():
    t = ticket()
    t.check_files(2)
    with pytest.raises(errors.FormLimit) as info:
        t.check_files(3)
    assert info.value.status == 413 and info.value.message == "The ticket allows at most 2 file(s)."
    t.check_bytes(100, 150)
    with pytest.raises(errors.TooLarge) as info:
        t.check_bytes(101, 101)
    assert info.value.message == "The ticket allows at most 100 bytes a file."
    with pytest.raises(errors.TooLarge) as info:
        t.check_bytes(10, 151)
    assert info.value.code == "too_large"
    assert info.value.message == "The ticket allows at most 150 bytes in all."


def test_a_fixed_redirect_may_be_repeated_not_changed():
    t = ticket(redirect="https://partner.test/done")
    assert t.redirect_for(None) == "https://partner.test/done"
    assert t.redirect_for("https://partner.test/done") == "https://partner.test/done"
    with pytest.raises(errors.TicketField) as info:
        t.redirect_for("https://partner.test/other")
    assert info.value.message == "The ticket fixes the redirect."


def test_otherwise_the_forms_redirect_goes_to_an_allowed_origin():
    t = ticket()
    assert t.redirect_for(None) is None
    assert t.redirect_for("https://partner.test/x?a=1") == "https://partner.test/x?a=1"
    assert t.redirect_for("/upload/result") == "/upload/result"
    with pytest.raises(errors.InvalidRedirect):
        t.redirect_for("https://evil.test/x")


# -- issuing -------------------------------------------------------------------------------------
def test_an_issued_ticket_carries_the_callers_subject_and_tenant(clock):
    request = TicketRequest(
        project_id="p2",
        tenant="acme",
        max_files=3,
        max_file_bytes=200,
        max_bytes=400,
        types=("image/png", "image/*"),
        redirect="https://partner.test/done",
        redirect_origins=("https://partner.test",),
        fields={"caption": "x"},
        expires_in=900,
    )
    issued = service(clock).issue(ALICE, request)
    decoded = jwt.decode(
        issued.token, OWN, algorithms=["HS256"], audience=tk.AUDIENCE, options=PAST
    )
    assert jwt.get_unverified_header(issued.token) == {"alg": "HS256", "typ": "JWT"}
    assert len(decoded["jti"]) == 32 and int(decoded["jti"], 16) >= 0
    assert decoded == {
        "aud": tk.AUDIENCE,
        "sub": "alice",
        "tenant": "acme",
        "project": "p2",
        "jti": decoded["jti"],
        "iat": NOW,
        "exp": NOW + 900,
        "maxFiles": 3,
        "maxFileBytes": 200,
        "maxBytes": 400,
        "types": ["image/png", "image/*"],
        "redirect": "https://partner.test/done",
        "redirectOrigins": ["https://partner.test"],
        "fields": {"caption": "x"},
    }
    assert issued == service(clock).read(issued.token)
    assert issued.id == decoded["jti"] and issued.expires_at == NOW + 900


def test_an_issued_ticket_holds_only_what_was_asked(clock):
    plain = Principal(subject="bob", tenant="", projects=None)
    issued = service(clock).issue(plain, TicketRequest(project_id="p1"))
    decoded = jwt.decode(
        issued.token, OWN, algorithms=["HS256"], audience=tk.AUDIENCE, options=PAST
    )
    assert decoded == {
        "aud": tk.AUDIENCE,
        "sub": "bob",
        "project": "p1",
        "jti": decoded["jti"],
        "iat": NOW,
        "exp": NOW + 3600,  # the longest a ticket may live
    }
    again = service(clock).issue(plain, TicketRequest(project_id="p1"))
    assert again.id != issued.id


def test_issuing_is_for_the_callers_own_tenant_and_projects(clock):
    tickets = service(clock)
    with pytest.raises(errors.TicketTenant) as info:
        tickets.issue(ALICE, TicketRequest(project_id="p1", tenant="globex"))
    assert info.value.message == "A ticket may only be for the caller's own tenant."
    with pytest.raises(errors.ProjectForbidden):
        tickets.issue(ALICE, TicketRequest(project_id="p3"))
    with pytest.raises(errors.InvalidProjectId):
        tickets.issue(ALICE, TicketRequest(project_id="../p1"))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"expires_in": 0}, "expiresIn must be 1-3600."),
        ({"expires_in": 3601}, "expiresIn must be 1-3600."),
        ({"max_files": 0}, "maxFiles must be 1-10."),
        ({"max_files": 11}, "maxFiles must be 1-10."),
        ({"max_file_bytes": 1001}, "maxFileBytes must be 1-1000."),
        ({"max_bytes": 0}, "maxBytes must be 1-1000."),
        ({"max_bytes": 1001}, "maxBytes must be 1-1000."),
        (
            {"types": ("application/pdf",)},
            "types: 'application/pdf' is not within the gateway's image/*, video/mp4.",
        ),
        (
            {"types": ("video/*",)},
            "types: 'video/*' is not within the gateway's image/*, video/mp4.",
        ),
        ({"types": ("*/*",)}, "types: '*/*' is not within the gateway's image/*, video/mp4."),
        (
            {"types": ("image/svg+xml",)},
            "types: 'image/svg+xml' is not within the gateway's image/*, video/mp4.",
        ),
        ({"types": ()}, "types must be 1-20 of type/subtype, type/* or */*."),
        (
            {"redirect": "ftp://x.test/"},
            "redirect must be an http(s) URL or a path on the gateway.",
        ),
        (
            {"redirect_origins": ("nope",)},
            "redirectOrigins must be 0-20 origins (scheme://host[:port]).",
        ),
        ({"fields": {"sha256": "x"}}, "fields: 'sha256' is not a field a ticket may fix."),
    ],
)
def test_a_request_beyond_the_gateway_is_refused(clock, changes, message):
    with pytest.raises(errors.InvalidTicketRequest) as info:
        service(clock).issue(ALICE, TicketRequest(project_id="p1", **changes))
    assert info.value.status == 400 and info.value.code == "invalid_ticket_request"
    assert info.value.message == message


def test_a_request_at_the_gateways_bounds_is_issued(clock):
    request = TicketRequest(
        project_id="p1",
        max_files=10,
        max_file_bytes=1000,
        max_bytes=1,
        types=("video/mp4", "image/webp", "image/*"),
        expires_in=1,
    )
    issued = service(clock).issue(ALICE, request)
    assert (issued.max_files, issued.max_file_bytes, issued.max_bytes) == (10, 1000, 1)
    assert issued.expires_at == NOW + 1
    anything = TicketPolicy(**{**POLICY.__dict__, "allowed_types": ("*/*",)})
    wide = service(clock, policy=anything).issue(ALICE, TicketRequest("p1", types=("*/*",)))
    assert wide.types == ("*/*",)


def test_a_wildcard_is_within_only_the_same_wildcard_or_any_type(clock):
    """``image/*`` is not within ``image/?`` (a glob that would match the text "image/*")."""
    for allowed, wanted, issued in (
        (("image/?",), "image/*", False),
        (("image/*",), "image/*", True),
        (("*/*",), "image/*", True),
        (("image/png",), "image/*", False),
        (("image/?",), "image/a", True),
    ):
        policy = TicketPolicy(**{**POLICY.__dict__, "allowed_types": allowed})
        request = TicketRequest("p1", types=(wanted,))
        if issued:
            assert service(clock, policy=policy).issue(ALICE, request).types == (wanted,)
        else:
            with pytest.raises(errors.InvalidTicketRequest):
                service(clock, policy=policy).issue(ALICE, request)


def test_the_policy_is_the_settings():
    settings = Settings(
        jwt_secret="j" * 40,
        jwt_leeway=7,
        ticket_max_seconds=600,
        max_files=4,
        max_upload_bytes=5000,
        allowed_types=("image/*",),
        max_fields=6,
        max_field_bytes=77,
        redirect_origins=("https://a.test",),
    )
    assert ticket_policy(settings) == TicketPolicy(
        max_seconds=600,
        leeway=7,
        max_files=4,
        max_bytes=5000,
        allowed_types=("image/*",),
        max_fields=6,
        max_field_bytes=77,
        redirect_origins=("https://a.test",),
    )


# -- once only -----------------------------------------------------------------------------------
def post(store, *, status=201, fails=False):
    """A post's ``first``: saves its answer through the plan, as the form upload does."""
    ran = []

    def first(plan):
        ran.append(plan)
        if fails:
            raise errors.UnsupportedType()
        saved, code, body = plan.answer([], "fingerprint-1")
        store.create_many([], answer=saved)
        return code, body

    return first, ran


def render(records):
    return 201, {"success": True, "files": []}


def test_the_first_post_runs_and_the_same_post_again_gets_its_answer(clock, store):
    tickets = service(clock, store)
    t = ticket()
    first, ran = post(store)
    outcome = tickets.once(t, render=render, first=first, fingerprint_of_retry=pytest.fail)
    assert outcome == Outcome(201, {"success": True, "files": []}, replayed=False)
    (plan,) = ran
    assert (plan.scope, plan.key) == ("ticket:acme", "t-1")
    again, ran_again = post(store)
    outcome = tickets.once(
        t, render=render, first=again, fingerprint_of_retry=lambda: "fingerprint-1"
    )
    assert outcome == Outcome(201, {"success": True, "files": []}, replayed=True)
    assert ran_again == []


def test_another_post_with_a_used_ticket_is_refused(clock, store):
    tickets = service(clock, store)
    tickets.once(ticket(), render=render, first=post(store)[0], fingerprint_of_retry=pytest.fail)
    other, ran = post(store)
    with pytest.raises(errors.TicketUsed) as info:
        tickets.once(ticket(), render=render, first=other, fingerprint_of_retry=lambda: "other")
    assert info.value.status == 409 and info.value.code == "ticket_used"
    assert ran == []


def test_tickets_of_two_tenants_with_one_id_are_two_tickets(clock, store):
    tickets = service(clock, store)
    tickets.once(ticket(), render=render, first=post(store)[0], fingerprint_of_retry=pytest.fail)
    first, ran = post(store)
    tickets.once(ticket(tenant="globex"), render=render, first=first, fingerprint_of_retry=None)
    assert len(ran) == 1 and ran[0].scope == "ticket:globex"


def test_a_failed_post_leaves_the_ticket_unused(clock, store):
    tickets = service(clock, store)
    failing, _ = post(store, fails=True)
    with pytest.raises(errors.UnsupportedType):
        tickets.once(ticket(), render=render, first=failing, fingerprint_of_retry=pytest.fail)
    first, ran = post(store)
    outcome = tickets.once(ticket(), render=render, first=first, fingerprint_of_retry=None)
    assert outcome.status == 201 and not outcome.replayed and len(ran) == 1


def test_the_used_mark_outlives_the_tickets_last_valid_second(clock, store):
    tickets = service(clock, store)
    clock.now = NOW + 100
    first, ran = post(store)
    tickets.once(ticket(), render=render, first=first, fingerprint_of_retry=pytest.fail)
    last_valid = NOW + 600 + 30  # exp + the leeway
    assert ran[0].ttl == last_valid + 60 - (NOW + 100)
    claim = {"lock_timeout": 600.0, "ttl": 1.0}
    assert store.claim("ticket:acme", "t-1", now=last_valid + 59, **claim) is not None  # used
    assert store.claim("ticket:acme", "t-1", now=last_valid + 60, **claim) is None  # forgotten


def test_a_post_waits_for_one_still_running_then_gives_up(clock, store):
    tickets = service(clock, store)
    store.claim("ticket:acme", "t-1", now=NOW, lock_timeout=600.0, ttl=3600.0)  # held
    first, ran = post(store)
    with pytest.raises(errors.TicketInProgress) as info:
        tickets.once(ticket(), render=render, first=first, fingerprint_of_retry=pytest.fail)
    assert info.value.status == 409 and info.value.code == "ticket_in_progress"
    assert ran == []
    assert clock.slept == [0.1] * 20 and clock.now == pytest.approx(NOW + 2.0)


class HeldFor:
    """An idempotency store whose key another post holds until ``until``."""

    def __init__(self, clock, until: float) -> None:
        self.clock, self.until = clock, until
        self.claims: list[float] = []
        self.released: list[tuple[str, str]] = []

    def claim(self, scope, key, *, now, lock_timeout, ttl):
        self.claims.append(now)
        if self.clock() < self.until:
            raise errors.IdempotencyInProgress()

    def release(self, scope, key):
        self.released.append((scope, key))


def test_a_post_takes_the_ticket_once_the_one_before_lets_go(clock):
    store = HeldFor(clock, until=NOW + 0.95)
    tickets = service(clock, store)
    ran = []

    def first(plan):
        ran.append(plan)
        return 201, {}

    outcome = tickets.once(ticket(), render=render, first=first, fingerprint_of_retry=pytest.fail)
    assert outcome.status == 201 and len(ran) == 1
    assert store.claims == pytest.approx([NOW + 0.1 * i for i in range(11)])  # fresh each time


def test_a_post_whose_failure_releases_the_ticket_through_the_waiting_store(clock):
    store = HeldFor(clock, until=NOW)

    def first(plan):
        raise errors.TooLarge()

    with pytest.raises(errors.TooLarge):
        service(clock, store).once(
            ticket(), render=render, first=first, fingerprint_of_retry=pytest.fail
        )
    assert store.released == [("ticket:acme", "t-1")]


def test_the_wait_ends_at_its_deadline_exactly(clock):
    store = HeldFor(clock, until=NOW + 2.05)  # held past the wait
    with pytest.raises(errors.TicketInProgress):
        service(clock, store).once(
            ticket(), render=render, first=pytest.fail, fingerprint_of_retry=pytest.fail
        )
    assert len(store.claims) == 21


# -- the examples in docs/tickets.md sign what the gateway reads ------------------------------------
def test_a_token_signed_by_hand_with_hmac_is_a_ticket(clock):
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    signed = part({"alg": "HS256", "typ": "JWT"}) + "." + part(claims(maxFiles=1))
    digest = hmac.new(OWN, signed.encode(), hashlib.sha256).digest()
    token = signed + "." + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert service(clock).read(token).max_files == 1
