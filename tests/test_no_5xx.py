"""No 5xx for bad input: generated requests at every route, through the Flask test client.

Hypothesis throws mutated ids, query strings, headers (tokens, Content-Types, boundaries,
Idempotency-Keys, lengths), JSON bodies (wrong types, deep nesting) and mutated multipart
bodies at every route. The properties, for every answer:

- the status is below 500 (in embedded mode the direct-upload routes may answer 501
  ``direct_uploads_unavailable``: that is what they are documented to do);
- every status >= 400 carries the one error shape ``{success: false, error: {code, message},
  requestId}``, its code is in ``errors.CATALOGUE`` with that status, and ``requestId`` is the
  ``X-Request-ID`` header.

The form-upload and media routes run on the local backend (fast); the direct-upload routes run
on S3 (moto) with fewer examples. Known 5xx inputs are pinned by the regression tests at the end.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import quote, quote_from_bytes, urlsplit

import jwt
import pytest
import requests
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from werkzeug.test import EnvironBuilder, TestResponse
from werkzeug.wrappers import Request

from gateway.errors import CATALOGUE
from gateway.media.lifecycle import VISIBLE

from conftest import make_settings
from support import JWT_SECRET, MiB, form_body, jpeg_bytes, png_bytes

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),  # HS512 token
]

# The function-scoped app is shared by the examples of one test on purpose (state builds up).
PROPERTY = hypothesis_settings(
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    deadline=None,
)
# S3 (moto) round trips are slower: a third of the profile's examples (100 in "suite").
S3_PROPERTY = hypothesis_settings(
    PROPERTY, max_examples=max(10, hypothesis_settings.default.max_examples // 3)
)
DIRECT_ROUTES = ("/api/uploads/",)
VISIBLE_STATUSES = sorted(status.value for status in VISIBLE)


@pytest.fixture
def backend():
    """Overrides conftest's backend: local unless a test parametrizes it."""
    return "local"


@pytest.fixture(name="settings")
def gateway_settings(tmp_path, backend, request):
    moto = request.getfixturevalue("moto_url") if backend != "local" else None
    return make_settings(
        tmp_path,
        backend=backend,
        moto_url=moto,
        direct_single_put_max=5 * MiB,
        direct_part_size=5 * MiB,
        direct_max_pending=1_000_000,  # else later examples only ever see 429
    )


# -- sending and checking ------------------------------------------------------------------------
@dataclass
class Call:
    method: str
    path: str
    query: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    length: str = "exact"  # exact | short | long | chunked | none | garbage


def send(client, call: Call) -> TestResponse:
    builder = EnvironBuilder(
        path=call.path,
        method=call.method,
        query_string=call.query,
        headers=call.headers,
        data=call.body,
    )
    try:
        environ = builder.get_environ()
    finally:
        builder.close()
    size = len(call.body or b"")
    if call.length == "short":
        environ["CONTENT_LENGTH"] = str(max(0, size - 7))
    elif call.length == "long":
        environ["CONTENT_LENGTH"] = str(size + 100)
    elif call.length == "garbage":
        environ["CONTENT_LENGTH"] = "12abc"
    elif call.length in ("chunked", "none"):
        environ.pop("CONTENT_LENGTH", None)
        if call.length == "chunked":
            environ["HTTP_TRANSFER_ENCODING"] = "chunked"
            environ["wsgi.input_terminated"] = True
    return client.open(Request(environ))  # as is: an environ dict would be rebuilt


def check(response: TestResponse, *, unavailable_ok: bool = False) -> None:
    status, method = response.status_code, response.request.method
    detail = (
        f"{method} {response.request.full_path[:300]} -> {status} {response.get_data()[:300]!r}"
    )
    body = response.get_json(silent=True)
    code = body.get("error", {}).get("code", "") if isinstance(body, dict) else ""
    if currently_in_test_context():  # --hypothesis-show-statistics: what the examples reached
        event(f"{method} {'/'.join(response.request.path.split('/')[:3])[:24]} {status} {code}")
    if status == 501 and unavailable_ok:
        assert method == "HEAD" or body["error"]["code"] == "direct_uploads_unavailable", detail
    else:
        assert status < 500, detail
    if status < 400 or method == "HEAD":
        return
    assert response.mimetype == "application/json", detail
    assert isinstance(body, dict), detail
    assert set(body) == {"success", "error", "requestId"}, detail
    assert body["success"] is False, detail
    error = body["error"]
    assert isinstance(error, dict), detail
    assert set(error) == {"code", "message"}, detail
    assert error["code"] in CATALOGUE, detail
    assert isinstance(error["message"], str), detail
    assert error["message"], detail
    if error["code"] != "request_rejected":  # it keeps the framework's own status
        assert CATALOGUE[error["code"]].status == status, detail
    assert body["requestId"], detail
    assert body["requestId"] == response.headers.get("X-Request-ID"), detail


