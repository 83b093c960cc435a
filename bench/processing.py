"""Processing at the speed of its codecs: the worker against its codecs called directly.

    nice -n 10 .venv/bin/python bench/processing.py            # 200 photos, 10 min of audio
    nice -n 10 .venv/bin/python bench/processing.py --quick    # 20 photos, 2 min of audio

In one run, each side interleaved with its anchor (A B B A ...; medians of the rounds):

1. **photos**: N 12-megapixel JPEGs (4000 x 3000, made deterministically: a smooth random field
   under fine grain, quality 90, EXIF Make/Model; ``--distinct`` different images, repeated),
   in rounds of ``--chunk``. *worker*: whole ``media.process`` jobs, one at a time, on local
   storage and the SQLite queue (the object copied to the job's scratch file, ``derive()`` in its
   sandbox child, the two WebP thumbnails written, the record moved); CPU = this process's (the
   worker's) + each sandbox child's own. *Pillow*: the same Pillow calls in one child process
   (forked from the same forkserver): per size ``Image.open``, ``draft("RGB", (s, s))``,
   ``ImageOps.exif_transpose``, ``thumbnail((s, s))`` (Pillow's default resampling), ``save(...,
   "WEBP", quality=80)`` to a file; sizes 320 and 1280 (the defaults).
2. **video poster**: a 20 s 1080p H.264 video (ffmpeg's testsrc2). *worker*: whole jobs.
   *ffmpeg*: ``ffmpeg -ss 1 -noaccurate_seek -i v.mp4 -frames:v 1 -vf scale=1280:-2:flags=bicubic
   -c:v libwebp -quality 80 poster.webp`` (the same frame: the key frame before 1 s, as PyAV's
   seek gives; the same size and quality).
3. **audio**: bench/audio.py's WAV, Opus file and peaks pass (``ffmpeg_anchor``) against whole
   jobs (waveform, peaks, Opus copy).
4. **jobs per second**: real ``flask --app wsgi worker --concurrency 1`` processes (one slot each,
   everything else the embedded defaults) on the SQLite queue and local storage; ``--jobs`` photo
   jobs queued at once after a warm-up job per process; jobs / wall seconds from the first send
   to the last ``ready``; CPU and peak RSS of each worker's whole process tree (forkserver and
   sandbox children included, from /proc).

Columns: CPU seconds (user + system) per item, wall seconds per item, peak RSS (the process that
decodes: the sandbox child, the Pillow child, ffmpeg; for 4, the sum over the worker trees).
Targets: worker CPU at most 1.15 x the anchor's (photos, video, audio); two worker processes at
least 1.7 x the jobs per second of one. Exit status 1 on a MISS. Needs ffmpeg on PATH.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from PIL import Image, ImageOps  # noqa: E402

from gateway.queue import Message  # noqa: E402

TARGET_CPU = 1.15
TARGET_SCALING = 1.7
SIZES = (320, 1280)
QUALITY = 80
MiB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measured(cmd: list[str]) -> tuple[float, int]:
    """Run a command: (its CPU seconds from wait4's rusage, its peak RSS in bytes). The peak is
    the last VmHWM read while it ran (every 5 ms): wait4's ru_maxrss keeps the high-water mark
    of the forking process (this one, hundreds of MiB) across exec."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            try:
                with open(f"/proc/{proc.pid}/status", "rb") as f:
                    for line in f:
                        if line.startswith(b"VmHWM:"):
                            peak[0] = max(peak[0], int(line.split()[1]) * 1024)
            except OSError:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}")
    return usage.ru_utime + usage.ru_stime, peak[0]


# -- inputs ----------------------------------------------------------------------------------------
def make_photo(path: Path, seed: int) -> None:
    """A 12 MP JPEG that compresses like a photo: smooth random colour, fine grain, EXIF."""
    rng = random.Random(seed)
    field = Image.frombytes("RGB", (80, 60), rng.randbytes(80 * 60 * 3))
    field = field.resize((4000, 3000), Image.Resampling.BICUBIC)
    grain = Image.frombytes("L", (4000, 3000), rng.randbytes(4000 * 3000)).convert("RGB")
    image = Image.blend(field, grain, 0.12)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Bench", "Photo 12", 1
    image.save(path, "JPEG", quality=90, exif=exif)


