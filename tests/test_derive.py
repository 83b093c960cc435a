"""Describe and derive on real media, and the sandbox that runs them."""

from __future__ import annotations

import io
import os
import time

import media_samples as samples
import pytest
from PIL import Image

from gateway.processing.derive import DeriveOptions, Undecodable, derive, strip_jpeg_gps
from gateway.processing.sandbox import SandboxError, run

OPTIONS = DeriveOptions(thumbnail_sizes=(320, 1280), max_pixels=50_000_000, strip_gps=True)


def write(tmp_path, data: bytes, name: str = "f"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def decode(variant) -> Image.Image:
    image = Image.open(io.BytesIO(variant.data))
    image.load()
    return image


def test_a_photo_is_described_and_its_thumbnails_are_upright_webp_without_gps(tmp_path):
    derived = derive(
        write(tmp_path, samples.photo(1600, 1200, orientation=6)), "image/jpeg", OPTIONS
    )
    assert derived.properties == {
        "width": 1200,
        "height": 1600,
        "format": "JPEG",
        "orientation": 6,
        "gpsFound": True,
        "gpsRemoved": True,
        "cameraMake": "Acme",
        "cameraModel": "Cam 1",
        "takenAt": "2026:01:02 03:04:05",
    }
    assert [v.name for v in derived.variants] == ["thumb-320", "thumb-1280"]
    for variant, size in zip(derived.variants, (320, 1280), strict=True):
        image = decode(variant)
        assert image.format == "WEBP" and variant.content_type == "image/webp"
        assert (
            (image.width, image.height) == (variant.width, variant.height) == (size * 3 // 4, size)
        )
        assert not image.getexif() and "xmp" not in image.info and "exif" not in image.info
        # Rotated 90 degrees clockwise: the red left half is now on top.
        top, bottom = (
            image.getpixel((image.width // 2, 5)),
            image.getpixel((image.width // 2, image.height - 5)),
        )
        assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]


def test_the_original_loses_its_gps_and_nothing_else(tmp_path):
    original = samples.photo(800, 600, xmp=True)
    cleaned = strip_jpeg_gps(original)
    before, after = Image.open(io.BytesIO(original)), Image.open(io.BytesIO(cleaned))
    assert before.getexif().get_ifd(0x8825) == samples.GPS and b"GPSLatitude" in before.info["xmp"]
    assert after.getexif().get_ifd(0x8825) == {} and "xmp" not in after.info
    assert after.getexif()[0x010F] == "Acme"
    assert after.getexif().get_ifd(0x8769)[0x9003] == "2026:01:02 03:04:05"
    assert after.tobytes() == before.tobytes()  # the pixels, losslessly
    assert original.split(b"\xff\xda", 1)[1] == cleaned.split(b"\xff\xda", 1)[1]


def test_gps_in_xmp_only_is_found(tmp_path):
    derived = derive(
        write(tmp_path, samples.photo(400, 300, gps=False, xmp=True)), "image/jpeg", OPTIONS
    )
    assert derived.properties["gpsFound"] is True and derived.cleaned_original is not None


def test_without_gps_the_original_is_left_alone(tmp_path):
    derived = derive(write(tmp_path, samples.photo(400, 300, gps=False)), "image/jpeg", OPTIONS)
    assert derived.properties["gpsFound"] is False and derived.properties["gpsRemoved"] is False
    assert derived.cleaned_original is None


def test_the_gps_of_the_original_is_kept_unless_asked(tmp_path):
    options = DeriveOptions(strip_gps=False)
    derived = derive(write(tmp_path, samples.photo(400, 300)), "image/jpeg", options)
    assert derived.properties["gpsFound"] is True and derived.properties["gpsRemoved"] is False
    assert derived.cleaned_original is None


def test_a_transparent_png_keeps_its_alpha(tmp_path):
    derived = derive(write(tmp_path, samples.png(300, 200)), "image/png", OPTIONS)
    assert derived.properties["format"] == "PNG" and derived.properties["gpsFound"] is False
    thumb = decode(derived.variants[0])
    assert thumb.mode == "RGBA" and (thumb.width, thumb.height) == (300, 200)  # never enlarged


def test_a_decompression_bomb_is_refused(tmp_path):
    with pytest.raises(Undecodable, match="larger than 50000000 pixels"):
        derive(write(tmp_path, samples.bomb()), "image/png", OPTIONS)


def test_a_corrupt_image_is_undecodable(tmp_path):
    data = samples.photo(400, 300)
    with pytest.raises(Undecodable):
        derive(write(tmp_path, data[:200]), "image/jpeg", OPTIONS)


def test_a_video_gets_a_poster_and_its_properties(tmp_path):
    derived = derive(write(tmp_path, samples.mp4(3, 320, 240), "v.mp4"), "video/mp4", OPTIONS)
    props = derived.properties
    assert (props["width"], props["height"], props["codec"]) == (320, 240, "mpeg4")
    assert props["duration"] == pytest.approx(3.0, abs=0.2)
    [poster] = derived.variants
    image = decode(poster)
    assert poster.name == "poster" and image.format == "WEBP"
    assert (image.width, image.height) == (320, 240)


def test_a_pdf_gets_a_preview_of_its_first_page_and_its_page_count(tmp_path):
    derived = derive(write(tmp_path, samples.pdf(3), "d.pdf"), "application/pdf", OPTIONS)
    assert derived.properties["pageCount"] == 3
    [preview] = derived.variants
    image = decode(preview)
    assert preview.name == "preview" and max(image.size) == 1280


def test_an_unknown_type_is_only_described_by_its_format(tmp_path):
    assert derive(write(tmp_path, b"x"), "application/zip", OPTIONS).properties == {
        "format": "application/zip"
    }


# -- the sandbox -------------------------------------------------------------------------------------
def _allocate(mib: int) -> int:
    return len(bytearray(mib << 20))


def _sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


def _fail() -> None:
    raise ValueError("broken input")


def _die() -> None:
    os._exit(3)


def test_the_sandbox_returns_the_result():
    assert run(_allocate, 10, memory_bytes=512 << 20, timeout=30) == 10 << 20


def test_the_sandbox_enforces_memory():
    with pytest.raises(SandboxError) as caught:
        run(_allocate, 1024, memory_bytes=256 << 20, timeout=30)
    assert caught.value.kind == "memory"


def test_the_sandbox_enforces_the_deadline():
    with pytest.raises(SandboxError) as caught:
        run(_sleep, 30, memory_bytes=256 << 20, timeout=0.5)
    assert caught.value.kind == "timeout"


def test_the_sandbox_reports_errors_and_crashes():
    with pytest.raises(SandboxError, match="ValueError: broken input") as caught:
        run(_fail, memory_bytes=256 << 20, timeout=30)
    assert caught.value.kind == "error"
    with pytest.raises(SandboxError) as died:
        run(_die, memory_bytes=256 << 20, timeout=30)
    assert died.value.kind == "crashed"


def test_a_bomb_in_the_sandbox_fails_without_harming_the_caller(tmp_path):
    path = write(tmp_path, samples.bomb())
    loose = DeriveOptions(max_pixels=10**10)  # the pixel limit off: memory must stop it
    with pytest.raises(SandboxError) as caught:
        run(derive, path, "image/png", loose, memory_bytes=200 << 20, timeout=60)
    assert caught.value.kind in ("memory", "error", "crashed")
    assert run(
        derive,
        write(tmp_path, samples.png(), "ok.png"),
        "image/png",
        OPTIONS,
        memory_bytes=512 << 20,
        timeout=60,
    ).variants


def test_the_sandbox_reports_its_childs_peak_memory():
    from gateway.processing.sandbox import Peak

    run(_allocate, 100, memory_bytes=512 << 20, timeout=30)
    assert Peak.rss >= 100 << 20
    run(_allocate, 1, memory_bytes=512 << 20, timeout=30)
    assert Peak.rss < 100 << 20


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_the_sandbox_reports_its_childs_cpu_time():
    """Each child's own: what it spent spinning, on top of what starting it costs (unpickling,
    importing this module), which is the same for both."""
    from gateway.processing.sandbox import Peak

    run(_spin, 0.0, memory_bytes=512 << 20, timeout=30)
    idle = Peak.cpu
    run(_spin, 1.0, memory_bytes=512 << 20, timeout=30)
    busy = Peak.cpu
    assert busy >= 1.0 and 0.7 <= busy - idle <= 1.3


@pytest.mark.parametrize("orientation", [1, 6, 3])
def test_thumbnails_are_the_pixels_of_pillows_own_transpose_and_thumbnail(tmp_path, orientation):
    """The thumbnails are transposed in place (no copy of the decoded pixels): the same WebP
    bytes as Pillow's ``exif_transpose`` returning a copy, for an upright and turned photos."""
    from PIL import ImageOps

    path = write(tmp_path, samples.photo(1600, 1200, orientation=orientation))
    derived = derive(path, "image/jpeg", DeriveOptions(thumbnail_sizes=(320, 1280)))
    for variant, size in zip(derived.variants, (320, 1280), strict=True):
        with Image.open(path) as image:
            image.draft("RGB", (size, size))
            expected = ImageOps.exif_transpose(image)
        expected.thumbnail((size, size))
        out = io.BytesIO()
        expected.save(out, "WEBP", quality=80)
        assert variant.data == out.getvalue()
        assert (variant.width, variant.height) == expected.size