# -- strategies ----------------------------------------------------------------------------------
def mostly(
    common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], weight: int = 4
) -> st.SearchStrategy[Any]:
    """From ``common`` about ``weight`` times in ``weight + 1``, else from ``rare``.

    (``one_of`` would not do: it draws its branches about evenly, duplicates or not.)"""
    return st.sampled_from([True] * weight + [False]).flatmap(lambda c: common if c else rare)


def often(common: Any, rare: st.SearchStrategy[Any], weight: int = 4) -> st.SearchStrategy[Any]:
    return mostly(st.just(common), rare, weight)


SPECIAL_TEXT = [
    "", " ", "\n", "\r\n", "\t", "\x00", "0", "-1", "1", "20", "100", "101", "+5", " 5 ",
    "5\n", "1_0", "0x10", "1e3", "NaN", "inf", "\u0661\u0662", "9" * 5000, "%00", "%", "null",
    "[]", "{}", "NQ", "bnVsbA", "stored", "pending", "rejected", "STORED", "stored\n", "p1",
    "p1\n", "../p1", "p" * 65, "a..b", "\u00e9", "\u202e", "\U0001f600", "\ufeff", "\uffff",
]  # fmt: skip
# Any character, lone surrogates included (JSON can carry them as \udxxx escapes), and often one
# of the characters that tend to break things.
TRICKY_CHARS = ["\ud800", "\udfff", "\x00", "\n", "\x7f", "\u00e9", "\u202e", "\U0001f600", "/"]
ANY_CHAR = st.one_of(st.sampled_from(TRICKY_CHARS), st.characters(exclude_categories=()))
odd_text = st.one_of(st.sampled_from(SPECIAL_TEXT), st.text(max_size=40))
any_text = st.one_of(odd_text, st.text(ANY_CHAR, max_size=20))
header_text = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=60)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**63, -(2**63) - 1, 10**30, 0, -1])
    | st.floats()
    | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)

_CLOSERS = {"[": "]", '{"a":': "}", '{"files":[': "]}", '[{"x":': "}]"}


def deep_json(opener: str, depth: int, closed: bool) -> str:
    return opener * depth + ("1" + _CLOSERS[opener] * depth if closed else "")


deep_json_text = st.builds(
    deep_json,
    st.sampled_from(list(_CLOSERS)),
    st.one_of(st.integers(1, 50), st.integers(900, 1100), st.sampled_from([10_000, 100_000])),
    st.booleans(),
)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()  # ASCII: lone surrogates travel as \udxxx escapes


cursor_values = st.one_of(
    st.lists(any_text, min_size=2, max_size=2).map(lambda pair: b64(as_json(pair))),
    deep_json_text.map(lambda text: b64(text.encode())),
    json_values.map(lambda v: b64(as_json(v))),
    st.binary(max_size=64).map(b64),
    odd_text,
)
int_text = st.one_of(
    odd_text, st.integers().map(str), st.integers(-3, 10_003).map(str), st.just("9" * 5000)
)
sha256_values = st.one_of(
    st.sampled_from(
        [
            "a" * 64, "a" * 64 + "\n", "\n" + "a" * 64, "A" * 64, "a" * 63, "a" * 65, "g" * 64,
            "a" * 64 + "\x00", " " + "a" * 64, "",
        ]
    ),
    odd_text,
)  # fmt: skip


def query_string(pairs: list[tuple[str, bytes]], junk: str) -> str:
    encoded = [f"{quote(k, safe='')}={quote_from_bytes(v, safe='')}" for k, v in pairs]
    return "&".join(encoded) + junk


query_junk = st.sampled_from(["", "", "", "&", "&&", "=", "%", "%zz", "&cursor", "&limit=", ";x"])


def draw_query(draw, named: dict[str, st.SearchStrategy[str]]) -> str:
    """Each named parameter maybe (sometimes twice), plus random ones and raw junk."""
    pairs: list[tuple[str, bytes]] = []
    for name, values in named.items():
        times = draw(st.sampled_from([0, 1, 1, 1, 1, 2]))
        pairs += [(name, draw(values).encode()) for _ in range(times)]
    pairs += draw(
        st.lists(st.tuples(odd_text, st.one_of(odd_text.map(str.encode), st.binary(max_size=40))))
    )
    order = draw(st.permutations(range(len(pairs))))
    return query_string([pairs[i] for i in order], draw(query_junk))


def mutate_id(value: str) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            value + "\n", value.upper(), value[:-1], value + "0", "\n" + value, value + " ",
            value + "/", value + ".png", value + "%00", value[::-1], value + value,
        ]
    )  # fmt: skip


