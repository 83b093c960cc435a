"""tus benchmark: the gateway's /api/tus/ vs the reference @tus/server + @tus/s3-store, and the
gateway's own multipart POST /api/upload, side by side against ONE moto server, in one run.

    .venv/bin/python bench/tus.py            # 1 x 512 MiB, 8 x 64 MiB (+ 1 x 64 MiB), 3 runs each
    .venv/bin/python bench/tus.py --quick    # 1 x 64 MiB, 4 x 16 MiB (+ 1 x 16 MiB), 1 run each
    .venv/bin/python bench/tus.py --baseline-rev 198f115   # + the gateway's tus at that commit

The three servers:
  gateway tus   gunicorn (gunicorn.conf.py) with the gateway in S3 mode on moto, SQLite records,
                tus at /api/tus/ (its part size = GATEWAY_DIRECT_PART_SIZE, 8 MiB);
  @tus/server   node tests/node/tus_server.mjs (@tus/server + @tus/s3-store, 8 MiB parts) on the
                same moto, its own bucket;
  gateway form  the same gateway, multipart/form-data POST /api/upload (bench/run.py's client);
  gateway@rev   with --baseline-rev: the gateway's tus at that git revision (bench/run.py's
                ``prepare_baseline``: its code checked out beside this one, its own records),
                the same settings, interleaved with the others in the same run.
Both tus servers get the same client: tuspy (``tusclient``), one upload per thread, from a
temporary file, CHUNK (8 MiB) per PATCH, metadata projectId=bench, filename=x.mp4, and the
gateway's bearer token (the reference server ignores it). The file content is bench/client.py's
Payload (a PNG signature, then random bytes repeated): the gateway sniffs it as image/png.

Every run starts a fresh server, warms it up, empties the buckets, then samples the server's
process tree (/proc: CPU and RSS) and moto's CPU while the uploads run; afterwards each stored
object is checked in moto (count, size, SHA-256 of its bytes, nothing left over), and a run with
any mismatch counts as errors. Prints the tables (bench/README.md, "tus") and writes everything
to bench/results/<timestamp>-tus[-quick].json. Every process started here is stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NODE_DIR = ROOT / "tests" / "node"
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402
    BUCKET,
    JWT_SECRET,
    MAX_CPU_OVER_BASELINE,
    MAX_LOCAL_RSS_DELTA,
    MAX_RSS_PER_UPLOAD,
    Baseline,
    GiB,
    aggregate,
    empty_bucket,
    environment,
    format_targets,
    log,
    mib,
    prepare_baseline,
    warm_moto,
    warm_up,
)
from tusclient import client as tus_client  # noqa: E402
from tusclient.exceptions import TusCommunicationError  # noqa: E402

from client import MiB, Payload, RunResult, gateway_one, run_many  # noqa: E402
from procs import (  # noqa: E402
    QUIET,
    SOURCE,
    Procs,
    Sampler,
    aws_env,
    flask_cmd,
    free_port,
    gateway_env,
    proc_rss,
    snapshot_source,
    start_gunicorn,
    start_moto,
    wait_http,
    wait_quiet,
)

REF_BUCKET = "bench-tusref"
CHUNK = 8 * MiB  # bytes per PATCH, for both tus servers (= both servers' part size)
METADATA = {"projectId": "bench", "filename": "x.mp4"}
WARM_SIZE = 16 * MiB
PATHS = {"gw-tus": "gateway tus", "ref-tus": "@tus/server", "gw-form": "gateway form"}
BASE = "base-tus"  # the gateway's tus at --baseline-rev (named gateway@<rev> in the tables)


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    count: int
    size: int
    concurrency: int
    speed: bool  # a throughput/CPU target applies (else: the memory reference only)


def scenarios(quick: bool) -> list[Scenario]:
    if quick:
        return [
            Scenario("a", "(a) 1 x 64 MiB", 1, 64 * MiB, 1, True),
            Scenario("b", "(b) 4 x 16 MiB @4", 4, 16 * MiB, 4, True),
            Scenario("r", "(r) 1 x 16 MiB", 1, 16 * MiB, 1, False),
        ]
    return [
        Scenario("a", "(a) 1 x 512 MiB", 1, 512 * MiB, 1, True),
        Scenario("b", "(b) 8 x 64 MiB @8", 8, 64 * MiB, 8, True),
        Scenario("r", "(r) 1 x 64 MiB", 1, 64 * MiB, 1, False),
    ]


class TreeSampler(Sampler):
    """procs.Sampler, plus the server tree's RSS: master (or node) + children, summed per sample."""

    def __init__(self, master: int, extra: dict[str, int] | None = None) -> None:
        super().__init__(master, extra=extra)
        self.idle_tree_rss = 0
        self.peak_tree_rss = 0

    def _sample(self, first: bool = False) -> None:
        super()._sample(first)
        tree = self.rss_trace[-1][1] + (proc_rss(self.master) or 0)
        self.peak_tree_rss = max(self.peak_tree_rss, tree)
        if first:
            self.idle_tree_rss = tree


