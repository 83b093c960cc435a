"""Processes for the benchmark: moto and gunicorn on loopback, and /proc sampling of CPU and RSS.

Everything started here is recorded in a ``Procs`` and stopped by PID in ``stop_all`` (the run
calls it from ``finally``). No psutil: CPU is utime+stime from /proc/<pid>/stat, memory is VmRSS
from /proc/<pid>/status, children come from /proc/<pid>/task/<pid>/children (or a /proc scan).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
MiB = 1 << 20
MOTO_KEY_BUFFER = 16 * MiB


# -- /proc -----------------------------------------------------------------------------------------
def proc_cpu(pid: int) -> float | None:
    """user+sys CPU seconds of a process (all its threads), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def proc_rss(pid: int) -> int | None:
    """VmRSS in bytes, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        pass
    except OSError:
        return []
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    raw = f.read()
            except OSError:
                continue
            if int(raw[raw.rindex(b")") + 2 :].split()[1]) == pid:
                found.append(int(name))
    return found


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def system_busy() -> float:
    """CPU seconds all processes on the machine have used (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


QUIET = {"wait": 20.0, "budget": 120.0, "waited": 0.0}


def wait_quiet(
    max_wait: float | None = None, threshold: float = 0.25, window: float = 0.5
) -> float:
    """Wait (up to ``max_wait`` s) until the machine's other load is below ``threshold`` cores.

    Called while none of the benchmark's own processes is working, so everything busy is
    someone else's. All waits of a run together stop at ``QUIET["budget"]`` seconds.
    Returns the last load seen (cores).
    """
    max_wait = QUIET["wait"] if max_wait is None else max_wait
    started = time.monotonic()
    deadline = started + max(0.0, min(max_wait, QUIET["budget"] - QUIET["waited"]))
    try:
        while True:
            b0 = system_busy()
            time.sleep(window)
            load = (system_busy() - b0) / window
            if load < threshold or time.monotonic() >= deadline:
                return load
    finally:
        QUIET["waited"] += time.monotonic() - started


class Sampler:
    """Samples a gunicorn master and its workers every ``interval`` s until stopped.

    cpu_s: user+sys seconds of master + workers between start and stop (a worker that appears
    meanwhile counts from 0, one that exits counts up to its last sample).
    peak_workers_rss: the largest sum of the workers' VmRSS seen in one sample.
    peak_worker_rss: the largest single worker's VmRSS. idle_*: the first sample.
    """

    def __init__(self, master: int, interval: float = 0.05, extra: dict[str, int] | None = None):
        self.master = master
        self.interval = interval
        self.extra = extra or {}  # name -> pid: CPU only (e.g. moto)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self.samples = 0
        self.idle_workers_rss = 0
        self.idle_master_rss = 0
        self.peak_workers_rss = 0
        self.peak_worker_rss = 0
        self.peak_master_rss = 0
        self.workers_seen: set[int] = set()
        self._extra_first: dict[str, float] = {}
        self.extra_cpu: dict[str, float] = {}
        self.rss_trace: list[tuple[float, int]] = []
        self._t0 = 0.0

    def start(self) -> Sampler:
        self._t0 = time.monotonic()
        for pid in [self.master, *children(self.master)]:
            cpu = proc_cpu(pid)
            if cpu is not None:
                self._cpu_first[pid] = self._cpu_last[pid] = cpu
        for name, pid in self.extra.items():
            self._extra_first[name] = proc_cpu(pid) or 0.0
        self._sample(first=True)
        self._sys0, self._wall0 = system_busy(), time.monotonic()
        self._thread.start()
        return self

    def _sample(self, first: bool = False) -> None:
        workers = children(self.master) or [self.master]  # one process (Node): its own worker
        self.workers_seen.update(workers)
        total = 0
        for pid in workers:
            rss = proc_rss(pid)
            if rss is None:
                continue
            total += rss
            self.peak_worker_rss = max(self.peak_worker_rss, rss)
        master_rss = proc_rss(self.master) or 0
        self.peak_workers_rss = max(self.peak_workers_rss, total)
        self.peak_master_rss = max(self.peak_master_rss, master_rss)
        if first:
            self.idle_workers_rss, self.idle_master_rss = total, master_rss
        self.rss_trace.append((round(time.monotonic() - self._t0, 3), total))
        for pid in [self.master, *workers]:
            cpu = proc_cpu(pid)
            if cpu is not None:
                self._cpu_first.setdefault(pid, 0.0)  # new since start: count from 0
                self._cpu_last[pid] = cpu
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> Sampler:
        self._stop.set()
        self._thread.join()
        self._sample()
        for name, pid in self.extra.items():
            self.extra_cpu[name] = (proc_cpu(pid) or 0.0) - self._extra_first[name]
        self.system_cpu = system_busy() - self._sys0
        self.wall = time.monotonic() - self._wall0
        return self

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu_last[pid] - self._cpu_first[pid] for pid in self._cpu_last)


class CpuMeter:
    """CPU seconds of some processes between start() and stop() (for runs without gunicorn)."""

    def __init__(self, pids: dict[str, int], include_self: bool = True):
        self.pids = pids
        self.include_self = include_self
        self.cpu: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self._first = {name: proc_cpu(pid) or 0.0 for name, pid in self.pids.items()}
        self._self_first = self_cpu()
        self._sys0, self._wall0 = system_busy(), time.monotonic()
        return self

    def stop(self) -> CpuMeter:
        self.cpu = {
            name: (proc_cpu(pid) or 0.0) - self._first[name] for name, pid in self.pids.items()
        }
        if self.include_self:
            self.cpu["self"] = self_cpu() - self._self_first
        self.system_cpu = system_busy() - self._sys0
        self.wall = time.monotonic() - self._wall0
        return self

    @property
    def foreign_cores(self) -> float:
        """Cores used meanwhile by processes not measured here (other load on the machine)."""
        return max(0.0, self.system_cpu - sum(self.cpu.values())) / self.wall if self.wall else 0.0


