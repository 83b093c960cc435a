"""gateway.uploads.sniff: the type is what the first bytes say; allow-list patterns match exactly."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile

import filetype
import filetype.utils
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.uploads.sniff import (
    SNIFF_BYTES,
    Served,
    SniffedType,
    is_allowed,
    mime_of_extension,
    served_as,
    sniff,
)
from gateway.uploads.sniff_audio import EXTENSIONS, canonical

from support import jpeg_bytes, mp4_bytes, png_bytes


def test_the_sniff_window_is_the_one_filetype_reads():
    # A shorter window would miss signatures filetype finds further in; a longer one only
    # delays opening the writer.
    assert SNIFF_BYTES == filetype.utils._NUM_SIGNATURE_BYTES == 8192


@pytest.mark.parametrize(
    "head, mime, extension, file_type, alternative",
    [
        (png_bytes(100), "image/png", ".png", "image", ""),
        (jpeg_bytes(100), "image/jpeg", ".jpg", "image", ""),
        # an ftyp and no track list in sight: audio or video, the worker settles it
        (mp4_bytes(100), "video/mp4", ".mp4", "video", "audio/mp4"),
        (b"%PDF-1.7\n" + b"x" * 100, "application/pdf", ".pdf", "other", ""),
    ],
)
def test_sniff_names_mime_extension_and_file_type(head, mime, extension, file_type, alternative):
    sniffed = sniff(head)
    assert sniffed == SniffedType(mime=mime, extension=extension, alternative=alternative)
    assert sniffed.file_type == file_type


@pytest.mark.parametrize("head", [b"", b"text\0", b"\0" * 100, b"\xff\xfe", b"caf\xc3"])
def test_unrecognized_bytes_sniff_to_none(head):
    assert sniff(head) is None


@pytest.mark.parametrize(
    "mime, file_type",
    [
        ("image/png", "image"),
        ("video/webm", "video"),
        ("audio/mpeg", "audio"),
        ("application/x-image", "other"),
        ("image", "image"),
        ("video/x/image", "video"),  # the major type is what precedes the first slash
        ("imagex/png", "other"),
    ],
)
def test_file_type_is_the_major_type_of_images_videos_and_audio_only(mime, file_type):
    assert SniffedType(mime=mime, extension=".x").file_type == file_type


@pytest.mark.parametrize(
    "mime, patterns, allowed",
    [
        ("image/png", ("image/*",), True),
        ("video/mp4", ("image/*",), False),
        ("video/mp4", ("image/*", "video/*"), True),
        ("image/png", ("image/png",), True),
        ("image/pngx", ("image/png",), False),
        ("image/png", ("IMAGE/*",), False),  # case-sensitive
        ("image/png", (), False),
        ("application/pdf", ("image/*", "video/*"), False),
    ],
)
def test_is_allowed_matches_patterns_case_sensitively(mime, patterns, allowed):
    assert is_allowed(mime, patterns) is allowed


# -- text: what filetype does not know -------------------------------------------------------------
SVG_NS = b"xmlns='http://www.w3.org/2000/svg'"


@pytest.mark.parametrize(
    "head, mime, extension",
    [
        (b"hello world\n", "text/plain", ".txt"),
        (b"\xef\xbb\xbfwith a BOM\r\n\tand a tab\x0c", "text/plain", ".txt"),
        ("caf\u00e9 \u20ac\n".encode(), "text/plain", ".txt"),
        (b"   \n", "text/plain", ".txt"),
        (b"<3 you", "text/plain", ".txt"),
        (b"a,b,c\n1,2,3\n", "text/csv", ".csv"),
        (b'name;note\n"x";"a; b"\n"y";"c"', "text/csv", ".csv"),  # quoted delimiters
        (b"a\tb\n1\t2\n", "text/csv", ".csv"),
        (b"a,b\n1,2,3\n", "text/plain", ".txt"),  # records of different widths
        (b"one,line\n", "text/plain", ".txt"),  # a single record
        (b'{"a": [1, 2]}', "application/json", ".json"),
        (b"  [1, 2]\n", "application/json", ".json"),
        (b'{"a": ', "text/plain", ".txt"),  # a whole file that does not parse
        (b"<svg " + SVG_NS + b"><circle r='1'/></svg>", "image/svg+xml", ".svg"),
        (
            b"<?xml version='1.0'?>\n<!-- c -->\n<!DOCTYPE svg>\n<svg " + SVG_NS + b"/>",
            "image/svg+xml",
            ".svg",
        ),
        (b"<?xml version='1.0'?><s:svg xmlns:s='x'/>", "image/svg+xml", ".svg"),
        (b"<?xml version='1.0'?><note>x</note>", "application/xml", ".xml"),
        (b"<note>x</note>", "application/xml", ".xml"),
        (b"<!DOCTYPE html><p>x", "text/html", ".html"),
        (b"\n<HTML>", "text/html", ".html"),
        (b"<script>alert(1)</script>", "text/html", ".html"),
        (b"<!-- c --><svg " + SVG_NS + b"/>", "text/html", ".html"),  # as browsers sniff it
        (b"<?xml version='1.0'?>\n", "application/xml", ".xml"),  # declared, no root yet
        (b"<?XML version='1.0'?>\n", "text/plain", ".txt"),  # no declaration: "xml" is lower case
        (b"X<html>", "text/plain", ".txt"),  # only whitespace may come before the markup
        ("\u00a0<html>".encode(), "text/plain", ".txt"),  # a no-break space is no such whitespace
        (b"a,b\n1,2", "text/csv", ".csv"),  # a whole file: its last record needs no newline
        (b'"a,b";"x\ry"\n"1";"2"\n', "text/csv", ".csv"),  # not by commas (a bare CR): by ";"
    ],
)
def test_text_kinds(head, mime, extension):
    assert sniff(head) == SniffedType(mime, extension)


def test_a_window_cut_inside_a_file_still_reads_as_its_kind():
    assert len("\u20ac".encode()) == 3
    text = ("x" * (SNIFF_BYTES - 1) + "\u20ac").encode()[:SNIFF_BYTES]  # the euro sign cut
    assert sniff(text) == SniffedType("text/plain", ".txt")
    document = json.dumps([{"n": i} for i in range(2000)]).encode()[:SNIFF_BYTES]
    assert sniff(document) == SniffedType("application/json", ".json")
    table = b"".join(b"%d,%d,x\n" % (i, i * i) for i in range(2000))[:SNIFF_BYTES]
    assert not table.endswith(b"\n")  # the last record is cut: only whole ones count
    assert sniff(table) == SniffedType("text/csv", ".csv")
    trailing = (b"a,b,\n" * SNIFF_BYTES)[:SNIFF_BYTES]  # each record ends in an empty field
    assert not trailing.endswith(b"\n") and sniff(trailing) == SniffedType("text/csv", ".csv")


# -- office documents and archives: filetype's signatures ---------------------------------------------
def _zip(*entries: tuple[str, bytes], stored_first: bool = False) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for index, (name, data) in enumerate(entries):
            method = zipfile.ZIP_STORED if stored_first and index == 0 else zipfile.ZIP_DEFLATED
            archive.writestr(name, data, compress_type=method)
    return out.getvalue()


def _ooxml(part: str) -> bytes:  # the order Word, Excel and PowerPoint write
    return _zip(("[Content_Types].xml", b"<Types/>"), ("_rels/.rels", b"<R/>"), (part, b"<x/>"))


def _odf(mime: str) -> bytes:  # ODF: an uncompressed "mimetype" entry first
    return _zip(("mimetype", mime.encode()), ("content.xml", b"<x/>"), stored_first=True)


def _ole(at_512: bytes) -> bytes:  # a compound file header, then the first sector
    return b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504 + at_512 + b"\0" * 3000


def _tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        info = tarfile.TarInfo("a.txt")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    return out.getvalue()


@pytest.mark.parametrize(
    "head, mime, extension",
    [
        (
            _ooxml("word/document.xml"),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            ".docx",
        ),
        (
            _ooxml("xl/workbook.xml"),
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            ".xlsx",
        ),
        (
            _ooxml("ppt/presentation.xml"),
            "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            ".pptx",
        ),
        (
            _odf("application/vnd.oasis.opendocument.text"),
            "application/vnd.oasis.opendocument.text",
            ".odt",
        ),
        (
            _odf("application/vnd.oasis.opendocument.spreadsheet"),
            "application/vnd.oasis.opendocument.spreadsheet",
            ".ods",
        ),
        (_ole(b"\xec\xa5\xc1\x00"), "application/msword", ".doc"),  # Word's FIB
        (_ole(b"\x09\x08\x10\x00\x00\x06\x05\x00"), "application/vnd.ms-excel", ".xls"),  # BOF
        (_zip(("a.txt", b"abc")), "application/zip", ".zip"),
        (gzip.compress(b"abc", mtime=0), "application/gzip", ".gz"),
        (_tar(), "application/x-tar", ".tar"),
        (b"7z\xbc\xaf\x27\x1c\x00\x04" + b"\0" * 100, "application/x-7z-compressed", ".7z"),
    ],
)
def test_office_documents_and_archives(head, mime, extension):
    assert sniff(head[:SNIFF_BYTES]) == SniffedType(mime, extension)


# -- allow-lists and serving ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mime, patterns, allowed",
    [
        ("image/svg+xml", ("image/*",), False),  # active content: never by a wildcard...
        ("text/html", ("text/*",), False),
        ("application/xml", ("application/*",), False),
        ("image/svg+xml", ("image/svg+xml",), True),  # ...only by its name
        ("text/html", ("text/html",), True),
        ("image/svg+xml", ("*/*",), True),  # or by "any type"
        ("application/octet-stream", ("*/*",), True),
        ("text/csv", ("text/*",), True),
        ("image/png", ("image/*",), True),
    ],
)
def test_active_types_need_their_exact_name_or_any_type(mime, patterns, allowed):
    assert is_allowed(mime, patterns) is allowed


@pytest.mark.parametrize(
    "mime, served",
    [
        ("image/png", Served("image/png", inline=True)),
        ("video/mp4", Served("video/mp4", inline=True)),
        ("audio/mpeg", Served("audio/mpeg", inline=True)),
        ("application/pdf", Served("application/pdf", inline=True)),
        ("image/svg+xml", Served("application/octet-stream", inline=False)),
        ("text/html", Served("application/octet-stream", inline=False)),
        ("application/xml", Served("application/octet-stream", inline=False)),
        ("text/plain", Served("text/plain; charset=utf-8", inline=False)),
        ("text/csv", Served("text/csv; charset=utf-8", inline=False)),
        ("application/json", Served("application/json", inline=False)),
        ("application/zip", Served("application/zip", inline=False)),
        ("application/msword", Served("application/msword", inline=False)),
        ("application/octet-stream", Served("application/octet-stream", inline=False)),
        ("", Served("application/octet-stream", inline=False)),
    ],
)
def test_only_media_and_pdf_are_shown_inline_and_active_content_never_keeps_its_type(mime, served):
    assert served_as(mime) == served


@pytest.mark.parametrize(
    "extension, mime",
    [
        (".svg", "image/svg+xml"),
        (".html", "text/html"),
        (".txt", "text/plain"),
        (".png", "image/png"),
        (".docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        (".bin", "application/octet-stream"),
        (".nope", "application/octet-stream"),
        ("", "application/octet-stream"),
    ],
)
def test_mime_of_extension_reads_what_sniff_named(extension, mime):
    assert mime_of_extension(extension) == mime


# -- properties ------------------------------------------------------------------------------------
TEXT_MIMES = {
    "text/plain",
    "text/csv",
    "application/json",
    "application/xml",
    "image/svg+xml",
    "text/html",
}


@given(
    st.text(st.characters(blacklist_categories=("Cc", "Cs")) | st.sampled_from('\t\r\n,;<>{}[]"'))
)
def test_any_text_without_controls_sniffs_as_a_text_kind_cut_or_whole(text):
    data = text.encode()
    # Text that begins with a signature is typed by it (bytes decide: "MZ..." is an executable's
    # header, "%PDF-" a PDF's); every other text is a text kind or nothing.
    assume(not filetype.guess(data))
    kinds = {sniff(data), sniff((data * (SNIFF_BYTES // max(len(data), 1) + 2))[:SNIFF_BYTES])}
    assert all(kind is None or kind.mime in TEXT_MIMES for kind in kinds)
    if data:
        assert sniff(data) is not None and sniff(data).mime in TEXT_MIMES


@given(st.binary(max_size=SNIFF_BYTES))
def test_any_bytes_sniff_to_a_type_served_by_its_extension_as_by_its_type(data):
    sniffed = sniff(data)
    if sniffed is not None:
        assert served_as(mime_of_extension(sniffed.extension)) == served_as(sniffed.mime)


@pytest.mark.parametrize(
    "kind",
    [
        *filetype.types,
        *(SniffedType(m, "." + e) for m, e in [("text/plain", "txt")]),
        *(SniffedType(m, e) for m, e in EXTENSIONS.items() if e != ".3gp"),
        SniffedType("audio/ogg", ".opus"),
        SniffedType("audio/ogg", ".oga"),
    ],
)
def test_every_known_type_is_served_by_its_key_extension_as_by_its_type(kind):
    """The embedded /media/ route knows only the key: its extension must give the same answer
    (for the type the gateway stores: audio/wav, never filetype's audio/x-wav). Only .webm and
    .3gp name two types (audio or video): they are served as the video type."""
    mime = canonical(kind.mime)
    extension = kind.extension if isinstance(kind, SniffedType) else "." + kind.extension
    assert served_as(mime_of_extension(extension)) == served_as(mime)
