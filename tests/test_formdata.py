"""The incremental parser on raw bytes: every read offset, every malformed case."""
from __future__ import annotations

import pytest

from gateway.formdata import (FileData, FileEnd, FileStart, FormDataError, FormDataParser,
                              FormEnd, FormLimits, TextField, boundary_from_content_type)

from support import form_body, png_bytes

BOUNDARY = b"----gatewaytestboundary7MA4YWxkTrZu0gW"


def parse(body: bytes, split: int | None = None, limits: FormLimits = FormLimits(),
          boundary: bytes = BOUNDARY):
    """Feed ``body`` in pieces of ``split`` bytes (whole if None); return the collapsed events."""
    parser = FormDataParser(boundary, limits)
    events = []
    step = split or len(body) or 1
    for i in range(0, len(body), step):
        events += parser.feed(body[i:i + step])
    events += parser.finish()
    return collapse(events)


def collapse(events):
    """Join consecutive FileData events so results compare independently of read sizes."""
    out = []
    for event in events:
        if isinstance(event, FileData) and out and isinstance(out[-1], FileData):
            out[-1] = FileData(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def test_fields_then_files_as_events():
    a, b = png_bytes(3000), png_bytes(5000, seed=3)
    body, _ = form_body([("projectId", "p1"), ("caption", "héllo")],
                        [("files", "a.png", a), ("files", "b.png", b)])
    assert parse(body) == [
        TextField("projectId", "p1"), TextField("caption", "héllo"),
        FileStart("files", "a.png", "application/octet-stream"), FileData(a), FileEnd(last=False),
        FileStart("files", "b.png", "application/octet-stream"), FileData(b), FileEnd(last=True),
        FormEnd()]


def test_boundary_split_at_every_read_offset_keeps_bytes_exact():
    # Content full of CR, LF, '-' and a near-boundary, so every split point is awkward.
    content = b"\r\n--" + BOUNDARY[:-1] + b"\r\n\r\n-\r" + png_bytes(600) + b"\r\n--" + BOUNDARY[:10]
    body, _ = form_body([("projectId", "p1")], [("file", "x.png", content)])
    expected = parse(body)
    assert expected[2] == FileData(content)
    for split in range(1, 97):
        assert parse(body, split) == expected, split
    # and a single split at every position of the body
    for cut in range(1, len(body)):
        parser = FormDataParser(BOUNDARY)
        events = parser.feed(body[:cut]) + parser.feed(body[cut:]) + parser.finish()
        assert collapse(events) == expected, cut


def test_lf_only_line_breaks_are_accepted():
    body = (b"--" + BOUNDARY + b"\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\n\n"
            + b"DATA" + b"\n--" + BOUNDARY + b"--\n")
    assert parse(body)[1] == FileData(b"DATA")


def test_rfc2231_and_latin1_filenames():
    body = (b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=\"file\"; "
            b"filename*=UTF-8''%E2%82%AC.png\r\n\r\nX\r\n--" + BOUNDARY + b"\r\n"
            b"Content-Disposition: form-data; name=\"file\"; filename=\"caf\xe9.png\"\r\n\r\nY\r\n--"
            + BOUNDARY + b"--\r\n")
    starts = [e for e in parse(body) if isinstance(e, FileStart)]
    assert [s.filename for s in starts] == ["€.png", "café.png"]


@pytest.mark.parametrize("body, message", [
    (b"", "closing boundary"),
    (b"junk before\r\n--" + BOUNDARY + b"--\r\n", "before the first boundary"),
    (b"--" + BOUNDARY + b"--\r\nand junk after", "after the closing boundary"),
    (b"no boundary anywhere " * 100, "No multipart boundary"),
    (b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue", "closing boundary"),
    (b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n"
     + b"x" * 5000, "closing boundary"),
    (b"--" + BOUNDARY + b"\r\nContent-Type: text/plain\r\n\r\nvalue\r\n--" + BOUNDARY + b"--\r\n",
     "Content-Disposition"),
    (b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\xff\xfe\r\n--"
     + BOUNDARY + b"--\r\n", "not UTF-8"),
    (b"--" + b"wrongboundary" + b"\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--"
     + b"wrongboundary--\r\n", "closing boundary"),
])
def test_malformed_bodies_are_refused(body, message):
    with pytest.raises(FormDataError, match=message) as caught:
        parse(body)
    assert caught.value.limit is False


def test_huge_part_headers_are_refused_as_a_limit():
    body = (b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=\"a\"\r\nX-Pad: "
            + b"p" * 20_000 + b"\r\n\r\nv\r\n--" + BOUNDARY + b"--\r\n")
    with pytest.raises(FormDataError, match="headers are too large") as caught:
        parse(body, split=4096, limits=FormLimits(max_part_header_bytes=8192))
    assert caught.value.limit


def test_endless_part_headers_fail_before_the_body_ends():
    parser = FormDataParser(BOUNDARY, FormLimits(max_part_header_bytes=8192))
    parser.feed(b"--" + BOUNDARY + b"\r\nX-Endless: ")
    with pytest.raises(FormDataError, match="too large"):
        for _ in range(10):
            parser.feed(b"a" * 4096)


@pytest.mark.parametrize("limits, fields, files, message", [
    (FormLimits(max_files=2), [], [("files", "a", b"1"), ("files", "b", b"2"), ("files", "c", b"3")],
     "Too many files"),
    (FormLimits(max_fields=2), [("a", "1"), ("b", "2"), ("c", "3")], [], "Too many text fields"),
    (FormLimits(max_field_bytes=100), [("caption", "x" * 101)], [], "too long"),
])
def test_count_and_size_limits(limits, fields, files, message):
    body, _ = form_body(fields, files)
    with pytest.raises(FormDataError, match=message) as caught:
        parse(body, limits=limits)
    assert caught.value.limit


def test_an_oversized_field_fails_without_buffering_it_all():
    parser = FormDataParser(BOUNDARY, FormLimits(max_field_bytes=1000))
    parser.feed(b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n")
    with pytest.raises(FormDataError, match="too long"):
        parser.feed(b"x" * 2000)


def test_empty_form_is_complete_with_no_parts():
    assert parse(b"--" + BOUNDARY + b"--\r\n") == [FormEnd()]


def test_file_end_marks_whether_more_parts_follow():
    body, _ = form_body([], [("file", "a", b"1")])
    events = parse(body)
    assert FileEnd(last=True) in events


@pytest.mark.parametrize("content_type, ok", [
    ("multipart/form-data; boundary=abc", True),
    ('multipart/form-data; boundary="with space ok"', True),
    ("multipart/form-data", False),
    ("multipart/form-data; boundary=", False),
    ("multipart/form-data; boundary=" + "a" * 71, False),
    ('multipart/form-data; boundary="ends with space "', False),
    ("multipart/mixed; boundary=abc", False),
    ("application/json", False),
    (None, False),
])
def test_boundary_from_content_type(content_type, ok):
    if ok:
        assert boundary_from_content_type(content_type)
    else:
        with pytest.raises(FormDataError):
            boundary_from_content_type(content_type)
