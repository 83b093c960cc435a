"""The chain model: steps before the upload, the upload, steps after it; checked, then rendered.

An item is a *chain*: requests to the user's own API that run **before** the upload (create a
record, say, whose answer carries its id), the upload itself (files, project, fields), and
requests that run **after** it (write the stored key back). ``docs/chain.schema.json`` writes the
model down once, for this client and the browser's; this module is its Python side, without I/O:
the step's shape, the placeholder rules checked when an item is queued, and the rendering done
when a step (or the upload) is sent.

A step has a name, a method, a URL, headers, a body template and ``capture`` rules that take
values out of its JSON answer by JSON Pointer (RFC 6901: ``attachId = /AttachID``).
Placeholders, ``{{name}}``:

- ``steps.<step>.<capture>``: a value captured from an earlier step's answer;
- ``mediaId``, ``s3Key``, ``url``, ``sha256``, ``size``, ``originalName`` of the item's first
  file and ``files.<N>.<name>`` of file N (from 0): the upload's results, in steps after it;
- ``env.<NAME>``: from the environment of the sync, in steps (a secret for the app's API is then
  never stored in the outbox); never in the upload's fields, which the gateway keeps.

A placeholder that names nothing, or a step that has not run by then (a later one, the step
itself, the upload's results before the upload), is refused when the item is queued.
"""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jsonpointer import JsonPointer, JsonPointerException

from outbox.errors import InvalidItem, Transient

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")
FILE_FIELDS = ("mediaId", "s3Key", "url", "sha256", "size", "originalName")
METHODS = ("POST", "PUT", "PATCH", "DELETE")
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
LABELLED = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]{0,63}):\s+(.*)", re.DOTALL)
# Headers a step may not set: the outbox sets the key; the gateway's token is not the app's.
RESERVED_HEADERS = frozenset({"idempotency-key", "content-length", "host"})


@dataclass(frozen=True)
class StepSpec:
    """One request of a chain, with ``{{placeholders}}`` (see the module's docstring)."""

    method: str
    url: str
    body: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    name: str = ""  # given at push when none was: ``step<position>``
    capture: tuple[tuple[str, str], ...] = ()  # (name, JSON Pointer into the answer)
    before: bool = False  # runs before the upload


@dataclass
class Context:
    """What the placeholders of one request are filled from."""

    records: Sequence[Mapping[str, Any]] = ()
    captured: Mapping[str, Mapping[str, Any]] | None = None  # step name -> its captures
    env: Mapping[str, str] | None = None


def parse_step(spec: str, *, before: bool) -> StepSpec:
    """``[NAME:] METHOD URL [BODY]`` from the command line (``--before``, ``--then``)."""
    flag = "--before" if before else "--then"
    name = ""
    labelled = LABELLED.fullmatch(spec)
    text = spec
    if labelled and labelled.group(1).upper() not in METHODS:
        name, text = labelled.group(1), labelled.group(2)
    parts = text.strip().split(None, 2)
    if len(parts) < 2 or parts[0].upper() not in METHODS:
        raise InvalidItem(
            f"{flag} {spec!r}: expected '[NAME:] METHOD URL [BODY]', METHOD one of {METHODS}"
        )
    if urllib.parse.urlsplit(parts[1]).scheme not in ("http", "https"):
        raise InvalidItem(f"{flag} {spec!r}: the URL must be http or https")
    return StepSpec(
        method=parts[0].upper(),
        url=parts[1],
        body=parts[2] if len(parts) == 3 else None,
        name=name,
        before=before,
    )


def parse_capture(text: str) -> tuple[str, str, str]:
    """``STEP.NAME=/json/pointer`` (``--capture``): (step, name, pointer)."""
    target, sep, pointer = text.partition("=")
    step, dot, name = target.strip().partition(".")
    if not sep or not dot or not NAME.fullmatch(step) or not NAME.fullmatch(name):
        raise InvalidItem(f"--capture {text!r}: expected STEP.NAME=/json/pointer")
    return step, name, pointer.strip()


