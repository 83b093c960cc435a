"""A waveform of decoded audio: peaks (the minimum and maximum of each channel per point) as BBC
audiowaveform's JSON, version 2 (what peaks.js and wavesurfer.js read), and a PNG picture of
them. Pure: buckets of levels in, bytes out (gateway/processing/audio.py decodes and measures).

The JSON (https://github.com/bbc/audiowaveform/blob/master/doc/DataFormat.md)::

    {"version": 2, "channels": 2, "sample_rate": 48000, "samples_per_pixel": 1440,
     "bits": 16, "length": 2000, "data": [min0, max0, min1, max1, ...]}

``data`` holds, for each point in turn, each channel's minimum then maximum, as 16-bit values
(-32768 .. 32767: a full-scale sine's peaks are about +-32767). A point covers
``samples_per_pixel`` samples of the original sample rate (the last one fewer).

The number of points is bounded whatever the audio's length: the decoder measures buckets of a
size chosen from the duration its container declares; when the audio turns out longer (the
declared duration was an estimate, or absent) and the points would outnumber ``max_points``,
neighbouring points are merged in pairs and each later point takes twice as many buckets. So
there are at most ``max_points``, and at least half as many unless the audio is shorter.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence

from PIL import Image, ImageDraw

FULL_SCALE = 32768
PNG_HEIGHT = 200
PNG_MAX_WIDTH = 2000
PNG_COLOUR = (37, 99, 235, 255)  # drawn on a transparent background


HEADROOM = 0.98  # of the points, planned for the declared samples: decoders give a few more


def samples_per_bucket(samples: float | None, max_points: int) -> int:
    """The bucket size that spreads ``samples`` (as declared, or None when unknown) over at
    most ``max_points`` points (``samples_per_pixel``), with 2 % to spare (an encoder's priming
    and padding decode to more samples than the header counts)."""
    if samples is None or samples <= 0:
        return 1024  # unknown: points merge as the audio goes on
    return max(1, math.ceil(samples / max(1, int(max_points * HEADROOM))))


def to_16_bits(level: float, scale: float) -> int:
    """A level as astats reports it (in the sample format's own units: ``scale`` is 1 for 16-bit
    samples, 1/65536 for 32-bit ones, 32768 for floating point) as a 16-bit value."""
    if math.isnan(level):
        return 0
    return max(-FULL_SCALE, min(FULL_SCALE - 1, round(level * scale)))


class Peaks:
    """Points of min/max per channel, fed one bucket at a time."""

    def __init__(self, *, channels: int, samples_per_bucket: int, max_points: int) -> None:
        if channels < 1 or samples_per_bucket < 1 or max_points < 1:
            raise ValueError("channels, samples per bucket and points must be positive")
        self.channels = channels
        self.samples_per_bucket = samples_per_bucket
        self.max_points = max_points
        self.buckets_per_point = 1
        self.buckets = 0
        self.points: list[list[int]] = []  # each: [min0, max0, min1, max1, ...]

    def add(self, levels: Sequence[int]) -> None:
        """One bucket: each channel's minimum then maximum."""
        if len(levels) != 2 * self.channels:
            raise ValueError(f"a bucket has {2 * self.channels} levels, not {len(levels)}")
        index = self.buckets // self.buckets_per_point
        self.buckets += 1
        if index == len(self.points):
            self.points.append(list(levels))
        else:
            _merge(self.points[index], levels)
        if len(self.points) > self.max_points:
            merged = [self.points[i] for i in range(0, len(self.points), 2)]
            for i, point in enumerate(merged):
                if 2 * i + 1 < len(self.points):
                    _merge(point, self.points[2 * i + 1])
            self.points = merged
            self.buckets_per_point *= 2

    @property
    def samples_per_pixel(self) -> int:
        return self.samples_per_bucket * self.buckets_per_point

    def to_json(self, sample_rate: int) -> bytes:
        document = {
            "version": 2,
            "channels": self.channels,
            "sample_rate": sample_rate,
            "samples_per_pixel": self.samples_per_pixel,
            "bits": 16,
            "length": len(self.points),
            "data": [level for point in self.points for level in point],
        }
        return json.dumps(document, separators=(",", ":")).encode()

    def to_png(self) -> tuple[bytes, int, int]:
        """(PNG, width, height): the channels' lowest minimum and highest maximum per column,
        around a centre line; one column per point, at most ``PNG_MAX_WIDTH`` (points share a
        column when there are more)."""
        columns = _columns(self.points, PNG_MAX_WIDTH)
        width, height = max(1, len(columns)), PNG_HEIGHT
        image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        draw = ImageDraw.Draw(image)
        middle = (height - 1) / 2
        for x, (low, high) in enumerate(columns):
            top = round(middle - high / FULL_SCALE * middle)
            bottom = round(middle - low / FULL_SCALE * middle)
            draw.line([(x, top), (x, bottom)], fill=PNG_COLOUR)
        out = io.BytesIO()
        image.save(out, "PNG")
        return out.getvalue(), width, height


def _merge(point: list[int], other: Sequence[int]) -> None:
    for i in range(0, len(point), 2):
        point[i] = min(point[i], other[i])
        point[i + 1] = max(point[i + 1], other[i + 1])


def _columns(points: list[list[int]], most: int) -> list[tuple[int, int]]:
    """(lowest, highest) over the channels, per column; ``most`` columns at the most."""
    per_column = max(1, math.ceil(len(points) / most))
    columns = []
    for start in range(0, len(points), per_column):
        group = points[start : start + per_column]
        columns.append((min(min(p[0::2]) for p in group), max(max(p[1::2]) for p in group)))
    return columns