def draw_id(draw, known: list[str]) -> str:
    """A known id (mostly), a mutated one, or anything; percent-encoded for the path."""
    if draw(st.sampled_from([True, True, False])):
        return quote(draw(st.sampled_from(known)), safe="")
    kind = draw(st.sampled_from(["mutated", "text", "bytes", "special"]))
    if kind == "mutated":
        return quote(draw(st.sampled_from(known).flatmap(mutate_id)), safe="")
    if kind == "text":
        return quote(draw(st.text(min_size=1, max_size=80)), safe="")
    if kind == "bytes":
        return quote_from_bytes(draw(st.binary(min_size=1, max_size=40)), safe="")
    return draw(st.sampled_from(["a" * 32, "0" * 31, "A" * 32, "x" * 5000, ".", "..", "%2e%2e"]))


ONE_IN_FIVE = st.sampled_from([False, False, False, False, True])  # st.integers() favours 0
LENGTHS = often("exact", st.sampled_from(["short", "long", "chunked", "none", "garbage"]))


@dataclass
class World:
    """What the examples aim at: tokens by name, and ids, keys and cursors that exist."""

    tokens: dict[str, str]
    media_ids: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    cursors: list[str] = field(default_factory=list)
    upload_ids: list[str] = field(default_factory=list)
    tickets: list[str] = field(default_factory=list)  # upload tickets, some not valid


def draw_headers(draw, world: World, *, content_type: str | None = None) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    auth = draw(often("alice", st.sampled_from([*sorted(world.tokens), "garbage"]), weight=8))
    if auth == "garbage":
        headers.append(("Authorization", draw(header_text)))
    elif auth != "missing":
        headers.append(("Authorization", f"Bearer {world.tokens[auth]}"))
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    if draw(ONE_IN_FIVE):
        key = draw(st.sampled_from(["k1", "k2", "", " ", "k" * 256, "\u00e9"]) | header_text)
        headers.append(("Idempotency-Key", key))
    if draw(ONE_IN_FIVE):
        headers.append(("X-Request-ID", draw(st.sampled_from(["r-1", "x" * 129]) | header_text)))
    if draw(ONE_IN_FIVE):
        name = draw(st.sampled_from(["Range", "If-None-Match", "If-Modified-Since", "If-Range"]))
        value = st.sampled_from(
            [
                "bytes=0-10", "bytes=-5", "bytes=999999-", "bytes=5-1", "bytes=a-b", "bytes=",
                "bytes=0-0,2-3", "items=0-1", "*", '"x"', "Mon, 99 Foo 2024 99:99:99 GMT",
            ]
        )  # fmt: skip
        headers.append((name, draw(value | header_text)))
    return headers


def make_tokens(token) -> dict[str, str]:
    def signed(claims: dict[str, Any], key: str = JWT_SECRET, algorithm: str = "HS256") -> str:
        return jwt.encode({"exp": 4_000_000_000, **claims}, key, algorithm=algorithm)

    return {
        "alice": token("alice"),
        "bob": token("bob"),
        "admin": token("root", admin=True),
        "p2 only": token("alice", projects=["p2"]),
        "tenant t1": token("alice", tenant="t1"),
        "expired": token("alice", ttl=timedelta(days=-1)),
        "other key": signed({"sub": "alice"}, key="k" * 64),
        "no exp": jwt.encode({"sub": "alice"}, JWT_SECRET, algorithm="HS256"),
        "alg none": jwt.encode({"sub": "alice", "exp": 4_000_000_000}, None, algorithm="none"),
        "HS512": signed({"sub": "alice"}, algorithm="HS512"),
        "ticket audience": signed({"sub": "alice", "aud": "upload-gateway:ticket"}),
        "sub int": signed({"sub": 5}),
        "no sub": signed({}),
        "projects str": signed({"sub": "alice", "projects": "p1"}),
        "projects ints": signed({"sub": "alice", "projects": [1]}),
        "tenant bad": signed({"sub": "alice", "tenant": "../x"}),
        "tenant int": signed({"sub": "alice", "tenant": 7}),
        "admin str": signed({"sub": "alice", "admin": "yes"}),
        "refresh": signed({"sub": "alice", "type": "refresh"}),
        "nbf future": signed({"sub": "alice", "nbf": 4_000_000_000}),
        "empty": "",
        "missing": "",
    }


