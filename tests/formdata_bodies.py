"""Multipart bodies for parser tests: a model of a form, its rendering, and the parse outcome.

``render`` writes a form as bytes with every freedom the grammar allows (line break, transport
padding, compact empty parts, preamble and epilogue whitespace); ``expected_events`` is what a
correct parser must report for it; ``outcome`` parses a body fed in given pieces and returns the
events (file data joined) and the error, so a whole parse and a split one compare directly.
"""

from __future__ import annotations

import binascii
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.uploads.formdata import (
    Event,
    FileData,
    FileEnd,
    FileStart,
    FormDataError,
    FormDataParser,
    FormEnd,
    FormLimits,
    TextField,
)

BCHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'()+_,-./:=? "


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None  # None: a text field
    content: bytes
    content_type: str | None = None
    compact: bool = False  # an empty body written as "<headers><LB><LB>--boundary"
    padding: bytes = b""  # transport padding after the delimiter that opens this part
    transfer_encoding: str | None = None  # base64 or quoted-printable: sent encoded


@dataclass(frozen=True)
class Form:
    boundary: bytes
    parts: Sequence[Part]
    line_break: bytes = b"\r\n"
    preamble: bytes = b""
    epilogue: bytes = b"\r\n"  # after "--boundary--"


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encoded(content: bytes, transfer_encoding: str | None, line_break: bytes = b"\r\n") -> bytes:
    """The content as a legacy form library sends it in that Content-Transfer-Encoding."""
    if transfer_encoding == "base64":
        lines = [
            binascii.b2a_base64(content[i : i + 57], newline=False)
            for i in range(0, len(content), 57)
        ]
        return line_break.join(lines)
    if transfer_encoding == "quoted-printable":
        return binascii.b2a_qp(content, istext=False)  # CR and LF as =0D =0A, soft breaks "=\n"
    return content


def render(form: Form) -> bytes:
    lb, dash = form.line_break, b"--" + form.boundary
    out = [form.preamble, dash]
    for part in form.parts:
        disposition = f"Content-Disposition: form-data; name={quoted(part.name)}"
        if part.filename is not None:
            disposition += f"; filename={quoted(part.filename)}"
        out += [part.padding, lb, disposition.encode(), lb]
        if part.content_type is not None:
            out += [f"Content-Type: {part.content_type}".encode(), lb]
        if part.transfer_encoding is not None:
            out += [f"Content-Transfer-Encoding: {part.transfer_encoding}".encode(), lb]
        out.append(lb)
        content = encoded(part.content, part.transfer_encoding, lb)
        if part.compact and not content:
            out.append(dash)
        else:
            out += [content, lb, dash]
    out += [b"--", form.epilogue]
    return b"".join(out)


def expected_events(form: Form) -> list[Event]:
    events: list[Event] = []
    for index, part in enumerate(form.parts):
        if part.filename is None:
            events.append(TextField(part.name, part.content.decode()))
            continue
        events.append(FileStart(part.name, part.filename, part.content_type or ""))
        if part.content:
            events.append(FileData(memoryview(part.content)))
        events.append(FileEnd(last=index == len(form.parts) - 1))
    events.append(FormEnd())
    return events


def joined(events: Sequence[Event]) -> list[Event]:
    """Consecutive FileData joined into one (as bytes), so read sizes do not matter."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, FileData):
            data = bytes(event.data)
            if out and isinstance(out[-1], FileData):
                data = bytes(out[-1].data) + data
                out.pop()
            out.append(FileData(memoryview(data)))
        else:
            out.append(event)
    return out


@dataclass(frozen=True)
class Outcome:
    events: list[Event]
    error: tuple[str, bool] | None  # (message, limit)


def outcome(
    body: bytes,
    cuts: Sequence[int] = (),
    *,
    boundary: bytes,
    limits: FormLimits = FormLimits(),
    as_bytearray: bool = False,
) -> Outcome:
    """Parse ``body`` fed in the pieces that ``cuts`` (offsets) make; never raises.
    ``as_bytearray``: each piece a bytearray, as the body reader under gunicorn gives them."""
    parser = FormDataParser(boundary, limits)
    events: list[Event] = []
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(body)}), len(body)]
    try:
        for start, end in itertools.pairwise(bounds):
            # Views are valid until the next feed: copy, as a consumer would use them.
            events += (
                FileData(memoryview(bytes(event.data))) if isinstance(event, FileData) else event
                for event in parser.feed(
                    bytearray(body[start:end]) if as_bytearray else body[start:end]
                )
            )
        events += parser.finish()
    except FormDataError as exc:
        events += exc.events
        return Outcome(joined(events), (str(exc), exc.limit))
    return Outcome(joined(events), None)


def every_size(body: bytes, size: int) -> list[int]:
    return list(range(size, len(body), size))
