"""Content sniffing: the type of a file is what its first bytes say, never what the client says.

Audio is recognised first (gateway/uploads/sniff_audio.py: WAV, AIFF, CAF, FLAC, AMR, MP3, AAC);
other binary formats are ``filetype``'s (images, video, PDF, office documents: docx/xlsx/pptx,
odt/ods/odp and OLE doc/xls/ppt; archives: zip, gzip, tar, 7z, ...). A container that holds
audio or video (MP4/3GP, WebM/Matroska, Ogg) is typed by what its first bytes say it holds
(``audio/webm`` for an audio-only WebM); when they cannot tell, it gets the type the container
usually has, with the other as its ``alternative``: admitted when either is allowed, settled by
the worker (gateway/processing/derive.py). What ``filetype`` does not know is text,
recognised here from the first ``SNIFF_BYTES``: UTF-8 (a BOM allowed, a character cut by the end
of the window allowed) without control characters other than tab, line breaks and form feed.
Text is then, in this order: HTML (the WHATWG sniffing signatures: what a browser would render
as HTML), XML (``<?xml`` or a root element; SVG when the root is ``svg``), JSON (a whole file
that parses, or a longer one that begins like a JSON object or array), CSV (at least two records,
all with the same number, two or more, of fields split by the same ``,``, ``;`` or tab), else
plain text.

Allow-list patterns (``GATEWAY_ALLOWED_TYPES``): an exact type, ``type/*``, or ``*/*`` (any type:
unrecognised bytes are stored as ``application/octet-stream``). Types a browser runs as active
content (``ACTIVE_TYPES``: HTML, SVG, XML) are admitted only by their exact name or ``*/*``, never
by ``image/*`` or ``text/*``; ``served_as`` says how every type is served.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

import filetype

from gateway.uploads import sniff_audio

SNIFF_BYTES = 8192  # filetype's signature window
ANY_TYPE = "*/*"
OCTET_STREAM = "application/octet-stream"
SVG, HTML, XML = "image/svg+xml", "text/html", "application/xml"
ACTIVE_TYPES = frozenset({SVG, HTML, XML})  # a browser runs scripts in these


@dataclass(frozen=True)
class SniffedType:
    mime: str
    extension: str  # with the dot, e.g. ".jpg"
    # The container's other type when its first bytes cannot tell audio from video (an MP4
    # with its track list at the end): video/mp4 <-> audio/mp4, video/webm <-> audio/webm, ...
    alternative: str = ""

    @property
    def file_type(self) -> str:
        major = self.mime.split("/", 1)[0]
        return major if major in FILE_TYPES else "other"

    def swapped(self) -> SniffedType:
        """The alternative type (undecided still, with this one as its alternative)."""
        return SniffedType(
            self.alternative, sniff_audio.extension_of(self.alternative), alternative=self.mime
        )


FILE_TYPES = ("image", "video", "audio")  # a record's file type: one of these, or "other"


UNKNOWN = SniffedType(OCTET_STREAM, ".bin")  # what "*/*" stores unrecognised bytes as
UNTYPED = SniffedType("", "")  # a tus upload before its first bytes: no type, no extension


def sniff(head: bytes) -> SniffedType | None:
    audio = sniff_audio.audio_signature(head)
    if audio is not None:
        return SniffedType(*audio)
    if head.startswith(b"OggS"):
        return _by_content(head, SniffedType("audio/ogg", sniff_audio.ogg_extension(head)))
    kind = filetype.guess(head)
    if kind is not None:
        mime = sniff_audio.canonical(kind.mime)
        return _by_content(head, SniffedType(mime=mime, extension="." + kind.extension))
    return _text_type(head)


def _by_content(head: bytes, sniffed: SniffedType) -> SniffedType:
    """A container's type by what it holds, or undecided (with an alternative)."""
    other = sniff_audio.twin(sniffed.mime)
    if not other:
        return sniffed
    holds = sniff_audio.container_holds(head)
    if holds is None:
        return SniffedType(sniffed.mime, sniffed.extension, alternative=other)
    if sniffed.mime.startswith(holds + "/"):
        return sniffed
    extension = sniff_audio.extension_of(other)
    if other == "audio/ogg":
        extension = sniff_audio.ogg_extension(head)
    return SniffedType(other, extension)


def type_of_mime(mime: str) -> SniffedType | None:
    """A binary type named by a client (a direct upload's promise), by its canonical name
    (``audio/x-wav`` is ``audio/wav``), with its extension; None for a type sniffing does not
    know by that name."""
    mime = sniff_audio.canonical(mime)
    extension = sniff_audio.extension_of(mime)
    if extension:
        return SniffedType(mime, extension)
    kind = filetype.get_type(mime=mime)
    return SniffedType(mime, "." + kind.extension) if kind is not None else None


def is_allowed(mime: str, patterns: tuple[str, ...]) -> bool:
    for pattern in patterns:
        if pattern in (ANY_TYPE, mime):
            return True
        if mime not in ACTIVE_TYPES and fnmatchcase(mime, pattern):
            return True
    return False


