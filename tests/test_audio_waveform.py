"""gateway.processing.audio_waveform: peaks as BBC audiowaveform's JSON (version 2) and a PNG,
points bounded whatever the length."""

from __future__ import annotations

import io
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from gateway.processing.audio_waveform import (
    PNG_COLOUR,
    PNG_HEIGHT,
    PNG_MAX_WIDTH,
    Peaks,
    samples_per_bucket,
    to_16_bits,
)


def test_the_json_is_audiowaveforms_version_2_with_channels_interleaved():
    peaks = Peaks(channels=2, samples_per_bucket=512, max_points=10)
    peaks.add([-10, 20, -30, 40])
    peaks.add([-1, 2, -3, 4])
    assert json.loads(peaks.to_json(44100)) == {
        "version": 2,
        "channels": 2,
        "sample_rate": 44100,
        "samples_per_pixel": 512,
        "bits": 16,
        "length": 2,
        "data": [-10, 20, -30, 40, -1, 2, -3, 4],
    }
    assert b" " not in peaks.to_json(44100)  # compact


def test_a_bucket_must_have_a_min_and_a_max_per_channel():
    peaks = Peaks(channels=2, samples_per_bucket=1, max_points=4)
    with pytest.raises(ValueError, match=r"^a bucket has 4 levels, not 2$"):
        peaks.add([1, 2])


@pytest.mark.parametrize("channels, samples, points", [(0, 1, 1), (1, 0, 1), (1, 1, 0), (-1, 5, 5)])
def test_peaks_need_positive_sizes(channels, samples, points):
    with pytest.raises(
        ValueError, match=r"^channels, samples per bucket and points must be positive$"
    ):
        Peaks(channels=channels, samples_per_bucket=samples, max_points=points)


def test_more_buckets_than_points_merge_in_pairs_keeping_min_and_max():
    peaks = Peaks(channels=1, samples_per_bucket=100, max_points=4)
    for value in range(1, 6):  # the fifth bucket would make a fifth point
        peaks.add([-value, value])
    assert peaks.points == [[-2, 2], [-4, 4], [-5, 5]]
    assert peaks.buckets_per_point == 2 and peaks.samples_per_pixel == 200
    peaks.add([-6, 6])  # joins the last point, which holds one bucket so far
    assert peaks.points == [[-2, 2], [-4, 4], [-6, 6]]
    peaks.add([-1, 1])
    assert peaks.points == [[-2, 2], [-4, 4], [-6, 6], [-1, 1]]


def test_merging_keeps_the_lowest_minimum_and_the_highest_maximum():
    peaks = Peaks(channels=2, samples_per_bucket=1, max_points=1)
    peaks.add([-5, 3, 0, 0])
    peaks.add([-2, 9, -7, 1])
    assert peaks.points == [[-5, 9, -7, 1]]


@given(st.integers(1, 5000), st.integers(1, 50))
def test_points_never_outnumber_the_limit_and_cover_every_bucket(buckets, most):
    peaks = Peaks(channels=1, samples_per_bucket=10, max_points=most)
    for i in range(buckets):
        peaks.add([-i, i])
    assert len(peaks.points) <= most
    assert len(peaks.points) == math.ceil(buckets / peaks.buckets_per_point)
    assert buckets <= most or len(peaks.points) > most // 2
    per = peaks.buckets_per_point
    for j, (low, high) in enumerate(peaks.points):  # point j: buckets [j * per, (j + 1) * per)
        assert (low, high) == (-(min(buckets, (j + 1) * per) - 1), min(buckets, (j + 1) * per) - 1)


@pytest.mark.parametrize(
    "samples, points, expected",
    [
        (None, 2000, 1024),  # unknown: merged as the audio goes on
        (0, 2000, 1024),
        (-5, 2000, 1024),
        (96_000, 2000, 49),  # 1960 points planned: 2 % to spare
        (1960, 2000, 1),
        (1961, 2000, 2),
        (10, 2000, 1),
        (1, 2000, 1),  # one sample is a length, not an unknown one
        (28_800_000, 2000, 14_694),
        (100, 1, 100),
    ],
)
def test_the_bucket_size_spreads_the_declared_samples_with_room_to_spare(samples, points, expected):
    assert samples_per_bucket(samples, points) == expected


@pytest.mark.parametrize(
    "level, scale, expected",
    [
        (-16384.0, 1.0, -16384),
        (32767.0, 1.0, 32767),
        (0.5, 32768.0, 16384),
        (-1.0, 32768.0, -32768),
        (1.0, 32768.0, 32767),  # clipped
        (-1.5, 32768.0, -32768),
        (2.0, 32768.0, 32767),
        (65536.0 * 100, 1 / 65536, 100),
        (float("nan"), 32768.0, 0),
        (0.49999, 1.0, 0),
        (0.5001, 1.0, 1),
    ],
)
def test_levels_become_16_bit_values(level, scale, expected):
    assert to_16_bits(level, scale) == expected


def _png(peaks: Peaks) -> tuple[Image.Image, int, int]:
    data, width, height = peaks.to_png()
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (width, height)
    return image.convert("RGBA"), width, height


def test_the_picture_draws_each_point_between_its_lowest_and_highest_level():
    peaks = Peaks(channels=2, samples_per_bucket=1, max_points=10)
    peaks.add([-32768, 32767, 0, 0])  # full scale on one channel
    peaks.add([0, 0, 0, 0])  # silence
    peaks.add([-8192, 0, 0, 16384])  # a quarter down on one, half up on the other
    image, width, height = _png(peaks)
    assert (width, height) == (3, PNG_HEIGHT)
    column = [[image.getpixel((x, y))[3] > 0 for y in range(height)] for x in range(width)]
    assert all(column[0])  # top to bottom
    assert [y for y in range(height) if column[1][y]] == [100]  # a line at the middle
    drawn = [y for y in range(height) if column[2][y]]
    assert drawn == list(range(50, 125))
    assert image.getpixel((0, 0)) == PNG_COLOUR == (37, 99, 235, 255)
    assert image.getpixel((1, 0)) == (0, 0, 0, 0)  # transparent black around


def test_a_column_reaches_the_lowest_minimum_of_any_channel():
    peaks = Peaks(channels=2, samples_per_bucket=1, max_points=10)
    peaks.add([0, 0, -32768, 0])  # silence on the first channel, full scale down on the second
    image, width, height = _png(peaks)
    assert width == 1
    assert [y for y in range(height) if image.getpixel((0, y))[3]] == list(range(100, 200))


def test_the_picture_is_at_most_its_width_and_points_share_columns():
    peaks = Peaks(channels=1, samples_per_bucket=1, max_points=PNG_MAX_WIDTH * 3)
    for i in range(PNG_MAX_WIDTH * 2 + 1):
        peaks.add([0, 32767] if i == PNG_MAX_WIDTH * 2 else [0, 0])
    image, width, height = _png(peaks)
    assert width == 1334  # 3 points per column (4001 / 2000, rounded up): 1334 columns
    assert [x for x in range(width) if image.getpixel((x, 0))[3]] == [1333]  # the loud one
    assert all(image.getpixel((x, height // 2))[3] for x in range(width))


def test_no_points_is_a_picture_one_column_wide():
    image, width, height = _png(Peaks(channels=1, samples_per_bucket=1, max_points=4))
    assert (width, height) == (1, 200) and image.getpixel((0, 100))[3] == 0
    assert PNG_HEIGHT == 200 and PNG_MAX_WIDTH == 2000
