"""The incremental parser on raw bytes: every read offset, every malformed case, exact limits,
generated bodies (whole and split must agree), and a second parser on valid bodies."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.uploads.formdata import (
    MAX_EPILOGUE_BYTES,
    MAX_PADDING_BYTES,
    MAX_PREAMBLE_BYTES,
    FileData,
    FileEnd,
    FileStart,
    FormDataError,
    FormDataParser,
    FormEnd,
    FormLimits,
    TextField,
    boundary_from_content_type,
)

from formdata_bodies import (
    BCHARS,
    Form,
    Outcome,
    Part,
    encoded,
    every_size,
    expected_events,
    outcome,
    render,
)
from support import form_body, png_bytes

BOUNDARY = b"----gatewaytestboundary7MA4YWxkTrZu0gW"
DISPOSITION = b'Content-Disposition: form-data; name="a"'
FILE_DISPOSITION = b'Content-Disposition: form-data; name="file"; filename="a"'


def parse(
    body: bytes,
    split: int | None = None,
    limits: FormLimits = FormLimits(),
    boundary: bytes = BOUNDARY,
) -> list:
    """Events of ``body`` fed in pieces of ``split`` bytes (whole if None); raises on error."""
    result = outcome(
        body, every_size(body, split) if split else (), boundary=boundary, limits=limits
    )
    if result.error is not None:
        raise FormDataError(result.error[0], limit=result.error[1])
    return result.events


def same_for_every_cut(
    body: bytes, boundary: bytes = BOUNDARY, limits: FormLimits = FormLimits()
) -> Outcome:
    """The whole parse, after checking that a single cut at any offset gives the same."""
    whole = outcome(body, boundary=boundary, limits=limits)
    for cut in range(1, len(body)):
        assert outcome(body, [cut], boundary=boundary, limits=limits) == whole, cut
    return whole


def test_fields_then_files_as_events():
    a, b = png_bytes(3000), png_bytes(5000, seed=3)
    body, _ = form_body(
        [("projectId", "p1"), ("caption", "héllo")], [("files", "a.png", a), ("files", "b.png", b)]
    )
    assert parse(body) == [
        TextField("projectId", "p1"),
        TextField("caption", "héllo"),
        FileStart("files", "a.png", "application/octet-stream"),
        FileData(memoryview(a)),
        FileEnd(last=False),
        FileStart("files", "b.png", "application/octet-stream"),
        FileData(memoryview(b)),
        FileEnd(last=True),
        FormEnd(),
    ]


def test_a_text_field_after_a_file():
    body, _ = form_body([], [("file", "a.png", b"PNG")])
    body = body.replace(
        b"--" + BOUNDARY + b"--",
        b"--" + BOUNDARY + b"\r\n" + DISPOSITION + b"\r\n\r\nlate\r\n--" + BOUNDARY + b"--",
    )
    assert parse(body) == [
        FileStart("file", "a.png", "application/octet-stream"),
        FileData(memoryview(b"PNG")),
        FileEnd(last=False),
        TextField("a", "late"),
        FormEnd(),
    ]


def test_boundary_split_at_every_read_offset_keeps_bytes_exact():
    # Content full of CR, LF, '-' and a near-boundary, so every split point is awkward.
    content = (
        b"\r\n--" + BOUNDARY[:-1] + b"\r\n\r\n-\r" + png_bytes(600) + b"\r\n--" + BOUNDARY[:10]
    )
    body, _ = form_body([("projectId", "p1")], [("file", "x.png", content)])
    expected = parse(body)
    assert expected[2] == FileData(memoryview(content))
    for split in range(1, 97):
        assert parse(body, split) == expected, split
    assert same_for_every_cut(body).events == expected


def test_lf_only_line_breaks_are_accepted_at_every_offset():
    content = b"\r\nDA\rTA\r\n-\n-" + BOUNDARY[:5]
    body = (
        b"--"
        + BOUNDARY
        + b"\n"
        + FILE_DISPOSITION
        + b"\n\n"
        + content
        + b"\n--"
        + BOUNDARY
        + b"\n"
        + DISPOSITION
        + b"\n\nv\r\n--"
        + BOUNDARY
        + b"--\n"
    )
    whole = same_for_every_cut(body)
    assert whole == Outcome(
        [
            FileStart("file", "a", ""),
            FileData(memoryview(content)),
            FileEnd(last=False),
            TextField("a", "v\r"),
            FormEnd(),
        ],
        None,
    )
    for split in (1, 2, 3, 7):
        assert parse(body, split) == whole.events


def test_rfc2231_and_latin1_filenames():
    body = (
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; '
        b"filename*=UTF-8''%E2%82%AC.png\r\n\r\nX\r\n--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="caf\xe9.png"\r\n\r\nY\r\n--'
        + BOUNDARY
        + b"--\r\n"
    )
    starts = [e for e in parse(body) if isinstance(e, FileStart)]
    assert [s.filename for s in starts] == ["€.png", "café.png"]


def test_header_names_are_case_insensitive_and_folded_lines_join():
    body = (
        b'--B\r\ncontent-disposition: Form-Data;\r\n name="file"; filename="a.png"\r\n'
        b"CONTENT-TYPE: image/png\r\n\r\nX\r\n--B--"
    )
    assert parse(body, boundary=b"B") == [
        FileStart("file", "a.png", "image/png"),
        FileData(memoryview(b"X")),
        FileEnd(last=True),
        FormEnd(),
    ]


# -- the reproductions of issue 12, at their exact offsets ------------------------------------------
def test_an_all_dash_boundary_never_leaks_the_delimiter_cr():
    body = b'---\r\nContent-Disposition: form-data; name="a"\r\n\r\n\r\n-----'
    whole = same_for_every_cut(body, boundary=b"-")
    assert whole == Outcome([TextField("a", ""), FormEnd()], None)
    assert outcome(body, [55], boundary=b"-") == whole


def test_transport_padding_after_a_delimiter_is_accepted_at_any_split():
    body = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nDATA\r\n--B'
        + b" " * 100
        + b'\r\nContent-Disposition: form-data; name="c"\r\n\r\nv\r\n--B--\r\n'
    )
    whole = same_for_every_cut(body, boundary=b"B")
    assert whole == Outcome(
        [
            FileStart("file", "a", ""),
            FileData(memoryview(b"DATA")),
            FileEnd(last=False),
            TextField("c", "v"),
            FormEnd(),
        ],
        None,
    )
    assert outcome(body, [174], boundary=b"B") == whole


def test_an_empty_part_in_compact_form_does_not_swallow_the_next():
    body = (
        b'--B\r\nContent-Disposition: form-data; name="c"\r\n\r\n--B\r\nContent-Disposition:'
        b' form-data; name="file"; filename="a"\r\n\r\nX\r\n--B--\r\n'
    )
    whole = same_for_every_cut(body, boundary=b"B")
    assert whole == Outcome(
        [
            TextField("c", ""),
            FileStart("file", "a", ""),
            FileData(memoryview(b"X")),
            FileEnd(last=True),
            FormEnd(),
        ],
        None,
    )
    assert outcome(body, [49], boundary=b"B") == whole


def test_cr_only_line_breaks_are_refused_at_any_split():
    body = b'--B\rContent-Disposition: form-data; name="file"; filename="a"\r\r\nDATA\r--B--\r'
    whole = same_for_every_cut(body, boundary=b"B")
    assert whole == Outcome([], ("Line breaks must be CRLF (or LF), not CR alone.", False))
    assert outcome(body, [63], boundary=b"B") == whole


@pytest.mark.parametrize("blank", [MAX_PREAMBLE_BYTES, MAX_PREAMBLE_BYTES + 1])
def test_a_blank_preamble_has_one_limit_whole_or_split(blank):
    body = (
        b"\r\n" * (blank // 2)
        + b" " * (blank % 2)
        + b"--B\r\n"
        + DISPOSITION
        + b"\r\n\r\nv\r\n--B--"
    )
    results = [
        outcome(body, cuts, boundary=b"B")
        for cuts in ([], [1], [blank - 1], [blank], [blank + 1], every_size(body, 100))
    ]
    if blank <= MAX_PREAMBLE_BYTES:
        expected = Outcome([TextField("a", "v"), FormEnd()], None)
    else:
        expected = Outcome([], ("The body does not start with the multipart boundary.", False))
    assert results == [expected] * len(results)


# -- malformed bodies -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "The body ended before the closing boundary."),
        (
            b"junk before\r\n--" + BOUNDARY + b"--\r\n",
            "The body does not start with the multipart boundary.",
        ),
        (
            b"--" + BOUNDARY + b"--\r\nand junk after",
            "Unexpected bytes after the closing boundary.",
        ),
        (b"no boundary anywhere " * 100, "The body does not start with the multipart boundary."),
        (
            b"--" + BOUNDARY + b"\r\n" + DISPOSITION + b"\r\n\r\nvalue",
            "The body ended before the closing boundary.",
        ),
        (
            b"--" + BOUNDARY + b"\r\n" + FILE_DISPOSITION + b"\r\n\r\n" + b"x" * 5000,
            "The body ended before the closing boundary.",
        ),
        (
            b"--"
            + BOUNDARY
            + b"\r\nContent-Type: text/plain\r\n\r\nvalue\r\n--"
            + BOUNDARY
            + b"--\r\n",
            "Malformed part: no 'Content-Disposition: form-data' header.",
        ),
        (
            b"--"
            + BOUNDARY
            + b'\r\nContent-Disposition: attachment; name="a"\r\n\r\nv\r\n--'
            + BOUNDARY
            + b"--",
            "Malformed part: no 'Content-Disposition: form-data' header.",
        ),
        (
            b"--" + BOUNDARY + b"\r\n\r\nvalue\r\n--" + BOUNDARY + b"--",
            "Malformed part: no 'Content-Disposition: form-data' header.",
        ),
        (
            b"--"
            + BOUNDARY
            + b"\r\nContent-Disposition: form-data\r\n\r\nv\r\n--"
            + BOUNDARY
            + b"--",
            "Malformed part: Content-Disposition has no name.",
        ),
        (
            b"--" + BOUNDARY + b"\r\nno colon here\r\n\r\nv\r\n--" + BOUNDARY + b"--",
            "Malformed part: a header line is not 'Name: value'.",
        ),
        (
            b"--" + BOUNDARY + b"\r\n" + DISPOSITION + b"\rX: y\r\n\r\nv\r\n--" + BOUNDARY + b"--",
            "Malformed part: a header line contains a stray line break.",
        ),
        (
            b"--"
            + BOUNDARY
            + b"\r\n"
            + DISPOSITION
            + b"\r\n\r\n\xff\xfe\r\n--"
            + BOUNDARY
            + b"--\r\n",
            "Text field 'a' is not UTF-8.",
        ),
        (
            b"--wrongboundary\r\n" + DISPOSITION + b"\r\n\r\nv\r\n--wrongboundary--\r\n",
            "The body does not start with the multipart boundary.",
        ),
        (
            b"--" + BOUNDARY + b"x\r\n" + DISPOSITION + b"\r\n\r\nv\r\n--" + BOUNDARY + b"--",
            "A boundary is followed by unexpected bytes.",
        ),
        (b"--" + BOUNDARY + b"-\r\n", "A boundary is followed by unexpected bytes."),
        (
            b"--" + BOUNDARY + b"\r\n" + DISPOSITION + b"\r\n\r\nv\r\n--" + BOUNDARY + b"zz--",
            "A boundary is followed by unexpected bytes.",
        ),
        (
            b"--"
            + BOUNDARY
            + b"\r\n"
            + DISPOSITION
            + b"\r\n\r\nv\r\n--"
            + BOUNDARY
            + b"\n"
            + DISPOSITION
            + b"\r\n\r\nw\r\n--"
            + BOUNDARY
            + b"--",
            "A boundary is followed by unexpected bytes.",
        ),
        (b"--" + BOUNDARY + b"-", "The body ended before the closing boundary."),
        (b"--" + BOUNDARY, "The body ended before the closing boundary."),
        (b"--" + BOUNDARY + b"\r", "The body ended before the closing boundary."),
        (
            b"--" + BOUNDARY + b"\r\n" + DISPOSITION + b"\r\n",
            "The body ended before the closing boundary.",
        ),
        (
            b"--" + BOUNDARY + b"\r\n" + DISPOSITION + b"\r\n\r\n--" + BOUNDARY[:5],
            "The body ended before the closing boundary.",
        ),
    ],
)
def test_malformed_bodies_are_refused_with_one_answer_at_every_split(body, message):
    result = same_for_every_cut(body)
    assert result.error == (message, False)


def test_a_boundary_inside_a_part_is_refused_not_taken_as_data():
    body = b"--B\r\n" + FILE_DISPOSITION + b"\r\n\r\nDATA\r\n--Bnot-a-delimiter\r\n--B--"
    assert same_for_every_cut(body, boundary=b"B") == Outcome(
        [FileStart("file", "a", ""), FileData(memoryview(b"DATA"))],
        ("A boundary is followed by unexpected bytes.", False),
    )


def test_the_closing_boundary_may_end_the_body_without_a_line_break():
    body = b"--B\r\n" + DISPOSITION + b"\r\n\r\nv\r\n--B-- \t"
    assert same_for_every_cut(body, boundary=b"B") == Outcome(
        [TextField("a", "v"), FormEnd()], None
    )


def test_feed_after_finish_is_a_programming_error():
    parser = FormDataParser(b"B")
    parser.feed(b"--B--")
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed(b"more")


# -- exact limits: on the limit is accepted, one past it is refused ----------------------------------
def _one_field_body(
    *,
    preamble: int = 0,
    padding: int = 0,
    epilogue: int = 0,
    value: bytes = b"v",
    header_pad: int = 0,
) -> bytes:
    extra = b"\r\nX-Pad: " + b"p" * header_pad if header_pad else b""
    return (
        b" " * preamble
        + b"--B"
        + b" " * padding
        + b"\r\n"
        + DISPOSITION
        + extra
        + b"\r\n\r\n"
        + value
        + b"\r\n--B--"
        + b" " * epilogue
    )


@pytest.mark.parametrize(
    "kind, cap, message",
    [
        ("preamble", MAX_PREAMBLE_BYTES, "The body does not start with the multipart boundary."),
        ("padding", MAX_PADDING_BYTES, "A boundary is followed by too much padding."),
        ("epilogue", MAX_EPILOGUE_BYTES, "Unexpected bytes after the closing boundary."),
    ],
)
def test_blank_runs_are_bounded_exactly(kind, cap, message):
    ok = _one_field_body(**{kind: cap})
    assert same_for_every_cut(ok, boundary=b"B").error is None
    refused = _one_field_body(**{kind: cap + 1})
    for cuts in ([], every_size(refused, 1), every_size(refused, 100), [len(refused) - 1]):
        assert outcome(refused, cuts, boundary=b"B").error == (message, False)


def test_part_headers_exactly_at_the_limit():
    header_block = len(DISPOSITION + b"\r\nX-Pad: \r\n\r\n")
    cap = 200
    ok = _one_field_body(header_pad=cap - header_block)
    limits = FormLimits(max_part_header_bytes=cap)
    for cuts in ([], every_size(ok, 1), every_size(ok, 64)):
        assert outcome(ok, cuts, boundary=b"B", limits=limits).error is None
    over = _one_field_body(header_pad=cap - header_block + 1)
    for cuts in ([], every_size(over, 1), every_size(over, 64)):
        assert outcome(over, cuts, boundary=b"B", limits=limits).error == (
            "Part headers are too large.",
            True,
        )


def test_endless_part_headers_fail_before_the_body_ends():
    parser = FormDataParser(BOUNDARY, FormLimits(max_part_header_bytes=8192))
    parser.feed(b"--" + BOUNDARY + b"\r\nX-Endless: ")
    parser.feed(b"a" * 8100)
    with pytest.raises(FormDataError, match="headers are too large") as caught:
        parser.feed(b"a" * 100)
    assert caught.value.limit


@pytest.mark.parametrize("size", [100, 101])
def test_a_text_field_exactly_at_the_limit(size):
    body = _one_field_body(value=b"x" * size)
    result = same_for_every_cut(body, boundary=b"B", limits=FormLimits(max_field_bytes=100))
    if size == 100:
        assert result == Outcome([TextField("a", "x" * 100), FormEnd()], None)
    else:
        assert result == Outcome([], ("Text field 'a' is too long.", True))


def test_an_oversized_field_fails_without_buffering_it_all():
    parser = FormDataParser(BOUNDARY, FormLimits(max_field_bytes=1000))
    parser.feed(b"--" + BOUNDARY + b"\r\n" + DISPOSITION + b"\r\n\r\n")
    with pytest.raises(FormDataError, match="too long"):
        parser.feed(b"x" * 2000)


@pytest.mark.parametrize("count", [2, 3])
def test_file_and_field_counts_exactly_at_the_limit(count):
    limits = FormLimits(max_files=2, max_fields=2)
    files, _ = form_body([], [("files", str(i), b"1") for i in range(count)])
    fields, _ = form_body([(f"f{i}", "1") for i in range(count)])
    file_result = outcome(files, boundary=BOUNDARY, limits=limits)
    field_result = outcome(fields, boundary=BOUNDARY, limits=limits)
    if count == 2:
        assert file_result.error is None and field_result.error is None
        assert sum(isinstance(e, FileEnd) for e in file_result.events) == 2
        assert sum(isinstance(e, TextField) for e in field_result.events) == 2
    else:
        assert file_result.error == ("Too many files.", True)
        assert field_result.error == ("Too many text fields.", True)


def test_empty_form_is_complete_with_no_parts():
    assert parse(b"--" + BOUNDARY + b"--\r\n") == [FormEnd()]


def test_file_end_marks_whether_more_parts_follow():
    body, _ = form_body([], [("file", "a", b"1"), ("file", "b", b"2")])
    assert [e for e in parse(body) if isinstance(e, FileEnd)] == [
        FileEnd(last=False),
        FileEnd(last=True),
    ]


def test_the_parser_is_complete_only_after_the_closing_boundary():
    parser = FormDataParser(b"B")
    parser.feed(b"--B\r\n" + DISPOSITION + b"\r\n\r\nv\r\n--B")
    assert not parser.complete
    parser.feed(b"--")
    assert parser.complete


@pytest.mark.parametrize(
    "content_type, boundary",
    [
        ("multipart/form-data; boundary=abc", b"abc"),
        ("Multipart/Form-Data; boundary=abc", b"abc"),
        ('multipart/form-data; boundary="with space ok"', b"with space ok"),
        ("multipart/form-data; boundary=" + "a" * 70, b"a" * 70),
        ("multipart/form-data", None),
        ("multipart/form-data; boundary=", None),
        ("multipart/form-data; boundary=" + "a" * 71, None),
        ('multipart/form-data; boundary="ends with space "', None),
        ('multipart/form-data; boundary="abc\n"', None),
        ("multipart/mixed; boundary=abc", None),
        ("application/json", None),
        (None, None),
    ],
)
def test_boundary_from_content_type(content_type, boundary):
    if boundary is not None:
        assert boundary_from_content_type(content_type) == boundary
    else:
        with pytest.raises(FormDataError):
            boundary_from_content_type(content_type)


# -- generated bodies ---------------------------------------------------------------------------------
boundaries = st.one_of(
    st.sampled_from([b"-", b"--", b"------", b"B", b"a b", BOUNDARY]),
    st.text(BCHARS, min_size=1, max_size=70).filter(lambda b: not b.endswith(" ")).map(str.encode),
)
names = st.text(st.sampled_from("abcXYZ019 ._-éü€"), max_size=8)
blanks = st.text(" \t", max_size=4).map(str.encode)
transfer_encodings = st.sampled_from([None, None, "base64", "quoted-printable", "binary"])


def _content(boundary: bytes, *, text: bool) -> st.SearchStrategy[bytes]:
    tricky = [
        b"\r",
        b"\n",
        b"\r\n",
        b"-",
        b"--",
        boundary,
        b"--" + boundary[:-1],
        b"\r\n--" + boundary[: len(boundary) // 2],
    ]
    base = st.text(max_size=12).map(str.encode) if text else st.binary(max_size=24)
    raw = st.lists(st.one_of(st.sampled_from(tricky), base), max_size=10).map(b"".join)

    def legal(content: bytes) -> bytes:  # the boundary must not occur in a part (RFC 2046)
        while b"\n--" + boundary in content:
            content = content.replace(b"\n--" + boundary, b"\n-" + boundary)
        return b"x" + content if content.startswith(b"--" + boundary) else content

    return raw.map(legal)


@st.composite
def forms(draw, *, plain: bool = False) -> Form:
    """Valid forms; ``plain``: CRLF, no padding, preamble or compact parts (any parser's subset)."""
    boundary = draw(boundaries)
    line_break = b"\r\n" if plain else draw(st.sampled_from([b"\r\n", b"\n"]))
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        is_file = draw(st.booleans())
        content = draw(_content(boundary, text=not is_file))
        transfer_encoding = None if plain else draw(transfer_encodings)
        # The boundary must not begin a line of the encoded part, its first line included (which
        # follows the headers' blank line): "--\r" quoted-printable is "--=0D", a delimiter
        # for the boundary "=" (RFC 2046 compares the boundary with the start of each line).
        on_the_wire = line_break + encoded(content, transfer_encoding, line_break)
        if line_break + b"--" + boundary in on_the_wire:
            transfer_encoding = "base64"  # its alphabet has no "-": never a delimiter
        parts.append(
            Part(
                name=draw(names),
                filename=draw(names) if is_file else None,
                content=content,
                content_type=draw(st.sampled_from([None, "image/png", "application/octet-stream"]))
                if is_file
                else None,
                compact=not plain and not content and draw(st.booleans()),
                padding=b"" if plain else draw(blanks),
                transfer_encoding=transfer_encoding,
            )
        )
    if plain:
        return Form(boundary, parts)
    return Form(
        boundary,
        parts,
        line_break=line_break,
        preamble=draw(st.text(" \t\r\n", max_size=6).map(str.encode)),
        epilogue=draw(st.text(" \t\r\n", max_size=6).map(str.encode)),
    )


def _cuts(data, body: bytes) -> list[int]:
    return data.draw(st.lists(st.integers(0, len(body)), max_size=12))


@given(forms(), st.data())
def test_valid_bodies_round_trip_byte_for_byte_however_split(form, data):
    body = render(form)
    expected = Outcome(expected_events(form), None)
    assert outcome(body, boundary=form.boundary) == expected
    cuts = _cuts(data, body)
    assert outcome(body, cuts, boundary=form.boundary) == expected
    assert outcome(body, cuts, boundary=form.boundary, as_bytearray=True) == expected


mutations = st.one_of(
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 8)),
    st.tuples(
        st.just("insert"),
        st.integers(0, 10_000),
        st.sampled_from([b"\r", b"\n", b"-", b"--", b" ", b"\r\n\r\n", b"x", b"\xff", b'"', b";"]),
    ),
    st.tuples(st.just("duplicate"), st.integers(0, 10_000), st.integers(1, 40)),
)