# -- the tus client ------------------------------------------------------------------------------------
def tus_one(
    endpoint: str, headers: dict[str, str], file: Path, size: int, urls: list[str]
) -> Callable[[int], tuple[bool, float, str]]:
    """One tuspy upload of ``file`` (creation, then PATCHes of CHUNK bytes), timed to the end."""

    def one(_: int) -> tuple[bool, float, str]:
        started = time.perf_counter()
        uploader = tus_client.TusClient(endpoint, headers=headers).uploader(
            file_path=str(file), chunk_size=CHUNK, metadata=METADATA
        )
        try:
            uploader.upload()
        except TusCommunicationError as exc:  # TusUploadFailed too
            body = (exc.response_content or b"")[:200]
            return False, time.perf_counter() - started, f"{exc.status_code} {exc} {body!r}"
        seconds = time.perf_counter() - started
        urls.append(uploader.url or "")
        ok = uploader.offset == size
        return ok, seconds, "" if ok else f"offset {uploader.offset} of {size}"

    return one


def write_file(path: Path, payload: Payload, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for piece in payload.chunks(size):
            f.write(piece)
            digest.update(piece)
    return digest.hexdigest()


# -- checking what moto holds ----------------------------------------------------------------------
def check_stored(s3: Any, bucket: str, sc: Scenario, sha256: str) -> tuple[list[str], int]:
    """Errors (wrong count, size or bytes; leftovers anywhere in the bucket) and how many objects
    are verified."""
    finals, leftovers = [], []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if "/.tus/" in key or key.startswith(".tus/") or key.endswith(".part"):
                leftovers.append(key)  # the gateway's chunk area; s3-store's incomplete parts
            elif not key.endswith(".info"):  # @tus/s3-store keeps <id>.info next to each one
                finals.append((key, obj["Size"]))
    errors = []
    if len(finals) != sc.count:
        errors.append(f"bucket holds {len(finals)} objects, expected {sc.count}")
    if leftovers:
        errors.append(f"{len(leftovers)} leftover objects, e.g. {leftovers[0]}")
    unfinished = [
        up
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket)
        for up in page.get("Uploads", [])
    ]
    if unfinished:
        errors.append(f"{len(unfinished)} multipart uploads left open")
    verified = 0
    for key, size in finals:
        if size != sc.size:
            errors.append(f"{key}: {size} bytes, expected {sc.size}")
            continue
        digest = hashlib.sha256()
        for piece in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(MiB):
            digest.update(piece)
        if digest.hexdigest() != sha256:
            errors.append(f"{key}: sha256 {digest.hexdigest()[:12]}, expected {sha256[:12]}")
        else:
            verified += 1
    return errors, verified