def make_video(path: Path) -> None:
    subprocess.run(
        [
            *(
                "ffmpeg",
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=1920x1080:rate=30",
            ),
            *("-t", "20", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)),
        ],
        check=True,
    )


# -- anchors ---------------------------------------------------------------------------------------
def pillow_thumbnails(paths: list[Path], out: Path) -> None:
    """The worker's Pillow calls for each photo and size, nothing else."""
    for n, path in enumerate(paths):
        for size in SIZES:
            with Image.open(path) as image:
                image.draft("RGB", (size, size))
                thumb = ImageOps.exif_transpose(image)
                thumb.thumbnail((size, size))
                thumb.save(out / f"{n}-{size}.webp", "WEBP", quality=QUALITY)


def pillow_anchor(paths: list[Path], out: Path) -> tuple[float, int]:
    """CPU and peak RSS of the Pillow calls, in a child forked from the sandbox's forkserver
    (the same starting point as the worker's decoding child)."""
    from gateway.processing.sandbox import Peak, run

    run(pillow_thumbnails, paths, out, memory_bytes=4 << 30, timeout=3600)
    return Peak.cpu, Peak.rss


def ffmpeg_poster(video: Path, out: Path) -> tuple[float, int]:
    return measured(
        [
            *("ffmpeg", "-v", "error", "-y", "-ss", "1", "-noaccurate_seek", "-i", str(video)),
            *("-frames:v", "1", "-vf", "scale=1280:-2:flags=bicubic"),
            *("-c:v", "libwebp", "-quality", str(QUALITY), str(out)),
        ]
    )


