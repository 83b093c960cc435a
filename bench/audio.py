"""Audio processing: the worker's waveform + Opus copy against Debian's ffmpeg command line.

    .venv/bin/python bench/audio.py [--reps 3] [--minutes 10] [--long-minutes 60]

Makes a 10-minute 48 kHz 16-bit stereo WAV (a 440 Hz tone on the left, pink noise on the right:
a field recording's mix of tone and noise) with ffmpeg, then, in one run, alternating which goes
first, ``--reps`` times each:

* **ffmpeg** (the anchor): ``ffmpeg -i in.wav -c:a libopus -b:a 96k out.opus`` (the same Opus
  file: libopus, the same bit rate) plus a peaks pass, ``ffmpeg -i in.wav -af
  asetnsamples=<n>,astats=...,ametadata=print`` (each channel's minimum and maximum per point,
  2000 points, written out), both processes' CPU (user + system, from ``RUSAGE_CHILDREN``);
* **the worker**: one whole ``media.process`` job on local storage (the queue, the record moves,
  the object copied to the job's scratch directory, ``derive()`` in its sandbox child, the three
  variants written): the worker process's CPU during the job plus its sandbox child's (the child
  reports its own rusage: ``sandbox.Peak``).

Target: the worker's CPU at most 1.15 x the anchor's (medians). Then one job on a 60-minute WAV:
the sandbox child's peak RSS must be flat in the audio's length (at most 8 MiB above the
10-minute job's). Exit status 1 on a MISS. Needs ffmpeg on PATH (apt-get install ffmpeg).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

TARGET_CPU = 1.15
RSS_SLACK = 8 << 20
BIT_RATE = 96_000
POINTS = 2000


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_wav(path: Path, minutes: int) -> None:
    seconds = str(minutes * 60)
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-y"),
            *("-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"),
            *("-f", "lavfi", "-i", f"anoisesrc=color=pink:r=48000:a=0.3:d={seconds}"),
            *("-filter_complex", "[0][1]amerge=inputs=2", "-c:a", "pcm_s16le", str(path)),
        ],
        check=True,
    )


def ffmpeg_anchor(wav: Path, scratch: Path, samples: int) -> float:
    """CPU seconds of ffmpeg's Opus file plus its peaks pass."""
    per_point = -(-samples // POINTS)
    used = children_cpu()
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-y", "-i", str(wav)),
            *("-c:a", "libopus", "-b:a", f"{BIT_RATE // 1000}k", str(scratch / "anchor.opus")),
        ],
        check=True,
    )
    stats = (
        f"asetnsamples=n={per_point}:p=0,astats=metadata=1:reset=1:"
        "measure_perchannel=Min_level+Max_level:measure_overall=none,"
        f"ametadata=mode=print:file={scratch / 'anchor-peaks.txt'}"
    )
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-af", stats, "-f", "null", "-"],
        check=True,
    )
    return children_cpu() - used