# -- one measured run ------------------------------------------------------------------------------
@dataclass
class Ctx:
    procs: Procs
    tmp: Path
    env: dict[str, str]
    token: str
    payload: Payload
    s3: Any  # the gateway's botocore S3 client
    moto_pid: int
    moto_url: str
    files: dict[int, tuple[Path, str]]  # size -> (file, sha256)
    workers: int
    baseline: Baseline | None = None


def start_node(ctx: Ctx) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log_file = open(ctx.tmp / "tus-node.log", "ab")
    proc = ctx.procs.popen(
        "tus-node",
        ["node", "tus_server.mjs", str(port), ctx.moto_url, REF_BUCKET],
        cwd=NODE_DIR,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TMPDIR": str(ctx.tmp)},  # s3-store splits parts into temp files
    )
    url = f"http://127.0.0.1:{port}/files/"
    wait_http(url, proc)
    return proc, url


def run_path(path: str, sc: Scenario, ctx: Ctx) -> dict:
    file, sha256 = ctx.files[sc.size]
    warm_file = ctx.files[WARM_SIZE][0]
    headers = {"Authorization": f"Bearer {ctx.token}"}
    urls: list[str] = []
    token, env, source = ctx.token, ctx.env, contextlib.nullcontext()
    if path == BASE:
        assert ctx.baseline is not None
        token, env, source = ctx.baseline.token, ctx.baseline.env, ctx.baseline.running()
        headers = {"Authorization": f"Bearer {token}"}
    if path == "ref-tus":
        server, endpoint = start_node(ctx)
        base_url, bucket = "", REF_BUCKET
        warm = run_many(4, WARM_SIZE, 4, tus_one(endpoint, headers, warm_file, WARM_SIZE, []))
    else:
        with source:
            server, base_url = start_gunicorn(ctx.procs, env, ctx.tmp / "gunicorn.log")
        endpoint = f"{base_url}/api/tus/"
        bucket = BUCKET
        # the same warm-up for every gateway path: multipart form uploads, then tus uploads,
        # each reaching every worker (so all start from the same heap)
        warm_up(base_url, token, ctx.payload, ctx.workers * 2)
        n = 2 * ctx.workers
        warm = run_many(n, WARM_SIZE, n, tus_one(endpoint, headers, warm_file, WARM_SIZE, []))
    try:
        if warm.errors:
            raise RuntimeError(f"{path} warm-up failed: {warm.errors[:2]}")
        empty_bucket(ctx.s3, bucket)
        time.sleep(0.5)
        quiet = wait_quiet()
        sampler = TreeSampler(server.pid, extra={"moto": ctx.moto_pid})
        sampler.start()
        client_cpu0 = os.times()
        if path == "gw-form":
            one = gateway_one(base_url, token, ctx.payload, sc.size, sc.key)
        else:
            one = tus_one(endpoint, headers, file, sc.size, urls)
        run = run_many(sc.count, sc.size, sc.concurrency, one)
        sampler.stop()
        client_cpu1 = os.times()
    finally:
        ctx.procs.stop(server)
    errors = list(run.errors)
    if path != "gw-form" and len(set(urls)) != len(urls):
        errors.append(f"{len(urls)} uploads got {len(set(urls))} distinct URLs")
    stored_errors, verified = check_stored(ctx.s3, bucket, sc, sha256)
    errors += stored_errors
    empty_bucket(ctx.s3, bucket)
    return metrics(run, sampler, client_cpu1, client_cpu0, errors, verified, quiet)