def audio_anchor(wav: Path, scratch: Path, samples: int) -> tuple[float, int]:
    """bench/audio.py's anchor (an Opus file, then an astats peaks pass), each ffmpeg measured:
    CPU of both, the larger peak RSS."""
    from audio import BIT_RATE, POINTS

    per_point = -(-samples // POINTS)
    opus = measured(
        [
            *("ffmpeg", "-v", "error", "-y", "-i", str(wav)),
            *("-c:a", "libopus", "-b:a", f"{BIT_RATE // 1000}k", str(scratch / "anchor.opus")),
        ]
    )
    stats = (
        f"asetnsamples=n={per_point}:p=0,astats=metadata=1:reset=1:"
        "measure_perchannel=Min_level+Max_level:measure_overall=none,"
        f"ametadata=mode=print:file={scratch / 'anchor-peaks.txt'}"
    )
    peaks = measured(
        ["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-af", stats, "-f", "null", "-"]
    )
    return opus[0] + peaks[0], max(opus[1], peaks[1])


# -- the worker, in this process -------------------------------------------------------------------
class Jobs:
    """A worker on local storage and SQLite, as ``flask worker`` runs it (one slot)."""

    def __init__(self, scratch: Path) -> None:
        from gateway.processing.worker import Worker, WorkerOptions
        from gateway.services import Services

        from conftest import make_settings

        self.svc = Services.from_settings(make_settings(scratch, sandbox_timeout=600.0))
        self.svc.provision()
        self.done = threading.Event()
        self.worker = Worker(
            self.svc.queue,
            self.handle,
            on_last_failure=self.svc.pipeline.on_last_failure,
            options=WorkerOptions(concurrency=1, wait=0.05),
        )
        self.count = 0

    def handle(self, message: Message) -> None:
        try:
            self.svc.pipeline.handle(message)
        finally:
            self.done.set()  # the bench waits on this, not by polling the records

    def store(self, path: Path, mime: str) -> str:
        return store_media(self.svc, path, mime, self.count_up())

    def count_up(self) -> int:
        self.count += 1
        return self.count

    def run(self, media_id: str) -> tuple[float, int]:
        """One job: (CPU seconds of the worker and its sandbox child, the child's peak RSS)."""
        from gateway.media.lifecycle import Status
        from gateway.processing.sandbox import Peak

        used = self_cpu()
        self.done.clear()
        self.svc.queue.send({"type": "media.process", "mediaId": media_id})
        while not self.worker.run_once():
            pass
        self.done.wait()
        record = self.svc.records.get(media_id)
        assert record.status is Status.READY, record.reason
        return self_cpu() - used + Peak.cpu, Peak.rss

    def close(self) -> None:
        self.worker.drain()


def store_media(svc, path: Path, mime: str, n: int) -> str:  # type: ignore[no-untyped-def]
    from gateway.media.records import MediaRecord

    media_id = f"{n:032x}"
    key = f"projects/bench/media/{media_id}{path.suffix}"
    writer = svc.store.open_writer(key, content_type=mime, metadata={})
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            writer.write(chunk)
    writer.commit(sha256="0" * 64)
    svc.records.create_many(
        [
            MediaRecord(
                media_id=media_id,
                project_id="bench",
                tenant="",
                owner="b",
                original_name=path.name,
                file_type=mime.split("/", maxsplit=1)[0],
                mime_type=mime,
                s3_key=key,
                size=path.stat().st_size,
                sha256="0" * 64,
                created_at=f"2026-01-01T00:00:{n % 60:02d}",
            )
        ]
    )
    return media_id


# -- worker processes ------------------------------------------------------------------------------
def tree(pid: int) -> list[int]:
    """A process and its descendants (children of any of its threads: the forkserver is
    started from a job's thread)."""
    found, kids = [pid], []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    for kid in kids:
        found += tree(kid)
    return found


def tree_cpu(pid: int) -> float:
    """utime + stime of a process tree, reaped children included (cutime, cstime)."""
    total = 0.0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()
        total += sum(int(x) for x in fields[11:15]) / CLK_TCK
    return total


def tree_rss(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def worker_processes(photos: list[Path], scratch: Path, processes: int) -> dict[str, float]:
    """``processes`` real worker processes, one slot each, on a fresh queue and store."""
    from gateway.config import Settings
    from gateway.media.lifecycle import Status
    from gateway.services import Services

    from conftest import JWT_SECRET

    scratch.mkdir(parents=True)
    env = {
        **os.environ,
        "GATEWAY_JWT_SECRET": JWT_SECRET,
        "GATEWAY_ORPHAN_JOURNAL": str(scratch / "orphans.jsonl"),
        "GATEWAY_STORAGE_URL": str(scratch / "media"),
        "GATEWAY_RECORDS_URL": f"sqlite:///{scratch / 'records.db'}",
        "GATEWAY_QUEUE_URL": f"sqlite:///{scratch / 'queue.db'}",
    }
    svc = Services.from_settings(Settings.from_env(env))
    svc.provision()
    ids = [store_media(svc, p, "image/jpeg", n) for n, p in enumerate(photos, 1)]
    warm, timed = ids[:processes], ids[processes:]
    procs = [
        subprocess.Popen(
            [str(ROOT / ".venv/bin/flask"), "--app", "wsgi", "worker", "--concurrency", "1"],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    peak, sampling = [0], threading.Event()

    def sample() -> None:
        while not sampling.wait(0.1):
            peak[0] = max(peak[0], sum(tree_rss(p.pid) for p in procs))

    def all_ready(wanted: list[str]) -> bool:
        return all(svc.records.get(i).status is Status.READY for i in wanted)

    def wait_for(wanted: list[str]) -> None:
        while not all_ready(wanted):
            for p in procs:
                assert p.poll() is None, p.stderr.read() if p.stderr else ""
            time.sleep(0.1)

    try:
        for p in procs:
            assert p.stderr is not None
            p.stderr.readline()  # "worker: 1 at once on ...": the lane runs
        for media_id in warm:  # each process's forkserver and codecs loaded
            svc.queue.send({"type": "media.process", "mediaId": media_id})
        wait_for(warm)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu0 = sum(tree_cpu(p.pid) for p in procs)
        started = time.perf_counter()
        for media_id in timed:
            svc.queue.send({"type": "media.process", "mediaId": media_id})
        wait_for(timed)
        wall = time.perf_counter() - started
        cpu = sum(tree_cpu(p.pid) for p in procs) - cpu0
        sampling.set()
        sampler.join()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return {"jobs_s": len(timed) / wall, "cpu": cpu / len(timed), "wall": wall, "rss": peak[0]}


# -- the run ---------------------------------------------------------------------------------------
def interleaved(
    rounds: int,
    worker: Callable[[int], tuple[float, float, int]],
    anchor: Callable[[int], tuple[float, float, int]],
) -> dict[str, list[tuple[float, float, int]]]:
    """Each round runs both sides, the first side alternating (A B B A A B ...)."""
    runs: dict[str, list[tuple[float, float, int]]] = {"worker": [], "anchor": []}
    for r in range(rounds):
        order = ("worker", "anchor") if r % 2 == 0 else ("anchor", "worker")
        for who in order:
            runs[who].append((worker if who == "worker" else anchor)(r))
    return runs


def row(name: str, runs: list[tuple[float, float, int]]) -> tuple[float, str]:
    cpu = statistics.median(r[0] for r in runs)
    wall = statistics.median(r[1] for r in runs)
    rss = max(r[2] for r in runs)
    return cpu, f"  {name:<44} {cpu:>9.3f} {wall:>9.3f} {rss / MiB:>9.0f}"


HEADER = f"  {'':<44} {'CPU s':>9} {'wall s':>9} {'RSS MiB':>9}"


def compare(title: str, runs: dict[str, list[tuple[float, float, int]]], anchor: str) -> bool:
    print(f"\n{title}  (per item; medians of {len(runs['worker'])} rounds, RSS: the largest)")
    print(HEADER)
    worker_cpu, line = row("worker: whole jobs", runs["worker"])
    print(line)
    anchor_cpu, line = row(anchor, runs["anchor"])
    print(line)
    ratio = worker_cpu / anchor_cpu
    ok = ratio <= TARGET_CPU
    print(f"  CPU worker / anchor: {ratio:.3f} (target <= {TARGET_CPU}) {'PASS' if ok else 'MISS'}")
    return ok


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__)
    options.add_argument("--quick", action="store_true", help="20 photos, 2 min of audio, 8 jobs")
    options.add_argument("--photos", type=int, default=None, help="default 200 (--quick 20)")
    options.add_argument("--chunk", type=int, default=None, help="photos per round (10; quick 5)")
    options.add_argument("--distinct", type=int, default=4, help="different photos made")
    options.add_argument("--video-rounds", type=int, default=None, help="default 7 (quick 3)")
    options.add_argument("--audio-minutes", type=int, default=None, help="default 10 (quick 2)")
    options.add_argument("--audio-rounds", type=int, default=None, help="default 3 (quick 2)")
    options.add_argument("--jobs", type=int, default=None, help="default 40 (quick 12)")
    options.add_argument("--job-rounds", type=int, default=None, help="default 2 (quick 1)")
    options.add_argument("--skip", default="", help="comma-separated: photos,video,audio,workers")
    args = options.parse_args()
    q = args.quick
    photos_n = args.photos or (20 if q else 200)
    chunk = args.chunk or (5 if q else 10)
    video_rounds = args.video_rounds or (3 if q else 7)
    minutes = args.audio_minutes or (2 if q else 10)
    audio_rounds = args.audio_rounds or (2 if q else 3)
    jobs_n = args.jobs or (12 if q else 40)
    job_rounds = args.job_rounds or (1 if q else 2)
    skip = set(filter(None, args.skip.split(",")))
    if not shutil.which("ffmpeg"):
        print("ffmpeg not found: apt-get install ffmpeg")
        return 2
    import av
    import PIL
    from audio import POINTS, make_wav

    version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True)
    print(f"{version.stdout.splitlines()[0]}; Pillow {PIL.__version__}; PyAV {av.__version__}")
    print(f"load average at the start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-processing-") as tmp:
        scratch = Path(tmp)
        jobs = Jobs(scratch / "jobs")
        out = scratch / "out"
        out.mkdir()
        print(f"making {args.distinct} 12 MP JPEGs ...", flush=True)
        distinct = [scratch / f"photo{i}.jpg" for i in range(args.distinct)]
        for i, path in enumerate(distinct):
            make_photo(path, seed=i)
        photos = [distinct[i % len(distinct)] for i in range(photos_n)]
        mean_size = statistics.mean(p.stat().st_size for p in distinct)
        if "photos" not in skip:
            chunks = [photos[i : i + chunk] for i in range(0, len(photos), chunk)]
            pillow_anchor(chunks[0][:1], out)  # warm-up: forkserver, codecs
            jobs.run(jobs.store(chunks[0][0], "image/jpeg"))

            def photo_jobs(r: int) -> tuple[float, float, int]:
                ids = [jobs.store(p, "image/jpeg") for p in chunks[r]]
                started, cpu, rss = time.perf_counter(), 0.0, 0
                for media_id in ids:
                    used, peak = jobs.run(media_id)
                    cpu, rss = cpu + used, max(rss, peak)
                n = len(ids)
                return cpu / n, (time.perf_counter() - started) / n, rss

            def photo_pillow(r: int) -> tuple[float, float, int]:
                started = time.perf_counter()
                cpu, rss = pillow_anchor(chunks[r], out)
                n = len(chunks[r])
                return cpu / n, (time.perf_counter() - started) / n, rss

            runs = interleaved(len(chunks), photo_jobs, photo_pillow)
            ok &= compare(
                f"photos: {photos_n} x 12 MP JPEG ({mean_size / MiB:.1f} MiB), WebP "
                f"{'/'.join(map(str, SIZES))} px q{QUALITY}, rounds of {chunk}",
                runs,
                "Pillow calls directly",
            )
        if "video" not in skip:
            video = scratch / "video.mp4"
            make_video(video)
            ffmpeg_poster(video, out / "poster.webp")
            jobs.run(jobs.store(video, "video/mp4"))

            def video_job(r: int) -> tuple[float, float, int]:
                media_id = jobs.store(video, "video/mp4")
                started = time.perf_counter()
                cpu, rss = jobs.run(media_id)
                return cpu, time.perf_counter() - started, rss

            def video_ffmpeg(r: int) -> tuple[float, float, int]:
                started = time.perf_counter()
                cpu, rss = ffmpeg_poster(video, out / "poster.webp")
                return cpu, time.perf_counter() - started, rss

            runs = interleaved(video_rounds, video_job, video_ffmpeg)
            ok &= compare("video poster: 20 s 1080p H.264 -> 1280 px WebP", runs, "ffmpeg CLI")
        if "audio" not in skip:
            wav = scratch / "audio.wav"
            make_wav(wav, minutes)
            samples = minutes * 60 * 48_000
            audio_anchor(wav, scratch, samples)
            jobs.run(jobs.store(wav, "audio/wav"))

            def audio_job(r: int) -> tuple[float, float, int]:
                media_id = jobs.store(wav, "audio/wav")
                started = time.perf_counter()
                cpu, rss = jobs.run(media_id)
                return cpu, time.perf_counter() - started, rss

            def audio_ffmpeg(r: int) -> tuple[float, float, int]:
                started = time.perf_counter()
                cpu, rss = audio_anchor(wav, scratch, samples)
                return cpu, time.perf_counter() - started, rss

            runs = interleaved(audio_rounds, audio_job, audio_ffmpeg)
            ok &= compare(
                f"audio: {minutes} min 48 kHz stereo WAV -> waveform ({POINTS} points) + Opus",
                runs,
                "ffmpeg CLI: Opus file + astats peaks",
            )
        jobs.close()
        if "workers" not in skip:
            job_photos = [distinct[i % len(distinct)] for i in range(jobs_n + 2)]
            results: dict[int, list[dict[str, float]]] = {1: [], 2: []}
            for r in range(job_rounds):
                for processes in (1, 2) if r % 2 == 0 else (2, 1):
                    n = processes  # the first `processes` photos are the warm-up jobs
                    results[processes].append(
                        worker_processes(
                            job_photos[2 - n :], scratch / f"workers-{r}-{processes}", processes
                        )
                    )
            print(
                f"\njobs per second: {jobs_n} photo jobs, `flask worker --concurrency 1` processes "
                f"(medians of {job_rounds} rounds)"
            )
            print(f"  {'':<20} {'jobs/s':>8} {'CPU s/job':>10} {'wall s':>8} {'RSS MiB':>9}")
            rate = {}
            for processes, rs in results.items():
                rate[processes] = statistics.median(x["jobs_s"] for x in rs)
                print(
                    f"  {f'{processes} process(es)':<20} {rate[processes]:>8.2f} "
                    f"{statistics.median(x['cpu'] for x in rs):>10.3f} "
                    f"{statistics.median(x['wall'] for x in rs):>8.1f} "
                    f"{max(x['rss'] for x in rs) / MiB:>9.0f}"
                )
            scaling = rate[2] / rate[1]
            passed = scaling >= TARGET_SCALING
            ok &= passed
            print(
                f"  two / one: {scaling:.2f} (target >= {TARGET_SCALING}) "
                f"{'PASS' if passed else 'MISS'}"
            )
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0 if ok else 1


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - started:.0f} s)")
    raise SystemExit(code)
