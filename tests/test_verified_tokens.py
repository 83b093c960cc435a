"""Each distinct token is verified once per process and app, until its exp (gateway/http/auth.py).

What must not change with that: a token that is not byte-identical to a verified one is checked
in full; an entry is not served from the instant PyJWT would call the token expired; another
app (another key) never sees this app's entries; callers cannot change what is kept.
"""

from __future__ import annotations

import time

import flask_jwt_extended.jwt_manager
import jwt
import pytest
from flask_jwt_extended import decode_token
from flask_jwt_extended.exceptions import JWTDecodeError

from gateway import create_app
from gateway.http.auth import VERIFIED_TOKENS_KEPT, _VerifiedTokens

from conftest import init_stores, make_settings
from support import JWT_SECRET


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def full_checks(monkeypatch):
    """The tokens flask-jwt-extended verified in full (signature, exp, aud, iss, ...)."""
    checked: list[str] = []
    real = flask_jwt_extended.jwt_manager._decode_jwt

    def spy(**kwargs):
        checked.append(kwargs["encoded_token"])
        return real(**kwargs)

    monkeypatch.setattr(flask_jwt_extended.jwt_manager, "_decode_jwt", spy)
    return checked


def make_app(tmp_path, **overrides):
    app = create_app(make_settings(tmp_path, jwt_leeway=10, **overrides))
    init_stores(app.extensions["gateway"])
    return app


def token_for(secret: str = JWT_SECRET, **claims) -> str:
    now = int(time.time())
    return jwt.encode({"sub": "alice", "iat": now, "exp": now + 600, **claims}, secret, "HS256")


def stats(app, token: str):
    return app.test_client().get(
        "/api/stats?projectId=p1", headers={"Authorization": f"Bearer {token}"}
    )


def test_a_token_is_verified_once_then_taken_from_memory(tmp_path, full_checks):
    app = make_app(tmp_path)
    token, other = token_for(), token_for(sub="bob")
    assert [stats(app, token).status_code for _ in range(3)] == [200, 200, 200]
    assert full_checks == [token]
    assert stats(app, other).status_code == 200
    assert full_checks == [token, other]


@pytest.mark.parametrize("change", ["signature", "payload"])
def test_a_token_that_differs_from_a_verified_one_is_checked_in_full(tmp_path, full_checks, change):
    app = make_app(tmp_path)
    token = token_for()
    assert stats(app, token).status_code == 200
    header, payload, signature = token.split(".")
    if change == "signature":
        signature = ("A" if signature[0] != "A" else "B") + signature[1:]
    else:  # the same claims but another subject, with the verified token's signature
        payload = jwt.utils.base64url_encode(
            jwt.utils.base64url_decode(payload).replace(b'"alice"', b'"mallo"')
        ).decode()
    forged = ".".join((header, payload, signature))
    refused = stats(app, forged)
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "invalid_token"
    assert full_checks == [token, forged]
    assert stats(app, forged).status_code == 401  # a failure is never kept
    assert full_checks == [token, forged, forged]


def test_another_app_with_another_key_does_not_see_the_verified_token(tmp_path, full_checks):
    first = make_app(tmp_path / "a")
    second = make_app(tmp_path / "b", jwt_secret="another-secret-" + "x" * 32)
    token = token_for()
    assert stats(first, token).status_code == 200
    refused = stats(second, token)
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "invalid_token"


def test_an_entry_is_not_served_once_its_token_has_expired(tmp_path, full_checks):
    app = make_app(tmp_path)
    clock = Clock(time.time())
    app.extensions["gateway.verified_tokens"] = _VerifiedTokens(leeway=10, clock=clock)
    token = token_for()
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert stats(app, token).status_code == 200
    clock.now = exp + 10 - 0.001
    assert stats(app, token).status_code == 200
    assert full_checks == [token]
    clock.now = exp + 10  # PyJWT's instant of expiry (with the leeway)
    assert stats(app, token).status_code == 200  # PyJWT's own clock: still valid, checked again
    assert full_checks == [token, token]


def test_entries_expire_at_exp_plus_leeway_exactly():
    clock = Clock(1000.0)
    kept = _VerifiedTokens(leeway=30, clock=clock)
    kept.keep("t", {"sub": "a", "exp": 1100})
    clock.now = 1129.999
    assert kept.get("t") == {"sub": "a", "exp": 1100}
    clock.now = 1130.0
    assert kept.get("t") is None


def test_a_fractional_exp_expires_when_pyjwt_says_so():
    """PyJWT compares int(exp) + leeway with now."""
    clock = Clock(1000.0)
    kept = _VerifiedTokens(leeway=30, clock=clock)
    kept.keep("t", {"sub": "a", "exp": 1100.9})
    clock.now = 1129.999
    assert kept.get("t") is not None
    clock.now = 1130.0
    assert kept.get("t") is None


@pytest.mark.parametrize("exp", [None, "1100", [1100]])
def test_claims_without_a_numeric_exp_are_not_kept(exp):
    kept = _VerifiedTokens(leeway=0, clock=Clock(1000.0))
    kept.keep("t", {"sub": "a"} if exp is None else {"sub": "a", "exp": exp})
    assert kept.get("t") is None


def test_what_a_caller_changes_is_not_what_is_kept():
    kept = _VerifiedTokens(leeway=0, clock=Clock(1000.0))
    claims = {"sub": "a", "exp": 2000, "projects": ["p1"]}
    kept.keep("t", claims)
    claims["projects"].append("p2")
    served = kept.get("t")
    assert served == {"sub": "a", "exp": 2000, "projects": ["p1"]}
    served["projects"].append("p3")
    served["sub"] = "b"
    assert kept.get("t") == {"sub": "a", "exp": 2000, "projects": ["p1"]}


def test_at_most_the_limit_of_tokens_is_kept_least_recently_used_first():
    kept = _VerifiedTokens(leeway=0, clock=Clock(1000.0))
    for n in range(VERIFIED_TOKENS_KEPT):
        kept.keep(f"t{n}", {"exp": 2000, "n": n})
    assert kept.get("t0") == {"exp": 2000, "n": 0}  # now the most recently used
    kept.keep("new", {"exp": 2000, "n": -1})
    assert kept.get("t1") is None
    assert kept.get("t0") is not None and kept.get("new") is not None
    assert kept.get(f"t{VERIFIED_TOKENS_KEPT - 1}") is not None


def test_a_decode_with_a_csrf_value_or_allowing_expiry_is_never_served_from_memory(
    tmp_path, full_checks
):
    """The gateway checks CSRF itself and never decodes that way, but flask-jwt-extended can:
    such a decode must still compare the CSRF value and must not fill the memory."""
    app = make_app(tmp_path)
    token = token_for()
    with app.test_request_context():
        assert decode_token(token)["sub"] == "alice"
        with pytest.raises(JWTDecodeError, match="csrf"):
            decode_token(token, csrf_value="x")
        assert decode_token(token, allow_expired=True)["sub"] == "alice"
        expired = token_for(exp=int(time.time()) - 3600)
        assert decode_token(expired, allow_expired=True)["sub"] == "alice"
        with pytest.raises(jwt.ExpiredSignatureError):
            decode_token(expired)
    assert full_checks == [token, token, token, expired, expired, expired]