def _mutate(body: bytes, boundary: bytes, steps) -> bytes:
    for kind, where, arg in steps:
        at = where % (len(body) + 1)
        if kind == "delete":
            body = body[:at] + body[at + arg :]
        elif kind == "insert":
            body = body[:at] + (arg if arg != b"x" else b"\r\n--" + boundary) + body[at:]
        else:
            body = body[:at] + body[at : at + arg] + body[at:]
    return body


@given(
    forms(),
    st.lists(mutations, min_size=1, max_size=4),
    st.data(),
    st.builds(
        FormLimits,
        max_files=st.integers(0, 4),
        max_fields=st.integers(0, 4),
        max_field_bytes=st.integers(0, 40),
        max_part_header_bytes=st.integers(30, 200),
    ),
)
@example(Form(b"B", [Part("a", None, b"")]), [("insert", 0, b"\r")], None, FormLimits()).via(
    "a CR before the first boundary"
)
def test_any_body_gives_one_answer_however_split(form, steps, data, limits):
    body = _mutate(render(form), form.boundary, steps)
    whole = outcome(body, boundary=form.boundary, limits=limits)
    cuts = _cuts(data, body) if data is not None else every_size(body, 1)
    assert outcome(body, cuts, boundary=form.boundary, limits=limits) == whole
    assert outcome(body, cuts, boundary=form.boundary, limits=limits, as_bytearray=True) == whole