def metrics(
    run: RunResult,
    sampler: TreeSampler,
    cpu1: os.times_result,
    cpu0: os.times_result,
    errors: list[str],
    verified: int,
    quiet: float,
) -> dict:
    gib = run.bytes / GiB
    client_cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    moto_cpu = sampler.extra_cpu["moto"]
    own = sampler.cpu_s + moto_cpu + client_cpu
    return {
        **run.summary(),
        "errors": len(errors),
        "first_errors": errors[:3],
        "verified": verified,
        "load_before": round(quiet, 2),
        "foreign_cores": round(max(0.0, sampler.system_cpu - own) / sampler.wall, 2),
        "cpu_s": round(sampler.cpu_s, 2),
        "cpu_s_per_gib": round(sampler.cpu_s / gib, 2),
        "moto_cpu_s_per_gib": round(moto_cpu / gib, 2),
        "client_cpu_s_per_gib": round(client_cpu / gib, 2),
        "busy_cores": round(own / run.wall_s, 2),
        "idle_rss_mib": mib(sampler.idle_tree_rss),
        "peak_rss_mib": mib(sampler.peak_tree_rss),
        "rss_growth_per_upload_mib": mib(
            (sampler.peak_tree_rss - sampler.idle_tree_rss) / run.concurrency
        ),
        "processes_seen": 1 + len(sampler.workers_seen),
        "rss_samples": sampler.samples,
    }


