"""Running a chain's steps: requests to the user's own API before and after the upload.

A step (``chain.StepSpec``) is rendered from what is known when it runs (``chain.Context``: the
captures of the steps before it, the upload's records, the sync's environment), sent with its own
Idempotency-Key (the item's key and the step's position), and judged by its status alone (its
target's error codes are not the gateway's): a 2xx is done, and its ``capture`` rules take values
out of its JSON answer; 401, 408, 409, 423, 425, 429 and 5xx are retried (``Retry-After``
honoured), as are network errors; any other answer fails the item with the answer kept
(``StepRefused``), as does a 2xx whose answer lacks a value to capture. The sync records a step
done, with its captures, in one transaction the moment it succeeds: a step that succeeded is
never sent again, and a retry resumes at the first step not done.

Steps go out on their own session: the gateway's token never goes to a step's target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import requests

from outbox.chain import (
    Context,
    StepSpec,
    capture,
    is_json_template,
    json_escape,
    render,
    url_escape,
)
from outbox.errors import Permanent, Transient
from outbox.store import StepEntry
from outbox.transport import network_errors, retry_after_seconds

STEP_TIMEOUT = 30.0
RETRYABLE_STATUSES = frozenset({408, 409, 423, 425, 429})
ANSWER_KEPT = 64 * 1024  # of a refusing answer, kept in the outbox (status shows it)
ANSWER_SHOWN = 300  # of it, in the item's last error


class StepRefused(Permanent):
    """The step's target refused it for good (or answered without a value to capture)."""

    def __init__(self, message: str, *, status: int | None, answer: str | None) -> None:
        """``status`` and ``answer`` are None for a step refused before it was sent."""
        super().__init__(f"{message}: {answer[:ANSWER_SHOWN]}" if answer else message)
        self.status = status
        self.answer = answer
        self.step: StepEntry | None = None  # set by the sync


@dataclass(frozen=True)
class StepResult:
    status: int
    captured: dict[str, Any]


def run_step(
    session: requests.Session,
    spec: StepSpec,
    context: Context,
    *,
    idempotency_key: str,
    withheld: Sequence[str] = (),
) -> StepResult:
    """Send one step: its status and captures on success, else ``Transient`` or
    ``StepRefused``. ``withheld``: secrets no step may carry (the gateway's token), whatever
    its placeholders filled in: such a step is refused, not sent."""
    url = render(spec.url, context, quote=url_escape)
    headers = {"Idempotency-Key": idempotency_key}
    data = None
    if spec.body is not None:
        is_json = is_json_template(spec.body)
        data = render(spec.body, context, quote=json_escape if is_json else str).encode()
        headers["Content-Type"] = "application/json" if is_json else "text/plain; charset=utf-8"
    for name, value in spec.headers:
        headers[name] = render(value, context)
    what = f"step {spec.name} {spec.method} {url}"
    sent = "\n".join([url, data.decode() if data else "", *headers.values()])
    if any(secret and secret in sent for secret in withheld):
        raise StepRefused(  # (named by its template: the URL may hold the token)
            f"step {spec.name} {spec.method} {spec.url}: it would carry the gateway's token; "
            "not sent", status=None, answer=None,
        )  # fmt: skip
    with network_errors(what, gateway=False):
        answer = session.request(spec.method, url, data=data, headers=headers, timeout=STEP_TIMEOUT)
    status = answer.status_code
    text = answer.content[:ANSWER_KEPT].decode("utf-8", "replace")
    if 200 <= status < 300:
        return StepResult(status, _captured(spec, answer, what=f"{what}: {status}", text=text))
    if status == 401 or status in RETRYABLE_STATUSES or status >= 500:
        raise Transient(
            f"{what}: {status}", retry_after=retry_after_seconds(answer.headers.get("Retry-After"))
        )
    raise StepRefused(f"{what}: {status}", status=status, answer=text)


def _captured(spec: StepSpec, answer: requests.Response, *, what: str, text: str) -> dict[str, Any]:
    if not spec.capture:
        return {}
    try:
        document = answer.json()
    except ValueError:
        raise StepRefused(
            f"{what}, an answer that is not JSON (nothing to capture)", status=answer.status_code,
            answer=text,
        ) from None  # fmt: skip
    try:
        return capture(spec, document)
    except KeyError as missing:
        raise StepRefused(
            f"{what}, an answer without {missing.args[0]!r} to capture", status=answer.status_code,
            answer=text,
        ) from None  # fmt: skip