@given(forms(plain=True))
def test_python_multipart_reads_valid_bodies_the_same(form):
    body = render(form)
    ours = outcome(body, boundary=form.boundary)
    assert ours.error is None
    assert _parts_of(ours.events) == _python_multipart_parts(body, form.boundary)


def _parts_of(events) -> list[tuple[str, str | None, bytes]]:
    parts: list[tuple[str, str | None, bytes]] = []
    for event in events:
        if isinstance(event, TextField):
            parts.append((event.name, None, event.value.encode()))
        elif isinstance(event, FileStart):
            parts.append((event.name, event.filename, b""))
        elif isinstance(event, FileData):
            name, filename, data = parts[-1]
            parts[-1] = (name, filename, data + bytes(event.data))
    return parts


def _python_multipart_parts(body: bytes, boundary: bytes) -> list[tuple[str, str | None, bytes]]:
    from python_multipart import MultipartParser
    from werkzeug.http import parse_options_header

    parts: list[dict] = []
    header: dict[str, bytes] = {}

    def on_part_begin():
        parts.append({"headers": {}, "data": b""})

    def on_header_field(data, start, end):
        header["field"] = header.get("field", b"") + data[start:end]

    def on_header_value(data, start, end):
        header["value"] = header.get("value", b"") + data[start:end]

    def on_header_end():
        parts[-1]["headers"][header["field"].decode().lower()] = header.get("value", b"").decode()
        header.clear()

    def on_part_data(data, start, end):
        parts[-1]["data"] += data[start:end]

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
    )
    parser.write(body)
    parser.finalize()
    result = []
    for part in parts:
        _, params = parse_options_header(part["headers"]["content-disposition"])
        result.append((params["name"], params.get("filename"), part["data"]))
    return result


