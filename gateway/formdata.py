"""Incremental multipart/form-data parsing: bytes in, events out.

Wraps werkzeug's sans-I/O ``MultipartDecoder`` and adds what an upload gateway needs on top:
limits on parts, fields and header sizes, whole text fields as one event, file parts as a
start / data... / end sequence, and a strict end: ``finish()`` raises unless the closing
boundary was seen. No Flask, no storage, no I/O.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio import multipart as wz

# RFC 2046 section 5.1.1: 1-70 characters from bcharsnospace plus inner spaces.
_BOUNDARY_RE = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
MAX_PREAMBLE_BYTES = 1024
MAX_EPILOGUE_BYTES = 1024
# Room for a delimiter's tail after the boundary: "--", transport padding, line break.
DELIMITER_TAIL_BYTES = 64


class FormDataError(Exception):
    """The body is not acceptable multipart/form-data. ``limit`` marks a size/count limit."""

    def __init__(self, message: str, *, limit: bool = False) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class TextField:
    name: str
    value: str


@dataclass(frozen=True)
class FileStart:
    name: str
    filename: str
    declared_type: str


@dataclass(frozen=True)
class FileData:
    data: bytes


@dataclass(frozen=True)
class FileEnd:
    last: bool  # the closing boundary followed this file: no more parts


@dataclass(frozen=True)
class FormEnd:
    pass


Event = Union[TextField, FileStart, FileData, FileEnd, FormEnd]


@dataclass(frozen=True)
class FormLimits:
    max_files: int = 10
    max_fields: int = 20
    max_field_bytes: int = 4096
    max_part_header_bytes: int = 8192


def boundary_from_content_type(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data Content-Type, validated per RFC 2046."""
    mimetype, options = parse_options_header(content_type or "")
    if mimetype != "multipart/form-data":
        raise FormDataError("Content-Type must be multipart/form-data.")
    boundary = options.get("boundary", "")
    if not boundary:
        raise FormDataError("The multipart/form-data Content-Type has no boundary.")
    if not _BOUNDARY_RE.match(boundary):
        raise FormDataError("The multipart boundary is not valid (RFC 2046).")
    return boundary.encode("ascii")


class _Decoder(wz.MultipartDecoder):
    def __init__(self, boundary: bytes, max_header_bytes: int) -> None:
        super().__init__(boundary)
        self.max_header_bytes = max_header_bytes

    def _parse_headers(self, data: bytes | bytearray) -> Headers:
        if len(data) > self.max_header_bytes:  # all of it arrived in one read
            raise FormDataError("Part headers are too large.", limit=True)
        # Legacy forms may send filenames in the page's 8-bit charset. werkzeug decodes part
        # headers as strict UTF-8; read anything else as Latin-1 (lossless) instead of failing.
        try:
            bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            data = bytes(data).decode("latin-1").encode("utf-8")
        return super()._parse_headers(data)

    def _last_partial_boundary_index(self, data: bytes | bytearray) -> int:
        # werkzeug keeps back at most one boundary's length of possible delimiter. When the
        # buffer ends inside a delimiter whose tail ("--" or the line break) has not arrived,
        # e.g. b"...\r\n--B-", that is too short and the delimiter's leading CR is emitted as
        # file data (a one-byte corruption at unlucky read offsets; pallets/werkzeug#3285,
        # open at 3.1.9). Keep back the whole
        # delimiter when "--B" sits near the end of the buffer.
        index = super()._last_partial_boundary_index(data)
        marker = b"--" + self.boundary
        pos = data.rfind(marker, max(0, len(data) - len(marker) - DELIMITER_TAIL_BYTES))
        if pos != -1:
            if pos > 0 and data[pos - 1] == 0x0A:
                pos -= 1
            if pos > 0 and data[pos - 1] == 0x0D:
                pos -= 1
            index = min(index, pos)
        return index