def parse_header(text: str) -> tuple[str, str, str]:
    """``STEP: Header-Name: value`` (``--header``): (step, header, value)."""
    step, sep, rest = text.partition(":")
    header, sep2, value = rest.partition(":")
    if not sep or not sep2 or not NAME.fullmatch(step.strip()):
        raise InvalidItem(f"--header {text!r}: expected 'STEP: Header-Name: value'")
    return step.strip(), header.strip(), value.strip()


def named(steps: Sequence[StepSpec]) -> list[StepSpec]:
    """``steps`` with the unnamed ones named ``step<position>``."""
    return [
        s if s.name else dataclasses.replace(s, name=f"step{position}")
        for position, s in enumerate(steps)
    ]


def assemble(
    before: Sequence[StepSpec],
    after: Sequence[StepSpec],
    *,
    captures: Sequence[tuple[str, str, str]] = (),
    headers: Sequence[tuple[str, str, str]] = (),
) -> list[StepSpec]:
    """The chain's steps in running order (``before`` ones flagged so), unnamed ones named
    ``step<position>``, with the captures and headers given apart (by step name) attached."""
    steps = named([*(dataclasses.replace(s, before=True) for s in before),
                   *(dataclasses.replace(s, before=False) for s in after)])  # fmt: skip
    by_name = {s.name: i for i, s in enumerate(steps)}
    for kind, extras in (("--capture", captures), ("--header", headers)):
        for step, key, value in extras:
            if step not in by_name:
                raise InvalidItem(f"{kind} {step}.{key}: no step is named {step!r}")
            i = by_name[step]
            if kind == "--capture":
                steps[i] = dataclasses.replace(steps[i], capture=(*steps[i].capture, (key, value)))
            else:
                steps[i] = dataclasses.replace(steps[i], headers=(*steps[i].headers, (key, value)))
    return steps


def check(steps: Sequence[StepSpec], *, files: int, fields: Sequence[tuple[str, str]]) -> None:
    """Refuse a chain that could not run: every placeholder must name something known by the
    time it is sent. Raises ``InvalidItem`` (nothing is queued)."""
    seen: dict[str, frozenset[str]] = {}  # steps before this one: their capture names
    names = [s.name for s in steps]
    upload_at = sum(1 for s in steps if s.before)
    for position, step in enumerate(steps):
        where = f"step {step.name!r}"
        if not NAME.fullmatch(step.name):
            raise InvalidItem(f"{where}: a step's name is A-Z a-z 0-9 _ - (starting with a letter)")
        if step.name in seen:
            raise InvalidItem(f"{where}: two steps have this name")
        if step.before and position >= upload_at:
            raise InvalidItem(f"{where}: steps before the upload come before those after it")
        if step.method not in METHODS:
            raise InvalidItem(f"{where}: the method must be one of {METHODS}")
        if urllib.parse.urlsplit(step.url).scheme not in ("http", "https"):
            raise InvalidItem(f"{where}: the URL must be http or https")
        for header, _ in step.headers:
            if not HEADER_NAME.fullmatch(header) or header.lower() in RESERVED_HEADERS:
                raise InvalidItem(f"{where}: {header!r} is not a header a step may set")
        capture_names = [c for c, _ in step.capture]
        if len(set(capture_names)) != len(capture_names):
            raise InvalidItem(f"{where}: two captures have the same name")
        for capture, pointer in step.capture:
            if not NAME.fullmatch(capture):
                raise InvalidItem(f"{where}: capture name {capture!r}: A-Z a-z 0-9 _ -")
            try:
                JsonPointer(pointer)
            except JsonPointerException as exc:
                raise InvalidItem(f"{where}: capture {capture} = {pointer!r}: {exc}") from exc
        templates = [step.url, step.body or "", *(value for _, value in step.headers)]
        for template in templates:
            for found in PLACEHOLDER.findall(template):
                _check_name(found, where=where, seen=seen, names=names, files=files,
                            upload_done=not step.before)  # fmt: skip
        seen[step.name] = frozenset(capture_names)
    before = {s.name: frozenset(c for c, _ in s.capture) for s in steps if s.before}
    for field, value in fields:
        for found in PLACEHOLDER.findall(value):
            head = found.partition(".")[0]
            where = f"field {field!r}"
            if head == "env":
                raise InvalidItem(
                    f"{where}: {{{{{found}}}}}: the environment is for steps, not for fields "
                    "(the gateway keeps fields with the file)"
                )
            _check_name(found, where=where, seen=before, names=names, files=files,
                        upload_done=False)  # fmt: skip