# -- mutation-testing gaps: messages, exact windows and limits ---------------------------------------
@pytest.mark.parametrize(
    "content_type, message",
    [
        (None, "Content-Type must be multipart/form-data."),
        ("text/plain; boundary=abc", "Content-Type must be multipart/form-data."),
        ("multipart/form-data", "The multipart/form-data Content-Type has no boundary."),
        (
            'multipart/form-data; boundary=""',
            "The multipart/form-data Content-Type has no boundary.",
        ),
        ('multipart/form-data; boundary="a{b"', "The multipart boundary is not valid (RFC 2046)."),
    ],
)
def test_content_type_refusals_say_why(content_type, message):
    with pytest.raises(FormDataError) as caught:
        boundary_from_content_type(content_type)
    assert str(caught.value) == message and caught.value.limit is False


def test_an_error_outside_a_parse_carries_no_events():
    with pytest.raises(FormDataError) as caught:
        boundary_from_content_type("text/plain")
    assert caught.value.events == [] and caught.value.limit is False


def test_a_fresh_parser_is_not_complete_and_an_empty_body_ends_early():
    parser = FormDataParser(b"B")
    assert parser.complete is False
    with pytest.raises(FormDataError) as caught:
        parser.finish()  # nothing was fed at all
    assert str(caught.value) == "The body ended before the closing boundary."