def upload(client, headers, project: str, content: bytes) -> dict:
    body, content_type = form_body([("projectId", project)], [("file", "cat.png", content)])
    response = client.post(
        "/api/upload", data=body, headers={**headers, "Content-Type": content_type}
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


@pytest.fixture
def world(client, token, settings) -> World:
    world = World(make_tokens(token))

    def bearer(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {world.tokens[name]}"}

    stored = [
        upload(client, bearer("alice"), "p1", png_bytes(3000, seed=1)),
        upload(client, bearer("alice"), "p1", png_bytes(3000, seed=2)),
        upload(client, bearer("alice"), "p1", jpeg_bytes(3000)),
        upload(client, bearer("bob"), "p1", png_bytes(3000, seed=3)),
        upload(client, bearer("alice"), "p2", png_bytes(3000, seed=4)),
        upload(client, bearer("tenant t1"), "p1", png_bytes(3000, seed=5)),
    ]
    world.media_ids = [s["mediaId"] for s in stored]
    world.keys = [urlsplit(s["url"]).path.removeprefix("/media/") for s in stored]
    listing = client.get("/api/media?projectId=p1&limit=1", headers=bearer("alice")).get_json()
    world.cursors = [listing["nextCursor"]]

    def ticket(**request: Any) -> str:
        answer = client.post(
            "/api/tickets", json={"projectId": "p1", **request}, headers=bearer("alice")
        )
        assert answer.status_code == 201, answer.get_json()
        return str(answer.get_json()["ticket"])

    limited = ticket(maxFiles=1, maxFileBytes=3000, types=["image/png"], fields={"a": "x"},
                     redirect="/done")  # fmt: skip
    expired = {"aud": "upload-gateway:ticket", "sub": "a", "project": "p1", "jti": "old",
               "iat": 1_000_000_000, "exp": 1_000_000_600}  # fmt: skip
    world.tickets = [
        *(ticket() for _ in range(3)),
        limited,
        limited[:-2],  # tampered
        jwt.encode(expired, settings.ticket_key, algorithm="HS256"),
        world.tokens["alice"],  # a bearer token is no ticket
    ]
    return world


# -- local backend: media routes, the form upload, every route with every method -----------------
@PROPERTY
@given(data=st.data())
def test_media_routes_never_5xx(client, world, data):
    draw = data.draw
    route = draw(st.sampled_from(["list"] * 4 + ["get", "delete", "file", "healthz", "readyz"]))
    method, query = "GET", ""
    if route in ("get", "delete"):
        method = "DELETE" if route == "delete" else "GET"
        path = f"/api/media/{draw_id(draw, world.media_ids)}"
    elif route == "list":
        path = "/api/media"
        cursors = mostly(cursor_values, st.sampled_from(world.cursors), weight=3)
        # Mostly valid, so that the cursor (decoded last) is reached as often as not.
        query = draw_query(
            draw,
            {
                "projectId": often("p1", st.sampled_from(["p2", "p3"]) | odd_text, weight=6),
                "cursor": cursors,
                "limit": mostly(st.integers(1, 100).map(str), int_text),
                "status": mostly(st.sampled_from(VISIBLE_STATUSES), odd_text, weight=3),
            },
        )
    elif route == "file":
        key = draw(st.sampled_from(world.keys))
        key = draw(
            st.one_of(
                st.just(quote(key)),
                mutate_id(key).map(quote),
                st.sampled_from([f"../{key}", f"/{key}", f"{key}/..", "..%2f..%2fetc/passwd"]),
                st.binary(min_size=1, max_size=40).map(lambda raw: quote_from_bytes(raw, "/")),
            )
        )
        path = f"/media/{key}"
        method = draw(often("GET", st.just("HEAD")))
    else:
        path = f"/{route}"
    call = Call(method, path, query, draw_headers(draw, world))
    check(send(client, call))


ROUTES = [
    "/api/upload", "/api/media/{media}", "/api/media", "/api/uploads/initiate",
    "/api/uploads/{upload}", "/api/uploads/{upload}/parts", "/api/uploads/{upload}/complete",
    "/api/uploads/{upload}/abort", "/healthz", "/readyz", "/media/{key}", "/api/", "/",
    "/api/tickets",
]  # fmt: skip
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@PROPERTY
@given(data=st.data())
def test_every_route_and_method_never_5xx(client, world, data):
    """Embedded mode: the direct-upload routes may answer 501, never anything else >= 500."""
    draw = data.draw
    route = draw(st.sampled_from(ROUTES))
    path = route.format(
        media=draw_id(draw, world.media_ids),
        upload=draw_id(draw, world.media_ids),
        key=quote(draw(st.sampled_from(world.keys))),
    )
    content_type = draw(
        st.sampled_from([None, "application/json", "multipart/form-data; boundary=x", "text/plain"])
        | header_text
    )
    body = draw(st.one_of(st.none(), json_bodies, st.binary(max_size=200)))
    call = Call(
        draw(st.sampled_from(METHODS)),
        path,
        draw_query(draw, {"projectId": often("p1", odd_text), "first": int_text}),
        draw_headers(draw, world, content_type=content_type),
        body,
        draw(LENGTHS),
    )
    check(send(client, call), unavailable_ok=route.startswith(DIRECT_ROUTES))


# multipart: valid forms from support.form_body, then bytes deleted, inserted, duplicated
DEFAULT_BOUNDARY = "----gatewaytestboundary7MA4YWxkTrZu0gW"
BOUNDARY_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'()+_,-./:=? "
boundaries = often(
    DEFAULT_BOUNDARY,
    st.one_of(
        st.text(BOUNDARY_CHARS, min_size=1, max_size=70),
        st.sampled_from(["a" * 71, "x ", " x", 'a"b', "a;b", "a\tb", "\u00e9", "--", "-", "="]),
    ),
)
TOKENS = [
    b"\r\n", b"\n", b"\r", b"--", b"\r\n\r\n", b'"', b";", b"\x00", b"\xff\xfe",
    b'Content-Disposition: form-data; name="file"; filename="x.png"\r\n',
    b'Content-Disposition: form-data; name="projectId"\r\n\r\np1\r\n',
    b"; filename*=UTF-8''%ED%A0%80", b"; filename*=UTF-8''%F0%9F%98%80.png",
    b"; name*=utf-8''%C3%A9", b'; filename=""', b"Content-Type: image/png\r\n",
    b"\r\n--" + DEFAULT_BOUNDARY.encode(), b"\r\n--" + DEFAULT_BOUNDARY.encode() + b"--\r\n",
    b"X-" + b"h" * 9000 + b": v\r\n",
]  # fmt: skip
mutations = st.lists(
    st.tuples(
        st.sampled_from(["delete", "insert", "duplicate", "replace", "truncate"]),
        st.one_of(st.integers(0, 400), st.integers(0, 1 << 20)),
        st.booleans(),  # position counted from the end
        st.integers(0, 80),
        st.one_of(st.sampled_from(TOKENS), st.binary(min_size=1, max_size=16)),
    ),
    max_size=4,
)


def mutate(body: bytes, ops: list[tuple[str, int, bool, int, bytes]]) -> bytes:
    out = bytearray(body)
    for kind, offset, from_end, size, chunk in ops:
        at = offset % (len(out) + 1)
        at = len(out) - at if from_end else at
        if kind == "delete":
            del out[at : at + size]
        elif kind == "insert":
            out[at:at] = chunk
        elif kind == "duplicate":
            out[at:at] = out[at : at + size]
        elif kind == "replace":
            out[at : at + len(chunk)] = chunk
        else:
            del out[at:]
    return bytes(out)


contents = st.one_of(
    st.integers(16, 4000).map(png_bytes),
    st.just(jpeg_bytes(2000)),
    st.sampled_from([b"", b"\x89PNG", b"GIF89a" + b"x" * 100, b"<svg></svg>", b"%PDF-1.4"]),
    st.binary(max_size=300),
)
file_parts = st.lists(
    st.tuples(
        often("file", st.sampled_from(["files", "other", "", "File"]) | odd_text),
        often("cat.png", odd_text),
        contents,
    ),
    max_size=3,
)


@st.composite
def form_fields(
    draw, files: list[tuple[str, str, bytes]], tickets: list[str] = ()
) -> list[tuple[str, str]]:
    fields = []
    if tickets and draw(ONE_IN_FIVE):
        fields.append(("ticket", draw(mostly(st.sampled_from(tickets), odd_text))))
    if draw(st.integers(0, 5)):
        fields.append(("projectId", draw(often("p1", st.sampled_from(["p2", "t1"]) | odd_text, 8))))
    if files and draw(st.booleans()):
        digest = hashlib.sha256(files[0][2]).hexdigest()
        fields.append(("sha256", draw(often(digest, st.just(digest + "\n") | sha256_values))))
    fields += draw(st.lists(st.tuples(odd_text, odd_text), max_size=2))
    return draw(st.permutations(fields))


@PROPERTY
@given(data=st.data())
def test_form_upload_never_5xx(client, world, data):
    draw = data.draw
    files = draw(file_parts)
    fields = draw(form_fields(files, world.tickets))
    boundary = draw(boundaries)
    file_type = draw(often("image/png", st.sampled_from(["", "text/plain", "image/png; x=y"])))
    body, content_type = form_body(fields, files, boundary=boundary, file_type=file_type)
    body = mutate(body, draw(st.one_of(st.just([]), mutations)))
    content_type = draw(
        often(
            content_type,
            st.sampled_from(
                [
                    f'multipart/form-data; boundary="{boundary}"',
                    "multipart/form-data",
                    "multipart/form-data; boundary=",
                    "multipart/form-data; boundary=other",
                    f"multipart/form-data; boundary={boundary}; boundary=other",
                    f"MULTIPART/FORM-DATA; BOUNDARY={boundary}",
                    f"multipart/form-data; charset=utf-8; boundary={boundary}",
                    f"multipart/mixed; boundary={boundary}",
                    "application/json",
                    "",
                ]
            )
            | header_text,
        )
    )
    projects = mostly(st.sampled_from(["p1", "p2"]), odd_text, weight=2)
    query = draw_query(draw, {"projectId": projects}) if draw(st.booleans()) else ""
    headers = draw_headers(draw, world, content_type=content_type)
    if ("ticket" in dict(fields)) and draw(st.booleans()):  # a ticket's post: no token
        headers = [(k, v) for k, v in headers if k != "Authorization"]
    check(send(client, Call("POST", "/api/upload", query, headers, body, draw(LENGTHS))))


# -- S3 backend: the direct-upload routes --------------------------------------------------------
def with_keys_dropped(values: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict]:
    """Every key (each value mostly valid), or some keys left out, or an extra one."""
    whole = st.fixed_dictionaries(values)
    dropped = st.tuples(whole, st.sets(st.sampled_from(sorted(values)))).map(
        lambda pair: {k: v for k, v in pair[0].items() if k not in pair[1]}
    )
    extra = st.tuples(whole, any_text, json_values).map(lambda t: {**t[0], t[1]: t[2]})
    return mostly(whole, st.one_of(dropped, extra), weight=3)


content_types = st.one_of(
    st.sampled_from(["image/jpeg", "video/mp4", "text/plain", "IMAGE/PNG", "", "image/png\n"]),
    st.sampled_from(["image/svg+xml", "application/octet-stream"]),
    json_values,
)
file_promises = with_keys_dropped(
    {
        "filename": often("cat.png", st.one_of(any_text, any_text, json_values), weight=2),
        "contentType": often("image/png", content_types, weight=6),
        "size": mostly(
            st.sampled_from([1, 20_000, 5 * MiB, 5 * MiB + 1, 12 * MiB, 5 * 1024 * MiB]),
            st.one_of(
                st.sampled_from([0, -1, 10**30, 2**63, 1.5, True, "10", None]),
                st.integers(),
                json_values,
            ),
            weight=6,
        ),
        "sha256": mostly(
            st.none() | st.binary(min_size=32, max_size=32).map(bytes.hex),
            st.one_of(sha256_values, json_values),
            weight=6,
        ),
    }
)
initiate_payloads = with_keys_dropped(
    {
        "projectId": often("p1", st.one_of(st.sampled_from(["p2", "p" * 64]), any_text)),
        "files": mostly(
            st.lists(file_promises, min_size=1, max_size=2),
            st.one_of(st.lists(file_promises, max_size=22), json_values),
        ),
    }
)
complete_payloads = with_keys_dropped(
    {
        "parts": mostly(
            st.lists(
                with_keys_dropped(
                    {
                        "partNumber": mostly(st.integers(1, 3), json_values),
                        "etag": mostly(st.text(max_size=40), json_values),
                    }
                ),
                max_size=3,
            ),
            json_values,
        )
    }
)


def encoded(value: Any) -> bytes:
    return json.dumps(value).encode()


json_bodies = st.one_of(
    initiate_payloads.map(encoded),
    complete_payloads.map(encoded),
    json_values.map(encoded),
    deep_json_text.map(str.encode),
    st.tuples(initiate_payloads, st.sampled_from(["utf-16", "utf-32", "utf-8-sig", "latin-1"])).map(
        lambda pair: json.dumps(pair[0], ensure_ascii=False).encode(pair[1], "replace")
    ),
    st.sampled_from(
        [b"", b"null", b"[]", b"{}", b"{", b'{"a":1}{"b":2}', b"NaN", b"\xff\xfe{", b"{\x00}"]
    ),
)
ODD_JSON_TYPES = [
    None, "application/json; charset=utf-8", "application/problem+json", "text/plain", "",
    "APPLICATION/JSON", "multipart/form-data; boundary=x",
]  # fmt: skip
JSON_TYPES = often("application/json", st.sampled_from(ODD_JSON_TYPES))


ticket_requests = with_keys_dropped(
    {
        "projectId": often("p1", st.sampled_from(["p2", "../p1"]) | any_text, weight=9),
        "tenant": often("", any_text, weight=9),
        "maxFiles": mostly(st.integers(1, 10), json_values, weight=9),
        "maxFileBytes": mostly(st.integers(1, 10 * MiB), json_values, weight=9),
        "maxBytes": mostly(st.integers(1, 10 * MiB), json_values, weight=9),
        "types": mostly(
            st.lists(st.sampled_from(["image/*", "image/png", "video/*"]), min_size=1),
            st.lists(st.sampled_from(["*/*", "text/html", "image"])) | json_values,
            weight=9,
        ),
        "redirect": often("https://forms.example.org/done", any_text, weight=9),
        "redirectOrigins": mostly(
            st.lists(st.sampled_from(["https://a.test", "http://b.test:8080"])),
            st.lists(st.sampled_from(["x", "https://a.test/"])) | json_values,
            weight=9,
        ),
        "fields": mostly(
            st.dictionaries(st.sampled_from(["caption", "a", "source"]), odd_text, max_size=2),
            st.dictionaries(any_text, any_text, max_size=3) | json_values,
            weight=9,
        ),
        "expiresIn": mostly(st.integers(1, 3600), json_values, weight=9),
    }
)


@PROPERTY
@given(data=st.data())
def test_ticket_issuing_and_the_tickets_it_issues_never_5xx(client, world, data):
    """POST /api/tickets with generated requests; whatever it issues, a form post carries."""
    draw = data.draw
    body = draw(st.one_of(ticket_requests.map(as_json), ticket_requests.map(as_json), json_bodies))
    headers = draw_headers(draw, world, content_type=draw(JSON_TYPES))
    answer = send(client, Call("POST", "/api/tickets", "", headers, body, draw(LENGTHS)))
    check(answer)
    if answer.status_code == 201:
        files = draw(file_parts)
        fields = [("ticket", answer.get_json()["ticket"]), *draw(form_fields(files))]
        form, content_type = form_body(fields, files)
        check(send(client, Call("POST", "/api/upload", "", [("Content-Type", content_type)], form)))


@pytest.fixture
def direct_world(client, world) -> World:
    """Direct uploads in every state the examples can reach: one of each kind."""

    def initiate(name: str, files: list[dict]) -> list[dict]:
        response = client.post(
            "/api/uploads/initiate",
            json={"projectId": "p1", "files": files},
            headers={"Authorization": f"Bearer {world.tokens[name]}"},
        )
        assert response.status_code == 201, response.get_json()
        return response.get_json()["uploads"]

    content = png_bytes(20_000)
    digest = hashlib.sha256(content).hexdigest()
    uploads = initiate(
        "alice",
        [
            {"filename": "a.png", "contentType": "image/png", "size": len(content)},
            {"filename": "b.png", "contentType": "image/png", "size": 20_000, "sha256": digest},
            {"filename": "c.png", "contentType": "image/png", "size": 20_000},
            {"filename": "d.png", "contentType": "image/png", "size": 12 * MiB},
        ],
    )
    uploads += initiate("bob", [{"filename": "e.png", "contentType": "image/png", "size": 9}])
    for upload, data in ((uploads[0], content), (uploads[1], jpeg_bytes(20_000))):
        headers = {**upload["put"]["headers"], "Content-Length": str(len(data))}
        assert requests.put(upload["put"]["url"], data=data, headers=headers, timeout=30).ok
    multipart = uploads[3]["multipart"]
    part = requests.put(multipart["parts"][0]["url"], data=b"\x89PNG" + b"x" * 100, timeout=30)
    assert part.ok
    world.upload_ids = [u["uploadId"] for u in uploads] + world.media_ids[:1]
    return world


@pytest.mark.parametrize("backend", ["s3"])
@S3_PROPERTY
@given(data=st.data())
def test_direct_upload_routes_never_5xx(client, direct_world, data):
    draw, world = data.draw, direct_world
    route = draw(st.sampled_from(["initiate", "initiate", "status", "parts", "complete", "abort"]))
    upload_id = draw_id(draw, world.upload_ids)
    method, query, body = "POST", "", None
    if route == "initiate":
        path = "/api/uploads/initiate"
        structured = initiate_payloads.map(encoded)
        body = draw(st.one_of(structured, structured, json_bodies))
    elif route == "status":
        method, path = "GET", f"/api/uploads/{upload_id}"
    elif route == "parts":
        method, path = "GET", f"/api/uploads/{upload_id}/parts"
        query = draw_query(draw, {"first": int_text, "count": int_text})
    elif route == "complete":
        path = f"/api/uploads/{upload_id}/complete"
        body = draw(st.one_of(st.none(), complete_payloads.map(encoded), json_bodies))
    else:
        path = f"/api/uploads/{upload_id}/abort"
        body = draw(st.none() | json_bodies)
    headers = draw_headers(draw, world, content_type=draw(JSON_TYPES))
    length = draw(LENGTHS) if body is not None else "exact"
    check(send(client, Call(method, path, query, headers, body, length)))


# -- regressions: inputs that answered 5xx -------------------------------------------------------
def bearer_alice(token: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token('alice')}"}


@pytest.mark.parametrize(
    "cursor",
    [
        "NQ",  # base64 of 5: valid JSON, not a list
        "bnVsbA",  # base64 of null
        b64(b"[" * 10_000),  # deep nesting: RecursionError in json.loads
        b64(b'["\\ud800", "x"]'),  # a lone surrogate: sqlite cannot encode it
    ],
)
def test_malformed_cursor_is_400(client, token, cursor):
    response = client.get(
        "/api/media",
        query_string={"projectId": "p1", "cursor": cursor},
        headers=bearer_alice(token),
    )
    check(response)
    assert (response.status_code, response.get_json()["error"]["code"]) == (400, "invalid_cursor")


def initiate_raw(client, token, body: str) -> TestResponse:
    headers = {**bearer_alice(token), "Content-Type": "application/json"}
    return client.post("/api/uploads/initiate", data=body.encode(), headers=headers)


@pytest.mark.parametrize("backend", ["s3"])
def test_initiate_sha256_with_trailing_newline_is_400(client, token):
    file = {"filename": "a.png", "contentType": "image/png", "size": 10, "sha256": "a" * 64 + "\n"}
    response = initiate_raw(client, token, json.dumps({"projectId": "p1", "files": [file]}))
    check(response)
    assert response.get_json()["error"]["code"] == "invalid_sha256"


@pytest.mark.parametrize("backend", ["s3"])
def test_initiate_lone_surrogate_is_400(client, token):
    """A multipart upload's name reaches S3 headers (quote() cannot encode a lone surrogate)."""
    file = {"filename": "\ud800.png", "contentType": "image/png", "size": 6 * MiB}
    response = initiate_raw(client, token, json.dumps({"projectId": "p1", "files": [file]}))
    check(response)
    assert response.get_json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("backend", ["s3"])
def test_deep_json_at_every_depth_near_the_recursion_limit(client, token):
    """Nesting just under the parser's limit parses, and must not fail later (in a repr, a
    dump): every depth from 850 to 1100, at the top and inside a field, then far deeper."""
    depths = [*range(850, 1101), 10_000, 100_000]
    for depth in depths:
        nested = "[" * depth + "]" * depth
        file = f'{{"filename": "a.png", "size": 10, "contentType": {nested}}}'
        for body in (nested, f'{{"projectId": "p1", "files": [{file}]}}', "[" * depth):
            response = initiate_raw(client, token, body)
            check(response)
            assert response.status_code in (400, 413, 415), (depth, response.get_json())


# -- tus -----------------------------------------------------------------------------------------
TUS_METHODS = ["POST", "HEAD", "PATCH", "DELETE", "OPTIONS", "GET", "PUT"]


def tus_b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()  # tus metadata: standard, padded base64


@pytest.fixture
def tus_world(client, world) -> World:
    """Two tus uploads of alice's: one fresh, one with a chunk in."""
    auth = {"Authorization": f"Bearer {world.tokens['alice']}", "Tus-Resumable": "1.0.0"}
    ids = []
    for chunk in (b"", png_bytes(4000)[:2000]):
        created = client.post(
            "/api/tus/",
            headers={
                **auth,
                "Upload-Length": "4000",
                "Upload-Metadata": "projectId " + tus_b64(b"p1"),
            },
        )
        assert created.status_code == 201, created.get_data()
        upload_id = created.headers["Location"].rsplit("/", 1)[1]
        if chunk:
            done = client.patch(
                f"/api/tus/{upload_id}",
                data=chunk,
                headers={
                    **auth,
                    "Upload-Offset": "0",
                    "Content-Type": "application/offset+octet-stream",
                },
            )
            assert done.status_code == 204, done.get_data()
        ids.append(upload_id)
    return World(tokens=world.tokens, media_ids=ids + world.media_ids)


@PROPERTY
@given(data=st.data())
def test_tus_routes_never_5xx(client, tus_world, data):
    """Every tus header drawn valid, odd or missing, on either URL, with any method."""
    draw = data.draw
    upload = draw_id(draw, tus_world.media_ids)
    path = draw(st.sampled_from(["/api/tus/", f"/api/tus/{upload}", f"/api/tus/{quote(upload)}"]))
    headers = draw_headers(draw, tus_world)
    numbers = often("0", int_text | st.sampled_from(["2000", "4000", "-1", "1e3", " 5"]))
    optional = {
        "Tus-Resumable": often("1.0.0", st.sampled_from(["0.2.2", "", "1.0"]) | header_text),
        "Content-Type": often(
            "application/offset+octet-stream", st.sampled_from(["text/plain", ""]) | header_text
        ),
        "Upload-Offset": numbers,
        "Upload-Length": numbers,
        "Upload-Defer-Length": st.sampled_from(["1", "0", "yes"]) | header_text,
        "Upload-Metadata": often(
            "projectId " + tus_b64(b"p1") + ",filename " + tus_b64(b"x.png"),
            st.sampled_from(
                ["projectId", "projectId !!!", "projectId " + tus_b64(b"../x"), ",", "a b c", ""]
            )
            | header_text,
        ),
        "Upload-Concat": st.sampled_from(["partial", "final;", f"final;/api/tus/{upload}"])
        | header_text,
        "Upload-Checksum": st.sampled_from(
            ["sha256 " + tus_b64(b"x" * 32), "md5 !!", "crc32 AAAA", "sha1", ""]
        )
        | header_text,
        "X-HTTP-Method-Override": st.sampled_from(["PATCH", "DELETE", "HEAD", "GET", "x"]),
        "Origin": st.sampled_from(["https://app.example", "null"]),
    }
    for name, values in optional.items():
        if name in ("Tus-Resumable", "Upload-Metadata") or draw(st.booleans()):
            # what a header line can carry: Latin-1, no line breaks
            value = draw(values).encode("latin-1", "replace").decode("latin-1")
            headers.append((name, value.replace("\r", " ").replace("\n", " ")))
    body = draw(st.one_of(st.none(), st.just(png_bytes(4000)[2000:]), st.binary(max_size=300)))
    call = Call(draw(st.sampled_from(TUS_METHODS)), path, "", headers, body, draw(LENGTHS))
    check(send(client, call))
