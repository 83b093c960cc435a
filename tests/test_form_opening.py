"""The form's opening: the fields a post sends before its first file (a ticket, a redirect),
read within ``csrf.FORM_WINDOW_BYTES`` and given back with the whole body to read again."""

from __future__ import annotations

import io
from typing import Any

from gateway.uploads import csrf
from gateway.uploads.form import FormOptions, UploadService
from gateway.uploads.formdata import FormLimits

BOUNDARY = b"b0undary"


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return (
        b"--"
        + BOUNDARY
        + f"\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        + value
        + b"\r\n"
    )


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"


class Trickle:
    """A body that gives at most ``most`` bytes a read (``first`` on the first), and counts what
    was taken from it."""

    def __init__(self, data: bytes, most: int, first: int | None = None) -> None:
        self.stream, self.most, self.taken = io.BytesIO(data), most, 0
        self.first = most if first is None else first

    def read(self, size: int) -> bytes:
        chunk = self.stream.read(min(size, self.first if self.taken == 0 else self.most))
        self.taken += len(chunk)
        return chunk


def service(**limits: Any) -> UploadService:
    options = FormOptions(FormLimits(**limits), 1 << 30, 65536, (), 255, (), 60.0, False)
    return UploadService(options, None, None, None, None)  # type: ignore[arg-type]


def read_all(reader: Any) -> bytes:
    out = bytearray()
    while chunk := reader.read(1000):
        out += chunk
    return bytes(out)


def test_the_ticket_and_redirect_before_the_first_file_are_read_and_the_body_given_back_whole():
    data = body(part("projectId", b"p1"), part("redirect", b"https://app/done"),
                part("ticket", b"t.k.n"), part("file", b"\x89PNG...", "a.png"),
                part("ticket", b"after-the-file"))  # fmt: skip
    source = Trickle(data, 7)  # the fields arrive a few bytes a read
    opening = service().opening(source, BOUNDARY)
    assert (opening.ticket, opening.redirect) == ("t.k.n", "https://app/done")
    assert read_all(opening.body) == data


def test_fields_after_the_first_file_do_not_count():
    data = body(part("file", b"x", "a.txt"), part("ticket", b"late"), part("redirect", b"/x"))
    opening = service().opening(Trickle(data, 1 << 20), BOUNDARY)
    assert (opening.ticket, opening.redirect) == (None, None)
    assert read_all(opening.body) == data


def test_no_more_than_the_window_is_read_ahead():
    filler = part("note", b"n" * 3000)
    data = body(*[filler] * 8, part("ticket", b"too-far"))
    source = Trickle(data, 1 << 20, first=1000)  # then all that is asked for
    opening = service(max_fields=100).opening(source, BOUNDARY)
    assert source.taken == csrf.FORM_WINDOW_BYTES and opening.ticket is None
    assert read_all(opening.body) == data


def test_the_opening_is_parsed_within_the_configured_limits():
    data = body(part("note", b"n" * 200), part("ticket", b"t.k.n"))
    assert service(max_field_bytes=1000).opening(Trickle(data, 1 << 20), BOUNDARY).ticket == "t.k.n"
    refused = service(max_field_bytes=100).opening(Trickle(data, 1 << 20), BOUNDARY)
    assert refused.ticket is None  # the field over the limit ends the reading (answered later)
    assert read_all(refused.body) == data
