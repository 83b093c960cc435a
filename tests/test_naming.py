"""gateway.media.naming: project ids, object keys and the media id they carry, display names,
Content-Disposition. Pure functions: exact inputs, exact outputs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import errors
from gateway.media.naming import (
    IDENTIFIER_RE,
    MEDIA_ID_RE,
    check_project_id,
    content_disposition,
    display_name,
    new_media_id,
)
from gateway.storage.keys import media_id_of_key, object_key, parse_key

MEDIA_ID = "0123456789abcdef0123456789abcdef"


# -- project ids ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["p", "P1", "9", "a.b_c-d", "x" * 64, "a-", "a.", "a_"])
def test_a_valid_project_id_is_returned_unchanged(value):
    assert check_project_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a/b",  # no ".." but not an identifier: the regex alone refuses it
        "-x",
        ".x",
        "_x",
        "x" * 65,
        "a b",
        "p1\n",
        "\np1",
        "a..b",  # an identifier, refused only for its ".."
        "..",
        "é",
    ],
)
def test_an_invalid_project_id_is_refused_with_the_documented_message(value):
    with pytest.raises(errors.InvalidProjectId) as caught:
        check_project_id(value)
    assert caught.value.message == "projectId must be 1-64 letters, digits, '.', '_' or '-'."
    assert (caught.value.status, caught.value.code) == (400, "invalid_project_id")


def test_identifiers_allow_64_characters_after_the_first_alphanumeric():
    assert IDENTIFIER_RE.fullmatch("a" + "b" * 63)
    assert not IDENTIFIER_RE.fullmatch("a" + "b" * 64)


# -- object keys ---------------------------------------------------------------------------------
def test_object_key_without_a_tenant():
    key = object_key(tenant="", project_id="p1", media_id=MEDIA_ID, extension=".png")
    assert key == f"projects/p1/media/{MEDIA_ID}.png"


def test_object_key_with_a_tenant_is_prefixed_by_it():
    key = object_key(tenant="acme", project_id="p1", media_id=MEDIA_ID, extension=".mp4")
    assert key == f"acme/projects/p1/media/{MEDIA_ID}.mp4"


def test_new_media_ids_are_32_lowercase_hex_and_unique():
    ids = {new_media_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(MEDIA_ID_RE.fullmatch(media_id) for media_id in ids)


@pytest.mark.parametrize(
    "key, media_id",
    [
        (f"projects/p1/media/{MEDIA_ID}.png", MEDIA_ID),
        (f"projects/p1/media/{MEDIA_ID}", MEDIA_ID),
        (f"acme/projects/p1/media/{MEDIA_ID}.jpg", MEDIA_ID),
        (f"uploads/acme/projects/p.1/media/{MEDIA_ID}.MP4", MEDIA_ID),
        (f"xprojects/p1/media/{MEDIA_ID}.png", None),  # "projects" must start a segment
        (f"projects/p1/media/{MEDIA_ID}/thumb-320.webp", MEDIA_ID),  # a derived file
        (f"acme/projects/p1/media/{MEDIA_ID}/{'a' * 32}.webp", MEDIA_ID),
        (f"projects/p1/media/{MEDIA_ID}/{'a' * 33}.webp", None),
        (f"projects/p1/media/{MEDIA_ID}/.webp", None),
        (f"projects/p1/media/{MEDIA_ID}/Thumb.webp", None),
        (f"projects/p1/media/{MEDIA_ID}/thumb_1.webp", None),
        # an audio file's variants: peaks.json, waveform.png, opus.ogg
        (f"projects/p1/media/{MEDIA_ID}/peaks.json", MEDIA_ID),
        (f"projects/p1/media/{MEDIA_ID}/waveform.png", MEDIA_ID),
        (f"projects/p1/media/{MEDIA_ID}/opus.ogg", MEDIA_ID),
        (f"projects/p1/media/{MEDIA_ID}/thumb.gif", None),
        (f"projects/p1/media/{MEDIA_ID}/opus.opus", None),
        (f"projects/p1/media/{MEDIA_ID}/thumb.webp.png", None),
        (f"projects/p1/media/{MEDIA_ID}/peaks.json.exe", None),
        (f"projects/p1/media/{MEDIA_ID}.png/thumb.webp", None),
        (f"projects/p1/media/{MEDIA_ID}.png.exe", None),
        (f"projects/p1/media/{MEDIA_ID}.png/more", None),
        (f"projects/p1/media/{MEDIA_ID}.png.upload", None),
        (f"projects/p1/media/{MEDIA_ID}.p-g", None),
        (f"projects/p1/media/{MEDIA_ID}.", None),
        (f"projects/p1/media/{MEDIA_ID}0", None),  # 33 hex digits
        (f"projects/p1/media/{MEDIA_ID[:-1]}.png", None),  # 31
        (f"projects/p1/media/{MEDIA_ID.upper()}.png", None),
        (f"projects//media/{MEDIA_ID}.png", None),
        (f"projects/a/b/media/{MEDIA_ID}.png", None),
        ("projects/p1/media/not-a-media-id.png", None),
        ("other/thing.txt", None),
        ("", None),
    ],
)
def test_media_id_of_key_accepts_only_whole_gateway_keys(key, media_id):
    assert media_id_of_key(key) == media_id


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        (f"projects/p1/media/{MEDIA_ID}.png", (MEDIA_ID, False)),
        (f"projects/p1/media/{MEDIA_ID}.png.upload", (MEDIA_ID, True)),  # a direct upload's staging
        ("projects/p1/media/not-a-media-id.png.upload", (None, False)),
        ("other/thing.txt.upload", (None, False)),
        ("other/thing.txt", (None, False)),
    ],
)
def test_parse_key_tells_a_staging_key_only_of_a_gateway_key(key, parsed):
    assert parse_key(key) == parsed


def test_media_id_of_key_reads_what_object_key_writes():
    for tenant in ("", "t9"):
        key = object_key(tenant=tenant, project_id="p-1", media_id=MEDIA_ID, extension=".webm")
        assert media_id_of_key(key) == MEDIA_ID


# -- display names -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "filename, shown",
    [
        ("photo.png", "photo.png"),
        ("dir/sub/photo.png", "photo.png"),
        ("C:\\Users\\x\\photo.png", "photo.png"),  # a backslash separates like a slash
        ("a\\b/c\\d.png", "d.png"),
        ("e\u0301t\u00e9.png", "\u00e9t\u00e9.png"),  # NFC: one code point per letter
        ("x\u202egnp.exe", "x_gnp.exe"),  # Cf: a bidi override
        ("a\u0085b.png", "a_b.png"),  # Cc: a C1 control
        ("a\x00b.png", "a_b.png"),
        ("a\tb.png", "a_b.png"),
        ('a"b.png', "a_b.png"),
        ("a:b*c?d<e>f|g.png", "a_b_c_d_e_f_g.png"),
        ('a:*?"<>|b.png', "a_b.png"),  # a run of unsafe characters is one "_"
        ("a\x7fb.png", "a_b.png"),
        ("a\ud800b.png", "a_b.png"),  # Cs: a lone surrogate cannot even be encoded
        ("X.pngX", "X.pngX"),  # only spaces, dots and underscores are trimmed
        ("  ._photo.png._  ", "photo.png"),
        ("a b.png", "a b.png"),
        ("", "unnamed"),
        ("...", "unnamed"),
        ("dir/", "unnamed"),
        ("\u202e", "unnamed"),
        # a stem with nothing safe keeps its extension (letters and digits, up to 16)
        ("???.png", "unnamed.png"),
        (".png", "unnamed.png"),
        ('<>:"|.JPG', "unnamed.JPG"),
        ("\u202e.png", "unnamed.png"),
        ("C:\\Users\\me\\???.png", "unnamed.png"),
        ("???.p?g", "p_g"),  # not an extension: the name is what is left
        ("???." + "e" * 17, "e" * 17),
        ("???.tar.gz", "tar.gz"),
        ("png", "png"),
    ],
)
def test_display_name(filename, shown):
    assert display_name(filename, max_chars=255) == shown


def test_a_long_name_keeps_its_extension_and_the_limit_exactly():
    assert display_name("a" * 20 + ".png", max_chars=10) == "aaaaaa.png"
    assert display_name("a" * 6 + ".png", max_chars=10) == "aaaaaa.png"  # at the limit: as is
    assert display_name("a" * 7 + ".png", max_chars=10) == "aaaaaa.png"  # one over
    assert display_name("ab.cd.png", max_chars=8) == "ab.c.png"  # the last dot is the extension
    assert display_name("a" * 20 + ".c", max_chars=10) == "aaaaaaaa.c"  # a 1-character one too


def test_a_long_name_keeps_an_extension_of_up_to_16_characters():
    ext16, ext17 = "e" * 16, "e" * 17
    assert display_name("a" * 30 + "." + ext16, max_chars=20) == "aaa." + ext16
    assert display_name("a" * 30 + "." + ext17, max_chars=20) == "a" * 20  # cut like no extension


def test_a_long_name_without_an_extension_is_cut_at_the_limit():
    assert display_name("a" * 300, max_chars=255) == "a" * 255
    assert display_name("a" * 255, max_chars=255) == "a" * 255
    assert display_name("abcdefghij", max_chars=4) == "abcd"


def test_an_unnamed_stem_with_an_extension_is_cut_to_the_limit_too():
    assert display_name("???.png", max_chars=11) == "unnamed.png"
    assert display_name("???.png", max_chars=10) == "unname.png"


def test_a_cut_never_ends_a_name_in_a_blank_dot_or_underscore():
    assert display_name("0000000_0", max_chars=8) == "0000000"
    assert display_name("ab. cd.png", max_chars=7) == "ab.png"
    assert display_name("abc." + "e" * 16, max_chars=10) == "abc.eeeeee"  # no room for the stem
    assert display_name("", max_chars=3) == "unn"


def test_the_limit_counts_characters_not_bytes():
    assert display_name("é" * 300 + ".png", max_chars=255) == "é" * 251 + ".png"


# -- Content-Disposition -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, header",
    [
        ("photo.png", "inline; filename=\"photo.png\"; filename*=UTF-8''photo.png"),
        ("a b.png", "inline; filename=\"a b.png\"; filename*=UTF-8''a%20b.png"),
        ("café.png", "inline; filename=\"caf_.png\"; filename*=UTF-8''caf%C3%A9.png"),
        ("€", "inline; filename=\"_\"; filename*=UTF-8''%E2%82%AC"),
        ('say "hi".png', "inline; filename=\"say _hi_.png\"; filename*=UTF-8''say%20%22hi%22.png"),
        ("a?b;c=d", "inline; filename=\"a_b;c=d\"; filename*=UTF-8''a%3Fb%3Bc%3Dd"),
        ("x/y", "inline; filename=\"x/y\"; filename*=UTF-8''x%2Fy"),  # quote(safe="")
    ],
)
def test_content_disposition_has_an_ascii_fallback_and_the_exact_name(name, header):
    assert content_disposition(name) == header


@given(st.text(), st.integers(1, 300))
def test_any_name_becomes_a_short_safe_nonempty_name(filename, max_chars):
    import unicodedata

    shown = display_name(filename, max_chars=max_chars)
    assert 0 < len(shown) <= max_chars
    assert not set(shown) & set('"\\/:*?<>|')
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in shown)
    assert shown == shown.strip(" ._")  # also where the limit cut it
    # the last path segment is all that counts
    assert display_name(
        "C:\\dir\\" + filename.replace("/", "").replace("\\", ""), max_chars=max_chars
    ) == display_name(filename.replace("/", "").replace("\\", ""), max_chars=max_chars)