class FormDataParser:
    """Feed body bytes with ``feed``; call ``finish`` at the end of the body."""

    def __init__(self, boundary: bytes, limits: FormLimits = FormLimits()) -> None:
        self._decoder = _Decoder(boundary, limits.max_part_header_bytes)
        self._limits = limits
        self._files = 0
        self._fields = 0
        self._field: tuple[str, bytearray] | None = None
        self._in_file = False
        self.complete = False

    def feed(self, data: bytes) -> list[Event]:
        if self.complete:
            self._check_epilogue(len(self._decoder.buffer) + len(data))
        self._decoder.receive_data(data)
        return self._drain()

    def finish(self) -> list[Event]:
        """Signal the end of the body; raises if the form did not end with its closing boundary."""
        self._decoder.receive_data(None)
        events = self._drain()
        if not self.complete:
            raise FormDataError("The body ended before the closing boundary.")
        return events

    def _drain(self) -> list[Event]:
        events: list[Event] = []
        decoder = self._decoder
        while True:
            try:
                event = decoder.next_event()
            except RequestEntityTooLarge:
                raise FormDataError("Too many parts.", limit=True) from None
            except FormDataError:
                raise
            except ValueError as exc:  # includes UnicodeDecodeError
                if decoder.complete:
                    raise FormDataError("The body ended before the closing boundary.") from None
                raise FormDataError(f"Malformed part: {exc}") from None
            if isinstance(event, wz.NeedData):
                self._check_buffer()
                return events
            if isinstance(event, wz.Preamble):
                if event.data.strip():
                    raise FormDataError("Unexpected bytes before the first boundary.")
                self._mark_complete()  # an empty form: the first boundary is the closing one
            elif isinstance(event, wz.Field):
                self._fields += 1
                if self._fields > self._limits.max_fields:
                    raise FormDataError("Too many text fields.", limit=True)
                self._field = (event.name or "", bytearray())
            elif isinstance(event, wz.File):
                self._files += 1
                if self._files > self._limits.max_files:
                    raise FormDataError("Too many files.", limit=True)
                self._in_file = True
                events.append(FileStart(event.name or "", event.filename or "",
                                        event.headers.get("Content-Type", "")))
            elif isinstance(event, wz.Data):
                self._on_data(event, events)
            elif isinstance(event, wz.Epilogue):
                if event.data.strip():
                    raise FormDataError("Unexpected bytes after the closing boundary.")
                self.complete = True
                events.append(FormEnd())
                return events

    def _on_data(self, event: wz.Data, events: list[Event]) -> None:
        if self._in_file:
            if event.data:
                events.append(FileData(event.data))
            if not event.more_data:
                self._in_file = False
                events.append(FileEnd(last=self._decoder.state == wz.State.EPILOGUE))
                self._mark_complete()
            return
        assert self._field is not None
        name, value = self._field
        value += event.data
        if len(value) > self._limits.max_field_bytes:
            raise FormDataError(f"Text field {name!r} is too long.", limit=True)
        if not event.more_data:
            self._field = None
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                raise FormDataError(f"Text field {name!r} is not UTF-8.") from None
            events.append(TextField(name, text))
            self._mark_complete()

    def _mark_complete(self) -> None:
        if self._decoder.state == wz.State.EPILOGUE:
            self.complete = True

    def _check_buffer(self) -> None:
        state, size = self._decoder.state, len(self._decoder.buffer)
        if state == wz.State.PREAMBLE and size > MAX_PREAMBLE_BYTES:
            raise FormDataError("No multipart boundary at the start of the body.")
        if state == wz.State.PART and size > self._limits.max_part_header_bytes:
            raise FormDataError("Part headers are too large.", limit=True)
        if state == wz.State.EPILOGUE:
            self._check_epilogue(size)

    @staticmethod
    def _check_epilogue(size: int) -> None:
        if size > MAX_EPILOGUE_BYTES:
            raise FormDataError("Unexpected bytes after the closing boundary.")