def aggregate_path(runs: list[dict]) -> dict:
    out = aggregate(runs)  # medians (RSS growth: the largest) as bench/run.py reports them
    out["idle_rss_mib"] = sorted(r["idle_rss_mib"] for r in runs)[len(runs) // 2]
    out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    out["verified"] = sum(r["verified"] for r in runs)
    return out


# -- output ----------------------------------------------------------------------------------------
def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else 0.0


def format_table(results: dict, scs: list[Scenario], reps: int, names: dict[str, str]) -> str:
    head = (
        f"{'scenario':<20} {'server':<15} {'MiB/s':>6} {'p50 s':>6} {'max s':>6} "
        f"{'CPU s/GiB':>9} {'moto s/GiB':>10} {'busy':>5} {'other':>5} {'RSS idle':>8} "
        f"{'RSS peak':>8} {'+MiB/upl':>8} {'ok':>5} {'err':>3}  MiB/s of each run"
    )
    lines = [
        f"tus and form uploads: median of {reps} run(s) per server (RSS peak, +MiB/upl: the "
        f"largest); tus chunk {CHUNK // MiB} MiB; RSS of the server's process tree, MiB",
        head,
        "-" * len(head),
    ]
    for sc in scs:
        r = results[sc.key]
        for n, path in enumerate(names):
            p = r[path]
            lines.append(
                f"{sc.label if n == 0 else '':<20} {names[path]:<15} {p['mib_s']:>6.1f} "
                f"{p['p50_s']:>6.2f} {p['max_s']:>6.2f} {p['cpu_s_per_gib']:>9.2f} "
                f"{p['moto_cpu_s_per_gib']:>10.2f} {p['busy_cores']:>5.2f} "
                f"{p['foreign_cores']:>5.2f} {p['idle_rss_mib']:>8.1f} {p['peak_rss_mib']:>8.1f} "
                f"{p['rss_growth_per_upload_mib']:>8.1f} {p['verified']:>5} {p['errors']:>3}  "
                + "/".join(f"{v:.0f}" for v in p["mib_s_runs"])
            )
        g = r["gw-tus"]
        for other, label in (("ref-tus", "tus gw/ref"), (BASE, "tus gw/@rev")):
            if other not in names:
                continue
            t = r[other]
            lines.append(
                f"{'':<20} {label:<15} {ratio(g['mib_s'], t['mib_s']):>6.2f} "
                f"{ratio(g['p50_s'], t['p50_s']):>6.2f} {ratio(g['max_s'], t['max_s']):>6.2f} "
                f"{ratio(g['cpu_s_per_gib'], t['cpu_s_per_gib']):>9.2f} "
                f"{ratio(g['moto_cpu_s_per_gib'], t['moto_cpu_s_per_gib']):>10.2f} "
                f"{'':>5} {'':>5} {'':>8} {'':>8} "
                f"{ratio(g['rss_growth_per_upload_mib'], t['rss_growth_per_upload_mib']):>8.2f}"
            )
        if "gw-form" in names:
            lines.append(f"{'':<20} {'tus/form':<15} {r['tus_vs_form']:>6.2f}  (MiB/s)")
    lines += [
        "  MiB/s: file bytes / wall time from the first request to the last answer. p50/max s: "
        "one upload, first request to last answer.",
        "  CPU s/GiB: user+sys of the server's process tree (gunicorn master + workers, or the "
        "node process) per GiB uploaded. moto s/GiB: the S3 stand-in's.",
        "  busy: cores used by server + moto + this client over wall time; other: cores used "
        "by processes outside the benchmark meanwhile (noise).",
        "  RSS idle/peak: VmRSS summed over the tree, before / at most during the uploads; "
        "+MiB/upl = (peak - idle) / uploads at once.",
        "  ok: objects verified in moto, all runs together (size and SHA-256 of the bytes); "
        "err: failed uploads or wrong/missing/leftover objects (targets then MISS).",
        "  gateway@rev (--baseline-rev): the gateway's tus at that revision, same settings, same "
        "run; tus gw/@rev: this code over that one (+MiB/upl too).",
    ]
    return "\n".join(lines)


def targets(results: dict, scs: list[Scenario], paths: list[str]) -> list[dict]:
    rows = []
    compared = [p for p in ("gw-tus", "ref-tus", BASE) if p in paths]

    def valid(*keys: str) -> bool:
        return all(not results[k][p]["errors"] for k in keys for p in compared)

    for sc in scs:
        if not sc.speed:
            continue
        r = results[sc.key]
        if BASE in paths:
            rows.append(
                {
                    "target": f"{sc.label}: CPU s/GiB gateway tus / @{r['baseline_rev']}",
                    "value": r["base_cpu_ratio"],
                    "limit": f"<= {MAX_CPU_OVER_BASELINE}",
                    "ok": valid(sc.key) and 0 < r["base_cpu_ratio"] <= MAX_CPU_OVER_BASELINE,
                }
            )
        if "ref-tus" not in paths:
            continue
        rows.append(
            {
                "target": f"{sc.label}: MiB/s gateway tus / @tus/server",
                "value": r["throughput_ratio"],
                "limit": ">= 1.0",
                "ok": valid(sc.key) and r["throughput_ratio"] >= 1.0,
            }
        )
        rows.append(
            {
                "target": f"{sc.label}: CPU s/GiB gateway tus / @tus/server",
                "value": r["cpu_ratio"],
                "limit": "<= 0.5",
                "ok": valid(sc.key) and 0 < r["cpu_ratio"] <= 0.5,
            }
        )
    for sc in scs:
        growth = results[sc.key]["gw-tus"]["rss_growth_per_upload_mib"]
        rows.append(
            {
                "target": f"{sc.label}: gateway tus RSS +MiB per upload",
                "value": growth,
                "limit": f"<= {MAX_RSS_PER_UPLOAD // MiB}",
                "ok": valid(sc.key) and growth <= MAX_RSS_PER_UPLOAD / MiB,
            }
        )
    big = next((sc for sc in scs if sc.key == "a"), None)
    ref = next((sc for sc in scs if sc.key == "r"), None)
    if big and ref:
        delta = round(
            results["a"]["gw-tus"]["rss_growth_per_upload_mib"]
            - results["r"]["gw-tus"]["rss_growth_per_upload_mib"],
            1,
        )
        rows.append(
            {
                "target": f"gateway tus RSS +MiB/upl, {big.size // MiB} - {ref.size // MiB} MiB file",
                "value": delta,
                "limit": f"<= {MAX_LOCAL_RSS_DELTA // MiB}",
                "ok": valid("a", "r") and delta <= MAX_LOCAL_RSS_DELTA / MiB,
            }
        )
    return rows


def node_environment() -> dict:
    def version(package: str) -> str:
        meta = NODE_DIR / "node_modules" / package / "package.json"
        try:
            return str(json.loads(meta.read_text())["version"])
        except (OSError, ValueError, KeyError):
            return ""

    node = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10)
    return {
        "node": node.stdout.strip(),
        "@tus/server": version("@tus/server"),
        "@tus/s3-store": version("@tus/s3-store"),
    }