def test_feed_after_finish_says_so():
    parser = FormDataParser(b"B")
    parser.feed(b"--B--")
    parser.finish()
    with pytest.raises(RuntimeError, match=r"^feed\(\) after finish\(\)$"):
        parser.feed(b"")


@pytest.mark.parametrize("line_break", [b"\r\n", b"\n"])
def test_a_body_that_ends_right_after_part_headers_ended_early(line_break):
    body = b"--B" + line_break + DISPOSITION + line_break + line_break
    assert same_for_every_cut(body, boundary=b"B") == Outcome(
        [], ("The body ended before the closing boundary.", False)
    )


def test_unterminated_part_headers_wait_until_one_byte_past_the_limit():
    """Header bytes exactly at the limit may still end (the body ended early, 400); one more
    without the blank line is over the limit (413), however the body is split."""
    limits = FormLimits(max_part_header_bytes=100)
    at_limit = b"--B\r\nX-A: " + b"a" * 95
    over = at_limit + b"a"
    for cuts in ([], every_size(at_limit, 1), every_size(at_limit, 7)):
        assert outcome(at_limit, cuts, boundary=b"B", limits=limits).error == (
            "The body ended before the closing boundary.",
            False,
        )
    for cuts in ([], every_size(over, 1), every_size(over, 7)):
        assert outcome(over, cuts, boundary=b"B", limits=limits).error == (
            "Part headers are too large.",
            True,
        )


