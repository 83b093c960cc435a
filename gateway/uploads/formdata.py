"""Incremental multipart/form-data parsing: bytes in, events out. No Flask, no storage, no I/O.

A small strict parser of its own (docs/parser.md): the werkzeug decoder it replaces, and
python-multipart, gave answers that depend on where the body is split into reads.

Why the parse is a function of the bytes alone, however they are split: the parser consumes the
body strictly from the front, and every decision about the byte at position *p* reads at most a
bounded window after *p*. When that window has not fully arrived, it waits (or, at the end of the
body, decides with the end as part of the window). No decision ever depends on how much happens to
be buffered, so every split of a body yields the same events and the same error. Data held back
is only a possible delimiter prefix (at most ``len(delimiter) - 1`` bytes) or an incomplete
header block (at most the header limit).

The grammar (RFC 2046 section 5.1.1 and RFC 7578), with the choices made where it allows them:
- The line break is CRLF, or LF throughout when the first boundary line ends in LF (some
  hand-written clients); the first boundary line fixes it for the whole body. CR alone is refused.
- Before the first boundary: whitespace only, at most ``MAX_PREAMBLE_BYTES``. After the closing
  boundary: whitespace only, at most ``MAX_EPILOGUE_BYTES``. Anything else is refused.
- A delimiter is ``<line break>--<boundary>``; the boundary must not occur in a part (RFC 2046),
  so once that sequence appears it *is* a delimiter and must be followed by ``--`` (the end) or by
  transport padding (spaces and tabs, at most ``MAX_PADDING_BYTES``) and a line break.
- A part whose body is empty may end its header block directly with the next ``--<boundary>``
  (the header block's last line break doubles as the delimiter's).
- Each part has a ``Content-Disposition: form-data`` header with a ``name``; a ``filename``
  parameter (even empty) makes it a file. Header bytes that are not UTF-8 are read as Latin-1.
- Parameters are read as the stdlib's ``email`` package reads MIME headers (python-multipart
  does the same): inside a quoted string only ``\\"`` and ``\\\\`` are escapes, any other
  backslash is kept. Old IE-mode forms send ``filename="C:\\Users\\me\\cat.png"`` with raw
  backslashes, and no file name contains a quote on Windows, so that reading keeps their paths
  (``naming.display_name`` keeps the last segment) while ``a\\"b.png`` is ``a"b.png``. Browsers
  write a quote, CR and LF as ``%22``, ``%0D``, ``%0A`` (WHATWG); those three are read back in
  ``filename`` and ``name`` (as werkzeug reads ``%22``). RFC 2231/5987 ``filename*`` in
  UTF-8 or ISO-8859-1 wins over ``filename`` wherever it stands; in another charset, or not
  decodable, it is ignored (then ``filename`` counts, or the name is empty).
- ``Content-Transfer-Encoding`` (RFC 7578 deprecates it; old form libraries still send it):
  ``7bit``, ``8bit``, ``binary`` pass through; ``base64`` and ``quoted-printable`` are decoded
  as the bytes arrive, so every event carries the decoded bytes; any other is refused
  (``FormDataError.unsupported_encoding``). Decoding errors are refused too: encoded text is
  never passed on as if it were the content.
"""

from __future__ import annotations

import binascii
import email.utils
import enum
import re
from dataclasses import dataclass

from werkzeug.http import parse_options_header

# RFC 2046 section 5.1.1: 1-70 characters from bcharsnospace plus inner spaces.
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PADDING_RE = re.compile(rb"[ \t]*")
WHITESPACE = b" \t\r\n"
Buffer = bytes | bytearray  # what a feed may be: the body reader under gunicorn gives bytearrays
MAX_PREAMBLE_BYTES = 1024
MAX_EPILOGUE_BYTES = 1024
MAX_PADDING_BYTES = 1024
CRLF, LF = b"\r\n", b"\n"


