"""Linked steps: follow-up requests that need the upload's results, queued with the upload.

``--then 'PATCH https://app.example/records/7 {"photo": "{{url}}", "key": "{{s3Key}}"}'``
is a method, a URL and an optional body; ``{{name}}`` is filled in when the step runs:
``mediaId``, ``s3Key``, ``url``, ``sha256``, ``size``, ``originalName`` of the item's first
file, ``files.N.<name>`` of file N (from 0), and ``env.NAME`` from the environment of the sync
(so a secret for the target is never stored in the outbox). Values are JSON-escaped in a body
that is JSON and percent-encoded in the URL.

Each step is sent with its own Idempotency-Key (the item's key and the step's position), and is
marked done in the outbox the moment it succeeds: a retry resumes at the first step not done,
and never repeats the upload. A 2xx is done; 401, 408, 409, 423, 425, 429 and 5xx are retried
(``Retry-After`` honoured); any other answer fails the item (``retry`` puts it back).
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import requests

from outbox.errors import InvalidItem, Permanent, Transient
from outbox.store import StepSpec
from outbox.transport import network_errors, retry_after_seconds

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
FILE_FIELDS = ("mediaId", "s3Key", "url", "sha256", "size", "originalName")
METHODS = ("POST", "PUT", "PATCH", "DELETE")
STEP_TIMEOUT = 30.0
# A step's target is the user's own API: judged by status alone (its error codes are not ours).
RETRYABLE_STATUSES = frozenset({408, 409, 423, 425, 429})


def parse_then(spec: str, *, files: int) -> StepSpec:
    """``METHOD URL [BODY]`` from the command line, its placeholders checked now, not at sync."""
    parts = spec.strip().split(None, 2)
    if len(parts) < 2 or parts[0].upper() not in METHODS:
        raise InvalidItem(f"--then {spec!r}: expected 'METHOD URL [BODY]', METHOD one of {METHODS}")
    method, url = parts[0].upper(), parts[1]
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise InvalidItem(f"--then {spec!r}: the URL must be http or https")
    body = parts[2] if len(parts) == 3 else None
    for template in (url, body or ""):
        for name in PLACEHOLDER.findall(template):
            _check_name(name, files=files, spec=spec)
    return StepSpec(method=method, url=url, body=body)


def _check_name(name: str, *, files: int, spec: str) -> None:
    head, _, rest = name.partition(".")
    if name in FILE_FIELDS or (head == "env" and rest):
        return
    if head == "files":
        index, _, field = rest.partition(".")
        if index.isdigit() and int(index) < files and field in FILE_FIELDS:
            return
    raise InvalidItem(f"--then {spec!r}: unknown placeholder {{{{{name}}}}}")


def _value(name: str, records: Sequence[Mapping[str, Any]], env: Mapping[str, str]) -> str:
    head, _, rest = name.partition(".")
    if head == "env":
        if rest not in env:
            raise Transient(f"step: the environment has no {rest} (for {{{{{name}}}}})")
        return env[rest]
    if head == "files":
        index, _, field = rest.partition(".")
        record, key = records[int(index)], field
    else:
        record, key = records[0], name
    value = record.get(key)
    return "" if value is None else str(value)


def render(
    template: str,
    records: Sequence[Mapping[str, Any]],
    *,
    quote: Callable[[str], str],
    env: Mapping[str, str],
) -> str:
    return PLACEHOLDER.sub(lambda m: quote(_value(m.group(1), records, env)), template)


def _json_escape(value: str) -> str:
    return json.dumps(value)[1:-1]


def _url_escape(value: str) -> str:
    return urllib.parse.quote(value, safe="/:")


def run_step(
    session: requests.Session,
    spec: StepSpec,
    records: Sequence[Mapping[str, Any]],
    *,
    idempotency_key: str,
    env: Mapping[str, str] | None = None,
) -> int:
    """Send one step; its status on success, else ``Transient`` or ``Permanent``."""
    env = os.environ if env is None else env
    url = render(spec.url, records, quote=_url_escape, env=env)
    headers = {"Idempotency-Key": idempotency_key}
    data = None
    if spec.body is not None:
        is_json = _is_json_template(spec.body)
        data = render(spec.body, records, quote=_json_escape if is_json else str, env=env)
        headers["Content-Type"] = "application/json" if is_json else "text/plain; charset=utf-8"
    for name, value in spec.headers:
        headers[name] = render(value, records, quote=str, env=env)
    with network_errors(f"step {spec.method} {spec.url}", gateway=False):
        answer = session.request(spec.method, url, data=data, headers=headers, timeout=STEP_TIMEOUT)
    status = answer.status_code
    if 200 <= status < 300:
        return status
    text = f"step {spec.method} {url}: {status}"
    if status == 401 or status in RETRYABLE_STATUSES or status >= 500:
        raise Transient(text, retry_after=retry_after_seconds(answer.headers.get("Retry-After")))
    raise Permanent(text)


def _is_json_template(body: str) -> bool:
    try:
        json.loads(PLACEHOLDER.sub("0", body))
    except ValueError:
        return False
    return True