def test_endless_part_headers_have_the_exact_limit_message():
    parser = FormDataParser(BOUNDARY, FormLimits(max_part_header_bytes=50))
    with pytest.raises(FormDataError) as caught:
        parser.feed(b"--" + BOUNDARY + b"\r\nX-Endless: " + b"a" * 100)
    assert (str(caught.value), caught.value.limit) == ("Part headers are too large.", True)


@pytest.mark.parametrize("blank", [b"\x0b", b"\x0c", b"\x00"])
def test_only_spaces_tabs_and_line_breaks_may_follow_the_closing_boundary(blank):
    body = b"--B\r\n" + DISPOSITION + b"\r\n\r\nv\r\n--B--\r\n" + blank
    assert same_for_every_cut(body, boundary=b"B") == Outcome(
        [TextField("a", "v"), FormEnd()], ("Unexpected bytes after the closing boundary.", False)
    )


@pytest.mark.parametrize(
    "headers, message",
    [
        (b" folded: first line", "Malformed part: a header line is not 'Name: value'."),
        (b"Bad Name: x", "Malformed part: a header line is not 'Name: value'."),
        (b"NoColonHere", "Malformed part: a header line is not 'Name: value'."),
        (b": no name", "Malformed part: a header line is not 'Name: value'."),
        (DISPOSITION + b"\nX: y", "Malformed part: a header line contains a stray line break."),
    ],
)
def test_malformed_header_lines_are_refused(headers, message):
    body = b"--B\r\n" + headers + b"\r\n" + DISPOSITION + b"\r\n\r\nv\r\n--B--"
    assert same_for_every_cut(body, boundary=b"B") == Outcome([], (message, False))


def test_a_tab_folded_header_line_joins_the_previous_one():
    body = (
        b'--B\r\nContent-Disposition: form-data;\r\n\tname="file"; filename="a.png"\r\n'
        b"\r\nX\r\n--B--"
    )
    assert parse(body, boundary=b"B") == [
        FileStart("file", "a.png", ""),
        FileData(memoryview(b"X")),
        FileEnd(last=True),
        FormEnd(),
    ]


def test_header_values_lose_only_spaces_and_tabs_around_them():
    body = b"--B\r\n" + FILE_DISPOSITION + b"\r\nContent-Type: \t X-a/bX\x0b \t\r\n\r\nX\r\n--B--"
    [start, *_] = parse(body, boundary=b"B")
    assert start == FileStart("file", "a", "X-a/bX\x0b")


@pytest.mark.parametrize(
    "data", [b"-", b"--", b"-B", b"\r", b"\r\n", b"\r\n-", b"-\r\n--", b"\r\r\n-", b"B--"]
)
def test_part_data_that_starts_like_a_delimiter_is_kept_however_split(data):
    """Data right after the part headers (or ending a read) that could begin a delimiter is
    held back, never re-emitted nor dropped: one cut anywhere, or reads of 1 to 4 bytes.
    (``--B`` right after the blank line is the compact form of an empty part, not data.)"""
    body = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
        + data
        + b"\r\n--B--\r\n"
    )
    whole = same_for_every_cut(body, boundary=b"B")
    assert _parts_of(whole.events) == [("file", "a", data)]
    for size in range(1, 5):
        assert _parts_of(parse(body, size, boundary=b"B")) == [("file", "a", data)]


def test_the_preamble_and_the_epilogue_each_have_their_own_limit():
    """1,000 blank bytes before the first boundary and 1,000 after the closing one: both fit."""
    body = (
        b" " * 1000
        + b'\r\n--B\r\nContent-Disposition: form-data; name="c"\r\n\r\nv\r\n--B--\r\n'
        + b" " * 1000
    )
    whole = same_for_every_cut(body, boundary=b"B")
    assert whole == Outcome([TextField("c", "v"), FormEnd()], None)


# -- legacy forms: how old browsers and form libraries name files --------------------------------------
def _file_part(disposition: bytes, *, headers: bytes = b"", data: bytes = b"X") -> bytes:
    return (
        b'--B\r\nContent-Disposition: form-data; name="file"; '
        + disposition
        + b"\r\n"
        + headers
        + b"\r\n"
        + data
        + b"\r\n--B--\r\n"
    )