# -- processes -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} for {url} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


@dataclass
class Procs:
    """Every process this run started, stopped by PID (workers too) in reverse order."""

    started: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def popen(self, name: str, args: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(args, **kwargs)
        self.started.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 20.0) -> None:
        if proc.poll() is None:
            kids = children(proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in kids:  # gunicorn workers of this master only
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                proc.kill()
                proc.wait()
        self.started = [(n, p) for n, p in self.started if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.started)):
            try:
                self.stop(proc)
            except Exception as exc:  # keep stopping the others
                print(f"warning: could not stop pid {proc.pid}: {exc}", file=sys.stderr)


def start_moto(procs: Procs, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(log_path, "wb")
    # moto keeps an object or part in memory up to this size and spools anything larger to a
    # temporary file; its default (5 MiB - 1 KiB) puts every 8 MiB part on disk. 16 MiB keeps
    # parts and small files in memory: a cheaper, steadier stand-in for S3 for both paths.
    env = {**os.environ, **aws_env(), "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(MOTO_KEY_BUFFER)}
    proc = procs.popen(
        "moto",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/moto-api/", proc)
    return proc, url


def start_multer(
    procs: Procs, moto_url: str, bucket: str, prefix: str, log_path: Path
) -> tuple[subprocess.Popen, str]:
    """express + multer + multer-s3 (bench/multer/server.mjs; `npm ci` there first)."""
    here = ROOT / "bench" / "multer"
    if not (here / "node_modules").is_dir():
        raise RuntimeError("bench/multer has no node_modules: run `npm ci` there (make bench does)")
    port = free_port()
    env = {
        **os.environ,
        **aws_env(),
        "PORT": str(port),
        "S3_ENDPOINT": moto_url,
        "BUCKET": bucket,
        "PREFIX": prefix,
    }
    log = open(log_path, "ab")
    proc = procs.popen(
        "multer", ["node", "server.mjs"], cwd=here, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc)
    return proc, url


def aws_env() -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def gateway_env(
    tmp: Path,
    *,
    storage_url: str,
    moto_url: str = "",
    jwt_secret: str,
    max_upload: int,
    workers: int | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "AWS_"))}
    env.update(aws_env())
    env.update(
        {
            "GATEWAY_STORAGE_URL": storage_url,
            "GATEWAY_RECORDS_URL": f"sqlite:///{tmp / 'records.db'}",
            "GATEWAY_ORPHAN_JOURNAL": str(tmp / "orphans.jsonl"),
            "GATEWAY_QUEUE_URL": f"sqlite:///{tmp / 'queue.db'}",
            "GATEWAY_PROCESSING": "off",  # the upload path alone (bench/pipeline.py: the rest)
            "GATEWAY_SHUTDOWN_DELAY": "0",  # no load balancer to drain between runs
            "GATEWAY_JWT_SECRET": jwt_secret,
            "GATEWAY_MAX_UPLOAD_BYTES": str(max_upload),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if moto_url:
        env["GATEWAY_S3_ENDPOINT_URL"] = moto_url
    if workers is not None:
        env["GATEWAY_WORKERS"] = str(workers)
    return env


def snapshot_source(dest: Path) -> tuple[Path, str]:
    """Copy the code under test (gateway/, wsgi.py, gunicorn.conf.py) to ``dest``.

    Others may edit the working tree while a run is going; every gunicorn of the run (and the
    bench's own imports of ``gateway``) use this copy, so a run measures one version of the code.
    Returns the copy and a SHA-256 over its files.
    """
    import hashlib
    import shutil

    dest.mkdir(parents=True)
    shutil.copytree(
        ROOT / "gateway", dest / "gateway", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    for name in ("wsgi.py", "gunicorn.conf.py"):
        shutil.copy2(ROOT / name, dest / name)
    digest = hashlib.sha256()
    for path in sorted(p for p in dest.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(dest)).encode() + b"\0" + path.read_bytes())
    return dest, digest.hexdigest()


SOURCE = {"dir": ROOT}  # where gunicorn and flask run from: the snapshot once one is taken


def snapshot_rev(rev: str, dest: Path) -> tuple[Path, str]:
    """The same files as ``snapshot_source`` at git revision ``rev``; returns the copy and the
    full commit id."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", commit, "gateway", "wsgi.py", "gunicorn.conf.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest, commit


@contextlib.contextmanager
def running_from(source: Path) -> Iterator[None]:
    """gunicorn and flask commands started inside run the code in ``source``."""
    before = SOURCE["dir"]
    SOURCE["dir"] = source
    try:
        yield
    finally:
        SOURCE["dir"] = before


def flask_cmd(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [str(BIN / "flask"), "--app", "wsgi", *args],
        cwd=SOURCE["dir"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout.strip()


def start_gunicorn(
    procs: Procs, env: dict[str, str], log_path: Path, config: str = "gunicorn.conf.py"
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**env, "GATEWAY_BIND": f"127.0.0.1:{port}"}
    log = open(log_path, "ab")
    proc = procs.popen(
        "gunicorn",
        [str(BIN / "gunicorn"), "-c", config, "wsgi:app"],
        cwd=SOURCE["dir"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc)
    want = int(env.get("GATEWAY_WORKERS", os.cpu_count() or 1))
    deadline = time.monotonic() + 30
    while len(children(proc.pid)) < want and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc, url