class FormDataError(Exception):
    """The body is not acceptable multipart/form-data. ``limit`` marks a size/count limit,
    ``unsupported_encoding`` a part in a Content-Transfer-Encoding the parser does not decode.

    ``events`` holds what the failing call had produced before the error.
    """

    def __init__(
        self, message: str, *, limit: bool = False, unsupported_encoding: bool = False
    ) -> None:
        super().__init__(message)
        self.limit = limit
        self.unsupported_encoding = unsupported_encoding
        self.events: list[Event] = []


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
    data: memoryview  # a view of the bytes fed in: use it before the next ``feed``


@dataclass(frozen=True)
class FileEnd:
    last: bool  # the closing boundary followed this file: no more parts


@dataclass(frozen=True)
class FormEnd:
    pass


Event = TextField | FileStart | FileData | FileEnd | FormEnd


@dataclass(frozen=True)
class FormLimits:
    max_files: int = 10
    max_fields: int = 20
    max_field_bytes: int = 4096
    max_part_header_bytes: int = 8192


def boundary_from_content_type(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data Content-Type, validated per RFC 2046."""
    mimetype, options = parse_options_header(content_type or "")
    if mimetype.lower() != "multipart/form-data":
        raise FormDataError("Content-Type must be multipart/form-data.")
    boundary = options.get("boundary", "")
    if not boundary:
        raise FormDataError("The multipart/form-data Content-Type has no boundary.")
    if not _BOUNDARY_RE.fullmatch(boundary):
        raise FormDataError("The multipart boundary is not valid (RFC 2046).")
    return boundary.encode("ascii")


class _State(enum.Enum):
    PREAMBLE = enum.auto()
    DELIMITER = enum.auto()  # after "--boundary": "--", or padding and a line break
    HEADERS = enum.auto()
    BODY_START = enum.auto()  # the body may be empty with the delimiter right here
    BODY = enum.auto()
    EPILOGUE = enum.auto()


class _Wait(Exception):
    """The window for the next decision has not arrived: keep the buffer from ``pos`` on."""

    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


class FormDataParser:
    """Feed body bytes with ``feed``; call ``finish`` at the end of the body."""

    def __init__(self, boundary: bytes, limits: FormLimits = FormLimits()) -> None:
        self._dash_boundary = b"--" + boundary
        self._limits = limits
        self._state = _State.PREAMBLE
        self._line_break: bytes | None = None  # fixed by the first boundary line
        self._delimiter = b""  # line break + dash boundary, once the line break is known
        self._buffer: Buffer = b""
        self._eof = False
        self._skipped = 0  # preamble or epilogue bytes so far
        self._files = 0
        self._fields = 0
        self._field: tuple[str, bytearray] | None = None  # a text field being read
        self._decoder: _Decoder | None = None  # the part's Content-Transfer-Encoding, if any
        self._in_part = False  # a part ended by the delimiter just read
        self.complete = False  # the closing boundary was seen

    def feed(self, data: Buffer) -> list[Event]:
        if self._eof:
            raise RuntimeError("feed() after finish()")
        self._buffer = self._buffer + data if self._buffer else data
        return self._run()

    def finish(self) -> list[Event]:
        """Signal the end of the body; raises if the form did not end with its closing boundary."""
        self._eof = True
        return self._run()

    # -- the machine -------------------------------------------------------------------------------
    def _run(self) -> list[Event]:
        events: list[Event] = []
        buffer, pos = self._buffer, 0
        steps = {
            _State.PREAMBLE: self._preamble,
            _State.DELIMITER: self._delimiter_line,
            _State.HEADERS: self._headers,
            _State.BODY_START: self._body_start,
            _State.BODY: self._body,
            _State.EPILOGUE: self._epilogue,
        }
        try:
            while True:
                step = steps[self._state]
                try:
                    pos = step(buffer, pos, events)
                except _Wait as wait:
                    if self._eof:
                        raise FormDataError("The body ended before the closing boundary.") from None
                    pos = wait.pos
                    break
                if self._state is _State.EPILOGUE and pos == len(buffer):
                    break
        except FormDataError as exc:
            exc.events = events
            self._buffer = b""
            raise
        self._buffer = buffer[pos:]
        return events

    def _preamble(self, buffer: Buffer, pos: int, events: list[Event]) -> int:
        start = pos
        end = len(buffer)
        while pos < end and buffer[pos] in WHITESPACE:
            pos += 1
        self._skipped += pos - start
        if self._skipped > MAX_PREAMBLE_BYTES:
            raise self._no_boundary()
        window = buffer[pos : pos + len(self._dash_boundary)]
        if window == self._dash_boundary:
            self._state = _State.DELIMITER
            return pos + len(self._dash_boundary)
        if not self._dash_boundary.startswith(window):
            raise self._no_boundary()
        raise _Wait(pos)  # only a prefix of the boundary so far (or nothing)

    @staticmethod
    def _no_boundary() -> FormDataError:
        return FormDataError("The body does not start with the multipart boundary.")

    def _delimiter_line(self, buffer: Buffer, pos: int, events: list[Event]) -> int:
        if buffer[pos : pos + 1] == b"-":
            if len(buffer) < pos + 2:
                raise _Wait(pos)
            if buffer[pos + 1 : pos + 2] != b"-":
                raise FormDataError("A boundary is followed by unexpected bytes.")
            self._end_part(events, last=True)
            self.complete = True
            events.append(FormEnd())
            self._state = _State.EPILOGUE
            self._skipped = 0  # the epilogue has a limit of its own
            return pos + 2
        padding = _PADDING_RE.match(buffer, pos)
        assert padding is not None
        after = padding.end()
        if after - pos > MAX_PADDING_BYTES:
            raise FormDataError("A boundary is followed by too much padding.")
        line_break = self._line_break
        if line_break is None:  # the first boundary line decides: CRLF or LF
            window = buffer[after : after + 2]
            if window[:1] == b"\r" and len(window) < 2:
                raise _Wait(pos)
            if window == CRLF:
                line_break = CRLF
            elif window[:1] == LF:
                line_break = LF
            elif window[:1] == b"\r":
                raise FormDataError("Line breaks must be CRLF (or LF), not CR alone.")
            elif not window:
                raise _Wait(pos)
            else:
                raise FormDataError("A boundary is followed by unexpected bytes.")
            self._line_break, self._delimiter = line_break, line_break + self._dash_boundary
        window = buffer[after : after + len(line_break)]
        if window != line_break:
            if line_break.startswith(window):
                raise _Wait(pos)
            raise FormDataError("A boundary is followed by unexpected bytes.")
        self._end_part(events, last=False)
        self._state = _State.HEADERS
        return after + len(line_break)

    def _headers(self, buffer: Buffer, pos: int, events: list[Event]) -> int:
        line_break = self._line_break
        assert line_break is not None
        cap = self._limits.max_part_header_bytes
        if buffer.startswith(line_break, pos):
            raise FormDataError("Malformed part: no 'Content-Disposition: form-data' header.")
        found = buffer.find(line_break + line_break, pos, pos + cap + 1)
        if found == -1:
            if len(buffer) - pos > cap:
                raise FormDataError("Part headers are too large.", limit=True)
            raise _Wait(pos)
        end = found + 2 * len(line_break)
        if end - pos > cap:
            raise FormDataError("Part headers are too large.", limit=True)
        self._start_part(self._parse_headers(buffer[pos : end - 2 * len(line_break)]), events)
        self._state = _State.BODY_START
        return end

    def _body_start(self, buffer: Buffer, pos: int, events: list[Event]) -> int:
        window = buffer[pos : pos + len(self._dash_boundary)]
        if window == self._dash_boundary:
            self._state = _State.DELIMITER  # an empty body: "...<CRLF><CRLF>--boundary"
            return pos + len(self._dash_boundary)
        if self._dash_boundary.startswith(window) and not self._eof:
            raise _Wait(pos)
        self._state = _State.BODY
        return pos

    def _body(self, buffer: Buffer, pos: int, events: list[Event]) -> int:
        delimiter = self._delimiter
        found = buffer.find(delimiter, pos)
        if found != -1:
            self._data(buffer, pos, found, events)
            self._state = _State.DELIMITER
            return found + len(delimiter)
        safe = _possible_prefix_start(buffer, max(pos, len(buffer) - len(delimiter) + 1), delimiter)
        self._data(buffer, pos, safe, events)
        raise _Wait(safe)

    def _epilogue(self, buffer: Buffer, pos: int, events: list[Event]) -> int:
        rest = buffer[pos:]
        self._skipped += len(rest)
        if rest.strip(WHITESPACE) or self._skipped > MAX_EPILOGUE_BYTES:
            raise FormDataError("Unexpected bytes after the closing boundary.")
        return len(buffer)

    # -- parts -------------------------------------------------------------------------------------
    def _parse_headers(self, block: Buffer) -> dict[str, str]:
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            # Legacy forms may send filenames in the page's 8-bit charset: Latin-1 is lossless.
            text = block.decode("latin-1")
        assert self._line_break is not None
        headers: dict[str, str] = {}
        last = ""
        for line in text.split(self._line_break.decode()) if text else []:
            if "\r" in line or "\n" in line:
                raise FormDataError("Malformed part: a header line contains a stray line break.")
            if line[:1] in (" ", "\t") and last:  # obsolete line folding
                headers[last] += " " + line.strip()
                continue
            name, colon, value = line.partition(":")
            if not colon or not _HEADER_NAME_RE.fullmatch(name):
                raise FormDataError("Malformed part: a header line is not 'Name: value'.")
            last = name.lower()
            headers.setdefault(last, value.strip(" \t"))
        return headers

    def _start_part(self, headers: dict[str, str], events: list[Event]) -> None:
        disposition, params = _disposition(headers.get("content-disposition", ""))
        if disposition.lower() != "form-data":
            raise FormDataError("Malformed part: no 'Content-Disposition: form-data' header.")
        name = _parameter(params, "name")
        if name is None:
            raise FormDataError("Malformed part: Content-Disposition has no name.")
        self._decoder = _decoder_for(headers.get("content-transfer-encoding"))
        self._in_part = True
        filename = _parameter(params, "filename")
        if filename is not None:
            self._files += 1
            if self._files > self._limits.max_files:
                raise FormDataError("Too many files.", limit=True)
            events.append(FileStart(name, filename, headers.get("content-type", "")))
        else:
            self._fields += 1
            if self._fields > self._limits.max_fields:
                raise FormDataError("Too many text fields.", limit=True)
            self._field = (name, bytearray())

    def _data(self, buffer: Buffer, start: int, end: int, events: list[Event]) -> None:
        if end <= start:
            return
        if self._decoder is None:
            self._pass(memoryview(buffer)[start:end], events)
            return
        decoded, problem = self._decoder.decode(memoryview(buffer)[start:end])
        self._pass(decoded, events)  # what came before the problem, however the body is split
        if problem is not None:
            raise FormDataError(problem)

    def _pass(self, data: memoryview | bytes, events: list[Event]) -> None:
        if not data:
            return
        if self._field is None:
            events.append(FileData(data if isinstance(data, memoryview) else memoryview(data)))
            return
        name, value = self._field
        if len(value) + len(data) > self._limits.max_field_bytes:
            raise FormDataError(f"Text field {name!r} is too long.", limit=True)
        value += data

    def _end_part(self, events: list[Event], *, last: bool) -> None:
        if not self._in_part:
            return  # the first boundary: no part before it
        self._in_part = False
        if self._decoder is not None:
            decoder, self._decoder = self._decoder, None
            decoded, problem = decoder.finish()
            self._pass(decoded, events)
            if problem is not None:
                raise FormDataError(problem)
        if self._field is None:
            events.append(FileEnd(last=last))
            return
        name, value = self._field
        self._field = None
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise FormDataError(f"Text field {name!r} is not UTF-8.") from None
        events.append(TextField(name, text))


def _possible_prefix_start(buffer: Buffer, start: int, delimiter: bytes) -> int:
    """Where the buffer's tail from ``start`` on begins a possible delimiter (else its length)."""
    first = delimiter[:1]
    index = buffer.find(first, start)
    while index != -1:
        if delimiter.startswith(buffer[index:]):
            return index
        index = buffer.find(first, index + 1)
    return len(buffer)


# -- Content-Disposition parameters ----------------------------------------------------------------
Parameter = str | tuple[str | None, str | None, str]  # plain, or RFC 2231 (charset, language, text)
_EXTENDED_CHARSETS = ("utf-8", "iso-8859-1")  # the two RFC 8187 requires; others are ignored
_UNESCAPED_QUOTE = re.compile(r'(?<!\\)"')  # how the email package finds quoted strings
# "; name", "; name=token" or '; name="quoted string"' (a backslash pairs with the next character)
_PARAMETER = re.compile(r';\s*([^\s=;]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^;]*))?')
_WHATWG_ESCAPE = re.compile("%(22|0D|0A)")  # the only escapes browsers write in a quoted name


def _unescape(match: re.Match[str]) -> str:
    return chr(int(match.group(1), 16))


def _disposition(value: str) -> tuple[str, list[tuple[str, Parameter]]]:
    """The disposition type and its parameters, in order (see the module docstring): split in
    one linear pass, then unquoted and RFC 2231-decoded by the stdlib (``email.utils``, as
    ``email.message`` does; its own splitter recounts the quotes at every ``;``, quadratic in a
    header of thousands of quoted semicolons)."""
    if len(_UNESCAPED_QUOTE.findall(value)) % 2:
        # A raw line break inside the quotes, or a truncated header: not a name to guess at.
        raise FormDataError("Malformed part: a quoted string in Content-Disposition does not end.")
    disposition, _, rest = value.partition(";")
    split = [(disposition.strip(), "")]
    split += [(m[1].lower(), (m[2] or "").strip()) for m in _PARAMETER.finditer(";" + rest)]
    params: list[tuple[str, Parameter]] = []
    # typeshed says str values; RFC 2231 ones are (charset, language, text) tuples at run time
    for name, param in email.utils.decode_params(split)[1:]:
        if isinstance(param, tuple):
            charset, language, text = param
            params.append((name, (charset, language, email.utils.unquote(text))))
        else:
            params.append((name, email.utils.unquote(param)))
    return disposition.strip(), params


def _parameter(params: list[tuple[str, Parameter]], key: str) -> str | None:
    """``key*`` (RFC 2231/5987, when decodable) before ``key``; the first of each counts."""
    plain: str | None = None
    extended: str | None = None
    seen_extended = False
    for name, value in params:
        if name != key:
            continue
        if isinstance(value, str):
            plain = _WHATWG_ESCAPE.sub(_unescape, value) if plain is None else plain
        elif not seen_extended:
            seen_extended = True
            extended = _extended_value(value)
    if extended:
        return extended
    if plain is None and seen_extended:
        return ""  # sent, but not readable: a file part stays a file part
    return plain


def _extended_value(value: tuple[str | None, str | None, str]) -> str | None:
    charset, _, text = value  # text: the percent-decoded bytes, one character per byte
    if charset is None or charset.lower() not in _EXTENDED_CHARSETS:
        return None
    try:
        return text.encode("latin-1").decode(charset)
    except UnicodeError:
        return None


# -- Content-Transfer-Encoding ---------------------------------------------------------------------
class _Decoder:
    """Decodes one part's bytes as they arrive. ``decode`` answers the bytes decoded so far and,
    when the data is not valid, a problem: the decoded bytes are those before the first invalid
    unit, so the output and the error are the same however the body is split."""

    def decode(self, data: memoryview) -> tuple[bytes, str | None]:
        raise NotImplementedError

    def finish(self) -> tuple[bytes, str | None]:
        raise NotImplementedError


_BASE64_SPACE = b" \t\r\n"
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=]")
_BAD_BASE64 = "A base64 part is not valid base64 (RFC 2045)."