@pytest.mark.parametrize(
    "disposition, filename",
    [
        # Old IE-mode forms send the whole path with raw backslashes: they stay path separators.
        (rb'filename="C:\Users\me\cat.png"', "C:\\Users\\me\\cat.png"),
        (rb'filename="\\server\share\cat.png"', "\\server\\share\\cat.png"),
        # Before a quote (curl --form-escape, RFC 2616 quoted-pair) a backslash escapes it...
        (rb'filename="a\"b.png"', 'a"b.png'),
        # ...and doubled it is one backslash: still a separator for the display name.
        (rb'filename="C:\\Users\\me\\cat.png"', "C:\\Users\\me\\cat.png"),
        (b'filename="a;b.png"', "a;b.png"),
        # WHATWG's escapes of a quote, CR and LF are read back; nothing else is percent-decoded
        (b'filename="quo%22te.png"', 'quo"te.png'),
        (b'filename="a%0D%0Ab%0d%41.png"', "a\r\nb%0d%41.png"),
        (b"filename=plain.png", "plain.png"),
        # RFC 5987 filename* wins over filename, before or after it
        (b"filename=\"euro.png\"; filename*=UTF-8''%E2%82%AC.png", "\u20ac.png"),
        (b"filename*=UTF-8''%E2%82%AC.png; filename=\"euro.png\"", "\u20ac.png"),
        (b"filename*=utf-8'en'caf%C3%A9.png", "caf\u00e9.png"),
        (b"filename*=ISO-8859-1''%E9t%E9.png", "\u00e9t\u00e9.png"),
        (b"filename*=iso-8859-1'fr'%E9t%E9.png; filename=\"ete.png\"", "\u00e9t\u00e9.png"),
        (b"filename*0*=UTF-8''%E2%82; filename*1*=%AC.png", "\u20ac.png"),  # RFC 2231 pieces
        # a filename* that cannot be read is ignored: filename counts, or the name is empty
        (b"filename*=UTF-8''%FF.png; filename=\"fallback.png\"", "fallback.png"),
        (b"filename*=KOI8-R''%E9.png; filename=\"fallback.png\"", "fallback.png"),
        (b'filename*=%E9.png; filename="fallback.png"', "fallback.png"),
        (b"filename*=UTF-8''%FF.png", ""),
        (b"filename*=UTF-8''; filename=\"fallback.png\"", "fallback.png"),  # an empty one
        (b'filename="first.png"; filename="second.png"', "first.png"),
    ],
)
def test_filenames_as_legacy_forms_send_them(disposition, filename):
    whole = same_for_every_cut(_file_part(disposition), boundary=b"B")
    assert whole == Outcome(
        [
            FileStart("file", filename, ""),
            FileData(memoryview(b"X")),
            FileEnd(last=True),
            FormEnd(),
        ],
        None,
    )


def test_a_field_name_may_come_as_an_rfc_2231_name_too():
    body = b"--B\r\nContent-Disposition: form-data; name*=UTF-8''caf%C3%A9\r\n\r\nv\r\n--B--"
    assert parse(body, boundary=b"B") == [TextField("caf\u00e9", "v"), FormEnd()]


# -- Content-Transfer-Encoding -----------------------------------------------------------------------
PAYLOAD = bytes(range(256)) * 3 + b"\r\n--B\r\n=\r\n" + png_bytes(300)


@pytest.mark.parametrize(
    "encoding, data, expected",
    [
        ("base64", encoded(PAYLOAD, "base64"), PAYLOAD),
        ("BASE64", encoded(PAYLOAD, "base64", b"\n"), PAYLOAD),
        (" base64 ", encoded(PAYLOAD, "base64").replace(b"\r\n", b" \t\r\n "), PAYLOAD),
        ("base64", encoded(PAYLOAD, "base64").replace(b"\r\n", b""), PAYLOAD),  # one long line
        ("quoted-printable", encoded(PAYLOAD, "quoted-printable"), PAYLOAD),
        (
            "Quoted-Printable",
            encoded(PAYLOAD, "quoted-printable").replace(b"=\n", b"=\r\n"),
            PAYLOAD,
        ),
        ("quoted-printable", b"=c3=a9=\r\nx=", "\u00e9x".encode()),
    ],
)
def test_encoded_parts_are_decoded_at_every_split(encoding, data, expected):
    body = _file_part(
        b'filename="a.bin"',
        headers=f"Content-Transfer-Encoding: {encoding}\r\n".encode(),
        data=data,
    )
    whole = same_for_every_cut(body, boundary=b"B")
    assert whole == Outcome(
        [
            FileStart("file", "a.bin", ""),
            FileData(memoryview(expected)),
            FileEnd(last=True),
            FormEnd(),
        ],
        None,
    )
    for size in (1, 2, 3, 5, 7):
        assert parse(body, size, boundary=b"B") == whole.events


@pytest.mark.parametrize("encoding", ["7bit", "8bit", "binary", "BINARY"])
def test_identity_transfer_encodings_pass_the_bytes_through(encoding):
    data = b"QUJD=41\r\n-"  # would change if it were decoded
    body = _file_part(
        b'filename="a"', headers=f"Content-Transfer-Encoding: {encoding}\r\n".encode(), data=data
    )
    assert _parts_of(same_for_every_cut(body, boundary=b"B").events) == [("file", "a", data)]


def test_an_encoded_text_field_is_decoded_and_its_limit_counts_decoded_bytes():
    body = (
        b'--B\r\nContent-Disposition: form-data; name="caption"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nY2Fmw6k=\r\n--B--"
    )
    assert same_for_every_cut(body, boundary=b"B") == Outcome(
        [TextField("caption", "caf\u00e9"), FormEnd()], None
    )
    # "café" is 5 bytes decoded (8 encoded): exactly at a 5-byte limit, and one over a 4-byte one
    assert outcome(body, boundary=b"B", limits=FormLimits(max_field_bytes=5)).error is None
    assert outcome(body, boundary=b"B", limits=FormLimits(max_field_bytes=4)).error == (
        "Text field 'caption' is too long.",
        True,
    )