# -- main ------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run: a sanity run")
    parser.add_argument("--only", default="abr", help="scenarios to run, e.g. 'a' or 'br'")
    parser.add_argument("--reps", type=int, default=None, help="runs per server (3; --quick 1)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="before each measured run, wait up to this many seconds for other load to fall "
        "below 0.25 cores (default 10, --quick 2; 0: don't)",
    )
    parser.add_argument("--quiet-budget", type=float, default=90.0, help="in all, at most")
    parser.add_argument("--tmp", default=None, help="scratch directory (the upload files)")
    parser.add_argument(
        "--baseline-rev",
        default=None,
        help="also run the gateway's tus at this git revision, interleaved with the others in "
        "the same run (CPU, throughput and RSS of this code against that one)",
    )
    parser.add_argument(
        "--servers",
        default=",".join(PATHS),
        help=f"which of {', '.join(PATHS)} to run (gw-tus always runs; default: all)",
    )
    args = parser.parse_args()
    os.environ.update(aws_env())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop everything
    reps = args.reps or (1 if args.quick else 3)
    QUIET["wait"] = args.quiet_wait if args.quiet_wait is not None else (2 if args.quick else 10)
    QUIET["budget"] = args.quiet_budget
    scs = [sc for sc in scenarios(args.quick) if sc.key in args.only]
    chosen = {"gw-tus", *args.servers.split(",")}
    if chosen - set(PATHS):
        parser.error(f"--servers: unknown {', '.join(sorted(chosen - set(PATHS)))}")
    names = {p: label for p, label in PATHS.items() if p in chosen}

    started = time.time()
    out: dict = {
        "quick": args.quick,
        "reps": reps,
        "chunk_size": CHUNK,
        "metadata": METADATA,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "environment": {**environment(), **node_environment()},
        "scenarios": {},
    }
    from importlib.metadata import version

    out["environment"]["packages"]["tuspy"] = version("tuspy")
    procs = Procs()
    payload = Payload()
    tmp = Path(tempfile.mkdtemp(prefix="upload-gateway-bench-tus-", dir=args.tmp))
    try:
        SOURCE["dir"], out["environment"]["source_sha256"] = snapshot_source(tmp / "src")
        sys.path.insert(0, str(SOURCE["dir"]))
        from gateway.config import Settings
        from gateway.storage.resumable import part_size_for
        from gateway.storage.s3 import make_s3_client

        moto, moto_url = start_moto(procs, tmp / "moto.log")
        log(f"moto at {moto_url} (pid {moto.pid}); scratch {tmp}")
        gw_tmp = tmp / "gw"
        gw_tmp.mkdir()
        env = gateway_env(
            gw_tmp,
            storage_url=f"s3://{BUCKET}/up",
            moto_url=moto_url,
            jwt_secret=JWT_SECRET,
            max_upload=max(max((sc.size for sc in scs), default=0) + 64 * MiB, 1 * GiB),
        )
        flask_cmd(env, "init")
        token = flask_cmd(env, "token", "--sub", "bench", "--ttl", "2h")
        settings = Settings.from_env(env)
        s3 = make_s3_client(settings)
        s3.create_bucket(Bucket=REF_BUCKET)
        workers = int(env.get("GATEWAY_WORKERS", os.cpu_count() or 1))
        out["gateway_settings"] = {
            "worker_class": env.get("GATEWAY_WORKER_CLASS", "gunicorn.conf.py default"),
            "workers": workers,
            "tus_part_size": part_size_for(  # as TusService.part_size_for
                max((sc.size for sc in scs), default=WARM_SIZE), at_least=settings.direct_part_size
            ),
            "form_part_size": settings.effective_part_size,
            "form_parts_in_flight": settings.s3_parts_in_flight,
            "read_size": settings.read_size,
            "tus_max_bytes": settings.tus_max_bytes,
        }
        files = {}
        for size in sorted({WARM_SIZE, *(sc.size for sc in scs)}):
            file = tmp / f"payload-{size // MiB}MiB.bin"
            files[size] = (file, write_file(file, payload, size))
        ctx = Ctx(procs, tmp, env, token, payload, s3, moto.pid, moto_url, files, workers)
        if args.baseline_rev:
            ctx.baseline = prepare_baseline(args.baseline_rev, env, tmp)
            out["environment"]["baseline_commit"] = ctx.baseline.commit
            names[BASE] = f"gateway@{ctx.baseline.rev}"
        warm_moto(s3, payload)

        order = list(names)
        for sc in scs:
            runs: dict[str, list[dict]] = {p: [] for p in order}
            for rep in range(reps):
                shift = rep % len(order)
                for path in order[shift:] + order[:shift]:  # rotate who goes first
                    r = run_path(path, sc, ctx)
                    runs[path].append(r)
                    log(
                        f"{sc.label} #{rep + 1} {names[path]}: {r['mib_s']} MiB/s, "
                        f"{r['cpu_s_per_gib']} CPU s/GiB, peak RSS {r['peak_rss_mib']} MiB "
                        f"(+{r['rss_growth_per_upload_mib']}/upload), other load "
                        f"{r['foreign_cores']}, verified {r['verified']}, errors {r['errors']} "
                        f"{r['first_errors'][:1]}"
                    )
            agg = {p: aggregate_path(runs[p]) for p in order}
            g = agg["gw-tus"]
            out["scenarios"][sc.key] = {"label": sc.label, **agg}
            if "ref-tus" in agg:
                t = agg["ref-tus"]
                out["scenarios"][sc.key]["throughput_ratio"] = ratio(g["mib_s"], t["mib_s"])
                out["scenarios"][sc.key]["cpu_ratio"] = ratio(
                    g["cpu_s_per_gib"], t["cpu_s_per_gib"]
                )
            if "gw-form" in agg:
                out["scenarios"][sc.key]["tus_vs_form"] = ratio(g["mib_s"], agg["gw-form"]["mib_s"])
            if ctx.baseline is not None:
                b = agg[BASE]
                out["scenarios"][sc.key]["baseline_rev"] = ctx.baseline.rev
                out["scenarios"][sc.key]["base_cpu_ratio"] = ratio(
                    g["cpu_s_per_gib"], b["cpu_s_per_gib"]
                )
    except BaseException:
        traceback.print_exc()
        for name in ("gunicorn.log", "tus-node.log"):
            log_path = tmp / name
            if log_path.exists():
                tail = log_path.read_text(errors="replace").splitlines()[-20:]
                print(f"--- tail of {name} ---\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    out["elapsed_s"] = round(time.time() - started, 1)
    out["quiet_waited_s"] = round(QUIET["waited"], 1)
    out["targets"] = targets(out["scenarios"], scs, list(names))
    env_ = out["environment"]
    report = "\n".join(
        [
            f"upload-gateway tus bench{' --quick (NOT the benchmark sizes)' if args.quick else ''}"
            f": {env_['cpus']} CPUs, Python {env_['python']}, node {env_['node']}, "
            f"@tus/server {env_['@tus/server']} + s3-store {env_['@tus/s3-store']}, "
            f"tuspy {env_['packages']['tuspy']}, commit {env_['commit'][:10]}"
            f"{' + local changes' if env_['dirty'] else ''} "
            f"(code snapshot {env_.get('source_sha256', '')[:10]}), {out['elapsed_s']} s",
            "",
            format_table(out["scenarios"], scs, reps, names),
            "",
            format_targets(out["targets"], "Targets (gateway tus vs @tus/server and @rev)"),
        ]
    )
    print(report)
    out["report"] = report
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    name = time.strftime("%Y%m%d-%H%M%S") + "-tus" + ("-quick" if args.quick else "")
    (results / f"{name}.json").write_text(json.dumps(out, indent=2))
    log(f"results: {results / (name + '.json')}")
    return 0 if all(r["ok"] for r in out["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
