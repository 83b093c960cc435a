"""Poster frames: the gateway's PyAV path against Debian's ffmpeg command line.

    .venv/bin/python bench/video.py     # needs ffmpeg and ffprobe on PATH (apt-get install ffmpeg)

Makes a 20 s 1080p H.264 test video with ffmpeg, then per video: ``gateway.processing.derive.derive``
(PyAV: properties and a 1280 px WebP poster) against ``ffprobe`` (duration, codec, size) plus
``ffmpeg -ss ... -frames:v 1`` (the same poster), 5 times each after a warm-up; prints wall time
and CPU time per video (the command line's CPU is its child processes').
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.processing.derive import DeriveOptions, derive

RUNS = 5


def cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def timed(fn, who: int) -> tuple[float, float]:
    fn()  # warm-up
    wall, used = time.perf_counter(), cpu(who)
    for _ in range(RUNS):
        fn()
    return (time.perf_counter() - wall) / RUNS, (cpu(who) - used) / RUNS


def main() -> int:
    if not (shutil.which("ffmpeg") and shutil.which("ffprobe")):
        print("ffmpeg/ffprobe not found: apt-get install ffmpeg")
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        video = Path(scratch) / "video.mp4"
        subprocess.run(
            [
                *("ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30"),
                *("-t", "20", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video)),
            ],
            check=True,
        )
        poster = Path(scratch) / "poster.webp"

        def pyav() -> None:
            derive(video, "video/mp4", DeriveOptions())

        def command_line() -> None:
            probe = subprocess.run(
                [
                    *("ffprobe", "-v", "error", "-of", "json", "-show_entries"),
                    *("format=duration:stream=codec_name,width,height", str(video)),
                ],
                capture_output=True,
                check=True,
            )
            duration = float(json.loads(probe.stdout)["format"]["duration"])
            subprocess.run(
                [
                    *("ffmpeg", "-v", "error", "-y", "-ss", str(min(1.0, duration / 10))),
                    *("-i", str(video), "-frames:v", "1", "-vf", "scale=1280:-2", str(poster)),
                ],
                check=True,
            )

        rows = [
            ("PyAV, in process (gateway.processing.derive)", timed(pyav, resource.RUSAGE_SELF)),
            ("ffprobe + ffmpeg command line", timed(command_line, resource.RUSAGE_CHILDREN)),
        ]
    print(f"{'poster frame of a 20 s 1080p H.264 video':<42} {'wall ms':>8} {'CPU ms':>8}")
    for name, (wall, used) in rows:
        print(f"{name:<42} {wall * 1000:>8.0f} {used * 1000:>8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