@pytest.mark.parametrize("encoding", ["x-uuencode", "gzip", "base-64", "", "quoted-printable2"])
def test_other_transfer_encodings_are_refused_as_unsupported(encoding):
    body = _file_part(
        b'filename="a"', headers=f"Content-Transfer-Encoding: {encoding}\r\n".encode()
    )
    message = (
        f"Content-Transfer-Encoding {encoding!r} is not supported "
        "(base64, quoted-printable, 7bit, 8bit, binary)."
    )
    assert same_for_every_cut(body, boundary=b"B") == Outcome([], (message, False))
    parser = FormDataParser(b"B")
    with pytest.raises(FormDataError) as caught:
        parser.feed(body)
    assert caught.value.unsupported_encoding is True and caught.value.limit is False


BAD_BASE64 = "A base64 part is not valid base64 (RFC 2045)."
BAD_QP = "A quoted-printable part is not valid quoted-printable (RFC 2045)."


@pytest.mark.parametrize(
    "encoding, data, decoded, message",
    [
        ("base64", b"QUJDRA!=", b"ABC", BAD_BASE64),  # a byte outside the alphabet
        ("base64", b"QUJD!QUJD", b"ABC", BAD_BASE64),  # ... after whole quanta
        ("base64", b"QUJDRA=!=", b"ABC", BAD_BASE64),  # ... inside the padding
        ("base64", b"QUJD\r\nRE-F", b"ABC", BAD_BASE64),
        ("base64", b"QUJDRA", b"ABC", BAD_BASE64),  # the part ends inside a quantum
        ("base64", b"QUJDRA=", b"ABC", BAD_BASE64),  # padding cut short
        ("base64", b"QUJDRA==QUJD", b"ABCD", BAD_BASE64),  # data after the padding
        ("base64", b"QUJDRA==\r\n\r\nQQ==", b"ABCD", BAD_BASE64),
        ("base64", b"QUJDR=E=", b"ABC", BAD_BASE64),  # padding inside a quantum
        ("base64", b"QUJDQ===", b"ABC", BAD_BASE64),
        ("base64", b"====", b"", BAD_BASE64),
        ("quoted-printable", b"ab=ZZcd", b"ab", BAD_QP),
        ("quoted-printable", b"ab=4", b"ab", BAD_QP),  # the part ends inside an escape
        ("quoted-printable", b"ab=\rcd", b"ab", BAD_QP),  # "=" CR not followed by LF
        ("quoted-printable", b"ab=\r", b"ab", BAD_QP),
        ("quoted-printable", b"ab=41==42", b"abA", BAD_QP),
        ("quoted-printable", b"ab= \r\ncd", b"ab", BAD_QP),
    ],
)
def test_invalid_encoded_data_is_refused_with_one_answer_at_every_split(
    encoding, data, decoded, message
):
    """What was decoded before the first invalid unit, then the error: the same however split."""
    body = _file_part(
        b'filename="a"', headers=f"Content-Transfer-Encoding: {encoding}\r\n".encode(), data=data
    )
    expected = [FileStart("file", "a", "")] + ([FileData(memoryview(decoded))] if decoded else [])
    assert same_for_every_cut(body, boundary=b"B") == Outcome(expected, (message, False))
    for size in (1, 2, 3):
        assert outcome(body, every_size(body, size), boundary=b"B") == Outcome(
            expected, (message, False)
        )


@pytest.mark.parametrize(
    "data, decoded",
    [
        (b"QUJD", b"ABC"),
        (b"QUI=", b"AB"),
        (b"QQ==", b"A"),
        (b"QQ==\r\n \t", b"A"),  # only blanks may follow the padding
        (b"", b""),
        (b"\r\n", b""),
    ],
)
def test_base64_padding_and_blanks(data, decoded):
    body = _file_part(b'filename="a"', headers=b"Content-Transfer-Encoding: base64\r\n", data=data)
    assert _parts_of(same_for_every_cut(body, boundary=b"B").events) == [("file", "a", decoded)]


@pytest.mark.parametrize(
    "data, decoded",
    [
        (b"a=3D=3d", b"a=="),  # hex in either case
        (b"soft=\r\nbreak", b"softbreak"),
        (b"soft=\nbreak", b"softbreak"),  # LF-only soft break
        (b"ends without a line break=", b"ends without a line break"),
        (b"trailing  \r\nspace", b"trailing  \r\nspace"),  # kept as sent
        (b"=00=FF", b"\x00\xff"),
    ],
)
def test_quoted_printable_escapes_and_soft_breaks(data, decoded):
    body = _file_part(
        b'filename="a"', headers=b"Content-Transfer-Encoding: quoted-printable\r\n", data=data
    )
    assert _parts_of(same_for_every_cut(body, boundary=b"B").events) == [("file", "a", decoded)]


@pytest.mark.parametrize(
    "disposition",
    [b'filename="open.png', b'filename="a\\"b.png', b'filename="a.png"; x="', b'filename="a\\\\"'],
)
def test_a_quoted_string_that_does_not_end_is_refused(disposition):
    assert same_for_every_cut(_file_part(disposition), boundary=b"B") == Outcome(
        [], ("Malformed part: a quoted string in Content-Disposition does not end.", False)
    )


def test_quoted_semicolons_and_many_parameters_are_read_in_one_pass():
    """Semicolons inside quotes are name, not separators (email.message's own splitter recounts
    every quote at each one: quadratic; this header took 40 ms there, 2 ms here)."""
    name = ";" * 8000 + ".png"
    body = _file_part(b'filename="' + name.encode() + b'"; ' + b"; ".join([b"x=1"] * 20))
    limits = FormLimits(max_part_header_bytes=9000)
    assert outcome(body, boundary=b"B", limits=limits).events[0] == FileStart("file", name, "")