def _check_name(
    name: str,
    *,
    where: str,
    seen: Mapping[str, frozenset[str]],
    names: Sequence[str],
    files: int,
    upload_done: bool,
) -> None:
    head, _, rest = name.partition(".")
    if head == "env" and rest:
        return
    if head == "steps":
        step, _, capture = rest.partition(".")
        if step in seen:
            if capture in seen[step]:
                return
            raise InvalidItem(f"{where}: {{{{{name}}}}}: step {step!r} captures no {capture!r}")
        if step in names:
            raise InvalidItem(f"{where}: {{{{{name}}}}}: step {step!r} has not run by then")
        raise InvalidItem(f"{where}: {{{{{name}}}}}: no step is named {step!r}")
    upload = name in FILE_FIELDS
    if head == "files":
        index, _, field = rest.partition(".")
        upload = index.isdigit() and int(index) < files and field in FILE_FIELDS
    if upload and upload_done:
        return
    if upload:
        raise InvalidItem(f"{where}: {{{{{name}}}}}: the upload has not run by then")
    raise InvalidItem(f"{where}: unknown placeholder {{{{{name}}}}}")


def text_of(value: Any) -> str:
    """A captured or recorded value as placeholder text: strings as they are, None as nothing,
    anything else as its JSON (``123``, ``true``, ``{"a": 1}``)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def value_of(name: str, context: Context) -> str:
    head, _, rest = name.partition(".")
    if head == "env":
        env = context.env or {}
        if rest not in env:
            raise Transient(f"step: the environment has no {rest} (for {{{{{name}}}}})")
        return env[rest]
    if head == "steps":
        step, _, capture = rest.partition(".")
        return text_of(((context.captured or {}).get(step) or {}).get(capture))
    records = context.records
    if head == "files":
        index, _, field = rest.partition(".")
        record, key = records[int(index)], field
    else:
        record, key = (records[0] if records else {}), name
    return text_of(record.get(key))


def render(template: str, context: Context, *, quote: Callable[[str], str] = str) -> str:
    return PLACEHOLDER.sub(lambda m: quote(value_of(m.group(1), context)), template)


def json_escape(value: str) -> str:
    return json.dumps(value)[1:-1]


def url_escape(value: str) -> str:
    return urllib.parse.quote(value, safe="/:")


def is_json_template(body: str) -> bool:
    try:
        json.loads(PLACEHOLDER.sub("0", body))
    except ValueError:
        return False
    return True


def capture(spec: StepSpec, answer: Any) -> dict[str, Any]:
    """The values ``spec`` captures from its JSON answer; ``KeyError`` naming the first
    pointer that finds nothing."""
    captured: dict[str, Any] = {}
    for name, pointer in spec.capture:
        try:
            captured[name] = JsonPointer(pointer).resolve(answer)
        except JsonPointerException as exc:
            raise KeyError(pointer) from exc
    return captured


def document(
    steps: Sequence[StepSpec],
    *,
    project: str,
    fields: Sequence[tuple[str, str]],
    files: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The chain as ``docs/chain.schema.json`` writes it (what ``status --json`` shows)."""

    def step_json(s: StepSpec) -> dict[str, Any]:
        body: dict[str, Any] = {"name": s.name, "method": s.method, "url": s.url}
        if s.headers:
            body["headers"] = dict(s.headers)
        if s.body is not None:
            body["body"] = s.body
        if s.capture:
            body["capture"] = dict(s.capture)
        return body

    return {
        "before": [step_json(s) for s in steps if s.before],
        "upload": {"project": project, "fields": dict(fields), "files": [dict(f) for f in files]},
        "after": [step_json(s) for s in steps if not s.before],
    }