@dataclass(frozen=True)
class Served:
    """How a stored object is served: its Content-Type and whether a browser may show it."""

    content_type: str
    inline: bool


_INLINE_MAJORS = ("image/", "video/", "audio/")
_TEXT_TYPES = {"text/plain", "text/csv"}  # verified UTF-8 when sniffed


def served_as(mime: str) -> Served:
    """Raster images, video, audio and PDF are shown inline with their own type. Everything
    else is a download (``Content-Disposition: attachment``); active content (HTML, SVG, XML) and
    anything unknown goes out as ``application/octet-stream``, so no browser renders it, even
    where a store or CDN adds no ``X-Content-Type-Options: nosniff``."""
    if mime not in ACTIVE_TYPES and (mime.startswith(_INLINE_MAJORS) or mime == "application/pdf"):
        return Served(mime, inline=True)
    if mime in _TEXT_TYPES:
        return Served(f"{mime}; charset=utf-8", inline=False)
    if mime in ACTIVE_TYPES or not mime or "/" not in mime:
        return Served(OCTET_STREAM, inline=False)
    return Served(mime, inline=False)


def mime_of_extension(extension: str) -> str:
    """The type whose sniffed extension this is (``.svg``, ``.png``, ...): what a key's extension
    says, for serving stored files by key alone; unknown is ``application/octet-stream``."""
    for sniffed in _TEXT_TYPES_BY_KIND.values():
        if sniffed.extension == extension:
            return sniffed.mime
    if extension in sniff_audio.BY_EXTENSION:
        return sniff_audio.BY_EXTENSION[extension]
    kind = filetype.get_type(ext=extension.removeprefix(".")) if extension else None
    return kind.mime if kind is not None else OCTET_STREAM


# -- text ------------------------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
# WHATWG MIME Sniffing, "rules for identifying an unknown MIME type": HTML signatures, each
# followed by a space or ">" (the "<!--" one by anything).
_HTML_SIGNATURE = re.compile(
    r"(?:<!DOCTYPE\s+HTML|<HTML|<HEAD|<SCRIPT|<IFRAME|<H1|<DIV|<FONT|<TABLE|<A|<STYLE|<TITLE|<B"
    r"|<BODY|<BR|<P)[ \t\n\f\r>]|<!--",
    re.IGNORECASE,
)
# Before the root element: an XML declaration, comments, processing instructions, a doctype.
_XML_PROLOG = re.compile(r"(?:<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^>]*>|\s+)*", re.DOTALL)
_XML_ROOT = re.compile(r"<(?:[A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)[\s/>]")
_JSON_START = re.compile(r'\{\s*(?:"|\})|\[\s*[-\d"\[{\]tfn]')
_CSV_DELIMITERS = (",", ";", "\t")
_TEXT_TYPES_BY_KIND = {
    "html": SniffedType(HTML, ".html"),
    "svg": SniffedType(SVG, ".svg"),
    "xml": SniffedType(XML, ".xml"),
    "json": SniffedType("application/json", ".json"),
    "csv": SniffedType("text/csv", ".csv"),
    "text": SniffedType("text/plain", ".txt"),
}


def _text_type(head: bytes) -> SniffedType | None:
    if not head:
        return None
    whole = len(head) < SNIFF_BYTES  # else the window may end inside the file
    try:  # not whole: a character cut by the end of the window is no reason to refuse
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=whole)
    except UnicodeDecodeError:
        return None
    if _CONTROL.search(text):
        return None
    return _TEXT_TYPES_BY_KIND[_text_kind(text, whole=whole)]


def _text_kind(text: str, *, whole: bool) -> str:
    start = text.lstrip(" \t\r\n\f")
    declared_xml = start.startswith("<?xml")
    if not declared_xml and _HTML_SIGNATURE.match(start):
        return "html"
    if start.startswith("<"):
        prolog = _XML_PROLOG.match(start)
        root = _XML_ROOT.match(start, prolog.end() if prolog else 0)
        if root is not None:
            return "svg" if root.group(1) == "svg" else "xml"
        if declared_xml:
            return "xml"
    if _is_json(start, whole=whole):
        return "json"
    if _is_csv(text, whole=whole):
        return "csv"
    return "text"


def _is_json(start: str, *, whole: bool) -> bool:
    if not _JSON_START.match(start):
        return False
    if not whole:
        return True  # the window ends inside the document
    try:
        json.loads(start)
    except ValueError:
        return False
    return True


def _is_csv(text: str, *, whole: bool) -> bool:
    if not whole:
        text = text[: text.rfind("\n") + 1]  # complete lines only
    for delimiter in _CSV_DELIMITERS:
        if delimiter not in text:
            continue
        try:
            rows = [row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if row]
        except csv.Error:
            continue
        widths = {len(row) for row in rows}
        if len(rows) >= 2 and len(widths) == 1 and widths.pop() >= 2:
            return True
    return False