class _Base64(_Decoder):
    """RFC 2045 base64: line breaks, spaces and tabs ignored; any other byte outside the
    alphabet, a missing or misplaced ``=`` padding, or data after it is refused. Whole 4-byte
    quanta are decoded by ``binascii`` (strict mode); at most 3 bytes wait for the rest."""

    def __init__(self) -> None:
        self._held = b""
        self._padded = False  # the padded last quantum was read: nothing may follow

    def decode(self, data: memoryview) -> tuple[bytes, str | None]:
        text = bytes(data).translate(None, _BASE64_SPACE)
        bad = _NOT_BASE64.search(text)
        text = self._held + (text if bad is None else text[: bad.start()])
        if self._padded and text:
            return b"", _BAD_BASE64
        pad = text.find(b"=")
        if pad == -1:
            whole = len(text) - len(text) % 4
            self._held = text[whole:]
            return binascii.a2b_base64(text[:whole], strict_mode=True), (
                None if bad is None else _BAD_BASE64
            )
        last = pad - pad % 4  # the quantum with the padding is the last one
        decoded = binascii.a2b_base64(text[:last], strict_mode=True)
        if len(text) < last + 4:
            self._held = text[last:]
            return decoded, None if bad is None else _BAD_BASE64
        self._held = b""
        try:
            decoded += binascii.a2b_base64(text[last : last + 4], strict_mode=True)
        except binascii.Error:
            return decoded, _BAD_BASE64
        self._padded = True
        return decoded, None if bad is None and len(text) == last + 4 else _BAD_BASE64

    def finish(self) -> tuple[bytes, str | None]:
        return b"", _BAD_BASE64 if self._held else None