class Jobs:
    """A worker on local storage and SQLite, as ``flask worker`` runs it (one slot)."""

    def __init__(self, scratch: Path) -> None:
        from gateway.processing.worker import Worker, WorkerOptions
        from gateway.services import Services

        from conftest import make_settings

        settings = make_settings(scratch, backend="local", sandbox_timeout=600.0)
        self.svc = Services.from_settings(settings)
        self.svc.provision()
        self.worker = Worker(
            self.svc.queue,
            self.svc.pipeline.handle,
            on_last_failure=self.svc.pipeline.on_last_failure,
            options=WorkerOptions(concurrency=1, wait=0.05),
        )
        self.count = 0

    def run(self, wav: Path) -> tuple[float, int, dict]:
        """One job: (CPU seconds of the worker and its sandbox child, the child's peak RSS,
        the record's properties)."""
        from gateway.media.lifecycle import Status
        from gateway.media.records import MediaRecord
        from gateway.processing.sandbox import Peak

        media_id = f"{self.count:032x}"
        self.count += 1
        key = f"projects/bench/media/{media_id}.wav"
        writer = self.svc.store.open_writer(key, content_type="audio/wav", metadata={})
        with open(wav, "rb") as f:
            while chunk := f.read(1 << 20):
                writer.write(chunk)
        writer.commit(sha256="0" * 64)
        self.svc.records.create_many(
            [
                MediaRecord(
                    media_id=media_id,
                    project_id="bench",
                    tenant="",
                    owner="b",
                    original_name="rec.wav",
                    file_type="audio",
                    mime_type="audio/wav",
                    s3_key=key,
                    size=wav.stat().st_size,
                    sha256="0" * 64,
                    created_at=f"2026-01-01T00:00:{self.count:02d}",
                )
            ]
        )
        used = self_cpu()
        self.svc.queue.send({"type": "media.process", "mediaId": media_id})
        while self.svc.records.get(media_id).status is not Status.READY:
            assert self.svc.records.get(media_id).status is not Status.FAILED
            self.worker.run_once()
        worker_cpu = self_cpu() - used
        record = self.svc.records.get(media_id)
        assert [v.name for v in record.variants] == ["peaks", "waveform", "opus"]
        return worker_cpu + Peak.cpu, Peak.rss, record.properties

    def close(self) -> None:
        self.worker.drain()


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__)
    options.add_argument("--reps", type=int, default=3)
    options.add_argument("--minutes", type=int, default=10)
    options.add_argument("--long-minutes", type=int, default=60)
    args = options.parse_args()
    if not shutil.which("ffmpeg"):
        print("ffmpeg not found: apt-get install ffmpeg")
        return 2
    import av

    ffmpeg_version = subprocess.run(
        ["ffmpeg", "-version"], capture_output=True, text=True, check=True
    ).stdout.split("\n", 1)[0]
    with tempfile.TemporaryDirectory(prefix="bench-audio-") as tmp:
        scratch = Path(tmp)
        wav = scratch / "ten.wav"
        print(f"making {args.minutes} min of 48 kHz stereo WAV ...", flush=True)
        make_wav(wav, args.minutes)
        samples = args.minutes * 60 * 48_000
        jobs = Jobs(scratch / "jobs")
        jobs.run(wav)  # warm-up: the forkserver, the codecs
        ffmpeg_anchor(wav, scratch, samples)
        anchor, worker, rss = [], [], 0
        for rep in range(args.reps):
            order = ("anchor", "worker") if rep % 2 == 0 else ("worker", "anchor")
            for who in order:
                if who == "anchor":
                    anchor.append(ffmpeg_anchor(wav, scratch, samples))
                else:
                    cpu, rss, props = jobs.run(wav)
                    worker.append(cpu)
        size = wav.stat().st_size
        ratio = statistics.median(worker) / statistics.median(anchor)
        opus = props["transcode"]["size"]
        anchor_opus = (scratch / "anchor.opus").stat().st_size
        print(
            f"\n{ffmpeg_version}; PyAV {av.__version__} (FFmpeg {av.library_versions['libavcodec']})"
        )
        print(
            f"{args.minutes} min 48 kHz stereo WAV, {size / 2**20:.0f} MiB; Opus at {BIT_RATE} bit/s, {POINTS} points"
        )
        print(
            f"{'CPU seconds per file (median of ' + str(args.reps) + ')':<52} {'median':>7} {'runs':>22}"
        )
        print(
            f"{'ffmpeg: Opus file + astats peaks pass (anchor)':<52} {statistics.median(anchor):>7.2f} {' '.join(f'{x:.2f}' for x in anchor):>22}"
        )
        print(
            f"{'worker: whole job (waveform + Opus copy)':<52} {statistics.median(worker):>7.2f} {' '.join(f'{x:.2f}' for x in worker):>22}"
        )
        mark = "PASS" if ratio <= TARGET_CPU else "MISS"
        print(f"worker / anchor: {ratio:.3f} (target <= {TARGET_CPU}) {mark}")
        print(
            f"Opus sizes: worker {opus:,} bytes, ffmpeg {anchor_opus:,} bytes ({opus / size:.1%} of the WAV)"
        )
        long_wav = scratch / "long.wav"
        print(f"\nmaking {args.long_minutes} min of 48 kHz stereo WAV ...", flush=True)
        wav.unlink()
        make_wav(long_wav, args.long_minutes)
        long_cpu, long_rss, _ = jobs.run(long_wav)
        jobs.close()
        flat = long_rss <= rss + RSS_SLACK
        print(f"{'peak RSS of the job child':<40} {'MiB':>6} {'CPU s':>7}")
        print(f"{f'{args.minutes} min':<40} {rss / 2**20:>6.1f} {statistics.median(worker):>7.2f}")
        print(f"{f'{args.long_minutes} min':<40} {long_rss / 2**20:>6.1f} {long_cpu:>7.2f}")
        print(
            f"flat in the length (at most {RSS_SLACK >> 20} MiB more): {'PASS' if flat else 'MISS'}"
        )
        print(
            f"worker process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
        )
    return 0 if ratio <= TARGET_CPU and flat else 1


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - started:.0f} s)")
    raise SystemExit(code)
