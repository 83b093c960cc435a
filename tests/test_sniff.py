"""gateway.sniff: the type is what the first bytes say; allow-list patterns match exactly."""

from __future__ import annotations

import filetype.utils
import pytest

from gateway.sniff import SNIFF_BYTES, SniffedType, is_allowed, sniff

from support import jpeg_bytes, mp4_bytes, png_bytes


def test_the_sniff_window_is_the_one_filetype_reads():
    # A shorter window would miss signatures filetype finds further in; a longer one only
    # delays opening the writer.
    assert SNIFF_BYTES == filetype.utils._NUM_SIGNATURE_BYTES == 8192


@pytest.mark.parametrize(
    "head, mime, extension, file_type",
    [
        (png_bytes(100), "image/png", ".png", "image"),
        (jpeg_bytes(100), "image/jpeg", ".jpg", "image"),
        (mp4_bytes(100), "video/mp4", ".mp4", "video"),
        (b"%PDF-1.7\n" + b"x" * 100, "application/pdf", ".pdf", "other"),
    ],
)
def test_sniff_names_mime_extension_and_file_type(head, mime, extension, file_type):
    sniffed = sniff(head)
    assert sniffed == SniffedType(mime=mime, extension=extension)
    assert sniffed.file_type == file_type


@pytest.mark.parametrize("head", [b"", b"plain text", b"\0" * 100])
def test_unrecognized_bytes_sniff_to_none(head):
    assert sniff(head) is None


@pytest.mark.parametrize(
    "mime, file_type",
    [
        ("image/png", "image"),
        ("video/webm", "video"),
        ("audio/mpeg", "other"),
        ("application/x-image", "other"),
        ("image", "image"),
        ("video/x/image", "video"),  # the major type is what precedes the first slash
        ("imagex/png", "other"),
    ],
)
def test_file_type_is_the_major_type_of_images_and_videos_only(mime, file_type):
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