_BAD_QP = "A quoted-printable part is not valid quoted-printable (RFC 2045)."
# "=" begins an escape of two hex digits or a soft line break; anything else is an error.
_BAD_QP_ESCAPE = re.compile(rb"=(?![0-9A-Fa-f]{2}|\r\n|\n)")
_QP_ESCAPE_PREFIX = re.compile(rb"=(?:[0-9A-Fa-f]|\r)?")


class _QuotedPrintable(_Decoder):
    """RFC 2045 quoted-printable, decoded by ``binascii.a2b_qp`` once the escapes are checked:
    ``=XX`` (hex, either case), ``=`` before a line break (a soft break) and a lone ``=`` that
    ends the part; any other ``=`` is refused. An escape cut by a read (at most 2 bytes) waits.
    Trailing spaces on a line are kept as sent: encoders write them as ``=20``, and HTTP has no
    mail transport that would add any."""

    def __init__(self) -> None:
        self._held = b""

    def decode(self, data: memoryview) -> tuple[bytes, str | None]:
        text = self._held + bytes(data)
        tail = text.rfind(b"=", max(0, len(text) - 2))
        if tail != -1 and _QP_ESCAPE_PREFIX.fullmatch(text, tail):
            text, self._held = text[:tail], text[tail:]
        else:
            self._held = b""
        bad = _BAD_QP_ESCAPE.search(text)
        if bad is not None:
            self._held = b""
            return binascii.a2b_qp(text[: bad.start()]), _BAD_QP
        return binascii.a2b_qp(text), None

    def finish(self) -> tuple[bytes, str | None]:
        held, self._held = self._held, b""
        return b"", None if held in (b"", b"=") else _BAD_QP


_IDENTITY_ENCODINGS = ("7bit", "8bit", "binary")
_DECODERS: dict[str, type[_Decoder]] = {"base64": _Base64, "quoted-printable": _QuotedPrintable}


def _decoder_for(encoding: str | None) -> _Decoder | None:
    if encoding is None:
        return None
    name = encoding.strip().lower()
    if name in _IDENTITY_ENCODINGS:
        return None
    decoder = _DECODERS.get(name)
    if decoder is None:
        raise FormDataError(
            f"Content-Transfer-Encoding {encoding[:40]!r} is not supported "
            "(base64, quoted-printable, 7bit, 8bit, binary).",
            unsupported_encoding=True,
        )
    return decoder()
