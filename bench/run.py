"""Upload gateway benchmark: real gunicorn + moto on loopback vs boto3 straight to the same moto.

    .venv/bin/python bench/run.py            # full run (~2-6 min on 2 cores)
    .venv/bin/python bench/run.py --quick    # small sizes, a sanity run (~1 min)

Prints the tables (see bench/README.md for what every number means) and writes everything it
measured to bench/results/<timestamp>[-quick].json. Every process it starts (moto, gunicorn
masters; their workers through the master) is stopped by PID, also on error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from boto3.s3.transfer import TransferConfig  # noqa: E402
from writers import format_writers, run_writers  # noqa: E402

from client import (  # noqa: E402
    MiB,
    Payload,
    boto3_one,
    gateway_one,
    run_many,
    upload_http,
)
from procs import (  # noqa: E402
    QUIET,
    SOURCE,
    CpuMeter,
    Procs,
    Sampler,
    aws_env,
    flask_cmd,
    gateway_env,
    running_from,
    snapshot_rev,
    snapshot_source,
    start_gunicorn,
    start_moto,
    start_multer,
    wait_quiet,
)

GiB = 1 << 30
BUCKET = "bench"
JWT_SECRET = "bench-secret-" + "b" * 40


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    count: int
    size: int
    concurrency: int
    min_ratio: float  # gateway/boto3 throughput target
    max_cpu: float  # gateway CPU s/GiB target
    max_cpu_vs_multer: float = 1.0  # gateway CPU s/GiB over multer-s3's


def scenarios(quick: bool) -> list[Scenario]:
    if quick:
        return [
            Scenario("a", "(a) 1 x 64 MiB", 1, 64 * MiB, 1, 0.9, 4.5),
            Scenario("b", "(b) 8 x 16 MiB @8", 8, 16 * MiB, 8, 0.9, 4.5),
            Scenario("c", "(c) 128 x 1 MiB @64", 128, 1 * MiB, 64, 0.7, 10.0),
        ]
    return [
        Scenario("a", "(a) 1 x 512 MiB", 1, 512 * MiB, 1, 0.9, 4.5),
        Scenario("b", "(b) 8 x 64 MiB @8", 8, 64 * MiB, 8, 0.9, 4.5, 0.5),
        Scenario("c", "(c) 256 x 1 MiB @64", 256, 1 * MiB, 64, 0.7, 10.0, 0.5),
    ]


MAX_RSS_PER_UPLOAD = 24 * MiB
MAX_LOCAL_RSS_DELTA = 16 * MiB
# Not worse than a baseline revision: CPU per GiB of repeated runs varies by about 5% here.
MAX_CPU_OVER_BASELINE = 1.05


@dataclass(frozen=True)
class Baseline:
    """The gateway's code at another revision (``--baseline-rev``), set up to run beside this
    code in the same run: the same settings, but its own records, orphan journal and queue (their
    schema is that revision's), and a token it issued."""

    source: Path  # the revision's gateway/, wsgi.py, gunicorn.conf.py (procs.snapshot_rev)
    env: dict[str, str]
    token: str
    commit: str

    @property
    def rev(self) -> str:
        return self.commit[:7]

    def running(self) -> contextlib.AbstractContextManager[None]:
        """gunicorn and flask commands started inside run this revision's code."""
        return running_from(self.source)


def prepare_baseline(
    rev: str, env: dict[str, str], tmp_root: Path, extra: dict[str, str] | None = None
) -> Baseline:
    """Check ``rev`` out (git archive, beside the snapshot of this code) and initialise it;
    ``extra``: settings of its own (``--baseline-env``, e.g. another GATEWAY_S3_INTEGRITY)."""
    source, commit = snapshot_rev(rev, tmp_root / "baseline-src")
    state = tmp_root / "baseline-state"
    state.mkdir()
    base_env = {
        **env,
        "GATEWAY_RECORDS_URL": f"sqlite:///{state / 'records.db'}",
        "GATEWAY_ORPHAN_JOURNAL": str(state / "orphans.jsonl"),
        "GATEWAY_QUEUE_URL": f"sqlite:///{state / 'queue.db'}",
        **(extra or {}),
    }
    with running_from(source):
        flask_cmd(base_env, "init")
        token = flask_cmd(base_env, "token", "--sub", "bench", "--ttl", "2h")
    return Baseline(source, base_env, token, commit)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- helpers -----------------------------------------------------------------------------------------
def empty_bucket(client, bucket: str) -> int:
    removed = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            removed += len(keys)
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        for up in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    return removed


def stored_sizes(client, bucket: str, prefix: str) -> list[int]:
    return [
        o["Size"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    ]


def warm_up(
    base_url: str, token: str, payload: Payload, uploads: int, size_in_answer: bool = True
) -> None:
    """Load every lazily-imported path (multipart included) in each worker before measuring."""
    one = gateway_one(base_url, token, payload, 9 * MiB, "warmup", size_in_answer)
    run = run_many(uploads, 9 * MiB, uploads, one)
    if run.errors:
        raise RuntimeError(f"warm-up uploads failed: {run.errors[:2]}")
    time.sleep(0.5)


def mib(n: float) -> float:
    return round(n / MiB, 1)


MEDIAN_KEYS = (
    "wall_s",
    "mib_s",
    "p50_s",
    "p95_s",
    "max_s",
    "mean_s",
    "cpu_s",
    "cpu_s_per_gib",
    "moto_cpu_s_per_gib",
    "client_cpu_s_per_gib",
    "busy_cores",
    "foreign_cores",
    "load_before",
    "idle_workers_rss_mib",
    "master_rss_mib",
)
MAX_KEYS = ("peak_workers_rss_mib", "peak_worker_rss_mib", "rss_growth_per_upload_mib")


def aggregate(runs: list[dict]) -> dict:
    """Medians over the repetitions (RSS peaks: the largest), plus every run's raw numbers."""
    out = {k: runs[0][k] for k in ("count", "size", "concurrency", "bytes")}
    for k in MEDIAN_KEYS:
        if k in runs[0]:
            out[k] = round(statistics.median(r[k] for r in runs), 3)
    for k in MAX_KEYS:
        if k in runs[0]:
            out[k] = max(r[k] for r in runs)
    out["errors"] = sum(r["errors"] for r in runs)
    out["first_errors"] = [e for r in runs for e in r["first_errors"]][:3]
    out["mib_s_runs"] = [r["mib_s"] for r in runs]
    out["runs"] = runs
    return out


def warm_moto(client, payload: Payload) -> None:
    """moto's first large uploads are slower (its heap grows): pay that before measuring."""
    config = TransferConfig(
        multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=2
    )
    run_many(4, 64 * MiB, 4, boto3_one(client, BUCKET, payload, 64 * MiB, "moto-warmup", config))
    empty_bucket(client, BUCKET)


# -- the S3 scenarios ---------------------------------------------------------------------------------
def run_gateway(
    sc: Scenario,
    *,
    procs: Procs,
    env: dict,
    tmp: Path,
    token: str,
    payload: Payload,
    client,
    moto_pid: int,
) -> dict:
    workers = int(env.get("GATEWAY_WORKERS", os.cpu_count() or 1))
    return run_server(
        sc,
        start=lambda: start_gunicorn(procs, env, tmp / "gunicorn.log"),
        stop=procs.stop,
        warm_uploads=workers * 2,
        prefix="up/",
        token=token,
        payload=payload,
        client=client,
        moto_pid=moto_pid,
    )


def run_multer(
    sc: Scenario, *, procs: Procs, moto_url: str, tmp: Path, payload: Payload, client, moto_pid: int
) -> dict:
    """The same load against express + multer + multer-s3 (bench/multer) on the same moto."""
    return run_server(
        sc,
        start=lambda: start_multer(procs, moto_url, BUCKET, "multer", tmp / "multer.log"),
        stop=procs.stop,
        warm_uploads=4,
        prefix="multer/",
        token="unused",
        size_in_answer=False,
        payload=payload,
        client=client,
        moto_pid=moto_pid,
    )


def run_server(
    sc: Scenario,
    *,
    start: Callable[[], tuple[subprocess.Popen, str]],
    stop: Callable[[subprocess.Popen], None],
    warm_uploads: int,
    prefix: str,
    token: str,
    size_in_answer: bool = True,
    payload: Payload,
    client,
    moto_pid: int,
) -> dict:
    """A fresh server (its process and its children measured), warmed up, then the scenario."""
    gunicorn, base_url = start()
    try:
        warm_up(base_url, token, payload, warm_uploads, size_in_answer)
        empty_bucket(client, BUCKET)
        quiet = wait_quiet()
        sampler = Sampler(gunicorn.pid, extra={"moto": moto_pid}).start()
        client_cpu0 = os.times()
        run = run_many(
            sc.count,
            sc.size,
            sc.concurrency,
            gateway_one(base_url, token, payload, sc.size, sc.key, size_in_answer),
        )
        sampler.stop()
        client_cpu1 = os.times()
    finally:
        stop(gunicorn)
    sizes = stored_sizes(client, BUCKET, prefix)
    errors = list(run.errors)
    if not errors and (len(sizes) != sc.count or any(s != sc.size for s in sizes)):
        errors.append(f"bucket holds {len(sizes)} objects, sizes {sorted(set(sizes))}")
    empty_bucket(client, BUCKET)
    gib = run.bytes / GiB
    client_cpu = (client_cpu1.user + client_cpu1.system) - (client_cpu0.user + client_cpu0.system)
    own = sampler.cpu_s + sampler.extra_cpu["moto"] + client_cpu
    return {
        **run.summary(),
        "errors": len(errors),
        "first_errors": errors[:3],
        "load_before": round(quiet, 2),
        "foreign_cores": round(max(0.0, sampler.system_cpu - own) / sampler.wall, 2),
        "cpu_s": round(sampler.cpu_s, 2),
        "cpu_s_per_gib": round(sampler.cpu_s / gib, 2),
        "moto_cpu_s_per_gib": round(sampler.extra_cpu["moto"] / gib, 2),
        "client_cpu_s_per_gib": round(client_cpu / gib, 2),
        "busy_cores": round(
            (sampler.cpu_s + sampler.extra_cpu["moto"] + client_cpu) / run.wall_s, 2
        ),
        "idle_workers_rss_mib": mib(sampler.idle_workers_rss),
        "peak_workers_rss_mib": mib(sampler.peak_workers_rss),
        "peak_worker_rss_mib": mib(sampler.peak_worker_rss),
        "master_rss_mib": mib(sampler.peak_master_rss),
        "rss_growth_per_upload_mib": mib(
            (sampler.peak_workers_rss - sampler.idle_workers_rss) / sc.concurrency
        ),
        "workers_seen": len(sampler.workers_seen),
        "rss_samples": sampler.samples,
    }


def run_boto3(
    sc: Scenario, *, client, payload: Payload, moto_pid: int, parts_in_flight: int, part_size: int
) -> dict:
    config = TransferConfig(
        multipart_threshold=part_size,
        multipart_chunksize=part_size,
        max_concurrency=parts_in_flight,
        use_threads=True,
    )
    # Warm the same paths (single PutObject and multipart) outside the measurement.
    run_many(2, 9 * MiB, 2, boto3_one(client, BUCKET, payload, 9 * MiB, "warmup", config))
    empty_bucket(client, BUCKET)
    quiet = wait_quiet()
    meter = CpuMeter({"moto": moto_pid}).start()
    run = run_many(
        sc.count,
        sc.size,
        sc.concurrency,
        boto3_one(client, BUCKET, payload, sc.size, sc.key, config),
    )
    meter.stop()
    sizes = stored_sizes(client, BUCKET, "baseline/")
    errors = list(run.errors)
    if not errors and (len(sizes) != sc.count or any(s != sc.size for s in sizes)):
        errors.append(f"bucket holds {len(sizes)} objects, sizes {sorted(set(sizes))}")
    empty_bucket(client, BUCKET)
    gib = run.bytes / GiB
    return {
        **run.summary(),
        "errors": len(errors),
        "first_errors": errors[:3],
        "load_before": round(quiet, 2),
        "foreign_cores": round(meter.foreign_cores, 2),
        "cpu_s_per_gib": round(meter.cpu["self"] / gib, 2),
        "moto_cpu_s_per_gib": round(meter.cpu["moto"] / gib, 2),
        "busy_cores": round((meter.cpu["self"] + meter.cpu["moto"]) / run.wall_s, 2),
    }


# -- local storage: peak RSS does not grow with the file size ------------------------------------------
def run_local(sizes: list[int], *, procs: Procs, tmp: Path, payload: Payload) -> dict:
    media = tmp / "local-media"
    local_tmp = tmp / "local"
    local_tmp.mkdir()
    env = gateway_env(
        local_tmp,
        storage_url=str(media),
        jwt_secret=JWT_SECRET,
        max_upload=max(sizes) + 64 * MiB,
        workers=1,
    )
    flask_cmd(env, "init")
    token = flask_cmd(env, "token", "--sub", "bench", "--ttl", "2h")
    gunicorn, base_url = start_gunicorn(procs, env, tmp / "gunicorn-local.log")
    host, port = base_url.removeprefix("http://").split(":")
    rows = []
    try:
        warm_up(base_url, token, payload, 2)
        shutil.rmtree(media, ignore_errors=True)
        for size in sizes:
            wait_quiet()
            sampler = Sampler(gunicorn.pid).start()
            result = upload_http(host, int(port), token, payload, size, f"local-{size}.png")
            sampler.stop()
            stored = sum(p.stat().st_size for p in media.rglob("*") if p.is_file())
            ok = result.ok and stored == size
            rows.append(
                {
                    "size": size,
                    "ok": ok,
                    "error": "" if ok else (result.error or f"stored {stored} bytes"),
                    "seconds": round(result.seconds, 2),
                    "mib_s": round(size / MiB / result.seconds, 1),
                    "cpu_s_per_gib": round(sampler.cpu_s / (size / GiB), 2),
                    "idle_worker_rss_mib": mib(sampler.idle_workers_rss),
                    "peak_worker_rss_mib": mib(sampler.peak_worker_rss),
                }
            )
            log(
                f"local {size // MiB} MiB: peak worker RSS {rows[-1]['peak_worker_rss_mib']} MiB, "
                f"{rows[-1]['mib_s']} MiB/s"
            )
            shutil.rmtree(media, ignore_errors=True)  # the 2 GiB file: free the disk at once
    finally:
        procs.stop(gunicorn)
        shutil.rmtree(media, ignore_errors=True)
    return {
        "rows": rows,
        "peak_delta_mib": round(
            rows[-1]["peak_worker_rss_mib"] - rows[0]["peak_worker_rss_mib"], 1
        ),
    }


# -- output ------------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def format_scenarios(results: dict, scs: list[Scenario], reps: int) -> str:
    head = (
        f"{'scenario':<20} {'path':<8} {'MiB/s':>6} {'p50 s':>6} {'p95 s':>6} "
        f"{'CPU s/GiB':>9} {'moto s/GiB':>10} {'busy':>5} {'other':>5} "
        f"{'RSS idle':>8} {'RSS peak':>8} {'max wkr':>7} {'+MiB/upl':>8} {'err':>3}  "
        f"MiB/s of each run"
    )
    lines = [
        f"S3 scenarios: median of {reps} interleaved runs per path (RSS: largest); "
        "RSS in MiB, summed over the gunicorn workers",
        head,
        "-" * len(head),
    ]

    def gateway_row(label: str, path: str, g: dict) -> str:
        return (
            f"{label:<20} {path:<8} {g['mib_s']:>6.1f} {g['p50_s']:>6.2f} "
            f"{g['p95_s']:>6.2f} {g['cpu_s_per_gib']:>9.2f} "
            f"{g['moto_cpu_s_per_gib']:>10.2f} {g['busy_cores']:>5.2f} "
            f"{g['foreign_cores']:>5.2f} {g['idle_workers_rss_mib']:>8.1f} "
            f"{g['peak_workers_rss_mib']:>8.1f} {g['peak_worker_rss_mib']:>7.1f} "
            f"{g['rss_growth_per_upload_mib']:>8.1f} {g['errors']:>3}  "
            + "/".join(f"{v:.0f}" for v in g["mib_s_runs"])
        )

    for sc in scs:
        g, b = results[sc.key]["gateway"], results[sc.key]["boto3"]
        lines.append(gateway_row(sc.label, "gateway", g))
        lines.append(
            f"{'':<20} {'boto3':<8} {b['mib_s']:>6.1f} {b['p50_s']:>6.2f} "
            f"{b['p95_s']:>6.2f} {b['cpu_s_per_gib']:>9.2f} "
            f"{b['moto_cpu_s_per_gib']:>10.2f} {b['busy_cores']:>5.2f} "
            f"{b['foreign_cores']:>5.2f} {'':>8} {'':>8} {'':>7} {'':>8} "
            f"{b['errors']:>3}  " + "/".join(f"{v:.0f}" for v in b["mib_s_runs"])
        )
        ratio = results[sc.key]["ratio"]
        p50 = f"{g['p50_s'] / b['p50_s']:.2f}" if b["p50_s"] else "-"
        p95 = f"{g['p95_s'] / b['p95_s']:.2f}" if b["p95_s"] else "-"
        cpu = f"{g['cpu_s_per_gib'] / b['cpu_s_per_gib']:.2f}" if b["cpu_s_per_gib"] else "-"
        lines.append(
            f"{'':<20} {'gw/boto3':<8} {ratio:>6.2f} {p50:>6} {p95:>6} {cpu:>9}"
            f"   if CPU-bound: {results[sc.key]['cpu_bound_ratio']:.2f}"
        )
        multer = results[sc.key].get("multer")
        if multer:
            lines.append(gateway_row("", "multer", multer))
            lines.append(
                f"{'':<20} {'gw/mult':<8} {g['mib_s'] / multer['mib_s']:>6.2f} "
                f"{g['p50_s'] / multer['p50_s']:>6.2f} {g['p95_s'] / multer['p95_s']:>6.2f} "
                f"{g['cpu_s_per_gib'] / multer['cpu_s_per_gib']:>9.2f}"
            )
        base = results[sc.key].get("baseline")
        if base:
            lines.append(gateway_row("", f"@{base['rev']}", base))
            lines.append(
                f"{'':<20} {'gw/@rev':<8} {g['mib_s'] / base['mib_s']:>6.2f} "
                f"{g['p50_s'] / base['p50_s']:>6.2f} {g['p95_s'] / base['p95_s']:>6.2f} "
                f"{g['cpu_s_per_gib'] / base['cpu_s_per_gib']:>9.2f}"
            )
    lines += [
        "  CPU s/GiB: gateway = user+sys of the gunicorn master + workers; boto3 = the "
        "process running upload_fileobj.",
        "  moto s/GiB: the S3 stand-in's CPU. busy: cores used by gateway (or boto3) + moto "
        "+ load client, over wall time.",
        "  other: cores used meanwhile by processes outside the benchmark (noise). "
        "+MiB/upl: (peak - idle RSS) / uploads in flight.",
        "  multer: express + multer + multer-s3 (bench/multer, Node) on the same moto with the "
        "same client; gw/mult: gateway over multer-s3 (RSS: its one process, as 'max wkr').",
        "  @rev (--baseline-rev): the gateway's code at that revision, same settings, same run; "
        "gw/@rev: this code over that one.",
        "  if CPU-bound: the throughput ratio expected when the cores are full, = (boto3 + "
        "its moto CPU) / (gateway + its moto + load client CPU), per GiB.",
    ]
    return "\n".join(lines)


def format_local(local: dict) -> str:
    lines = [
        "Local storage (GATEWAY_WORKERS=1, one upload at a time; RSS of the worker, MiB)",
        f"{'file':>8} {'MiB/s':>7} {'CPU s/GiB':>9} {'RSS idle':>8} {'RSS peak':>8} ok",
    ]
    for r in local["rows"]:
        name = f"{r['size'] // GiB} GiB" if r["size"] >= GiB else f"{r['size'] // MiB} MiB"
        lines.append(
            f"{name:>8} {r['mib_s']:>7} {r['cpu_s_per_gib']:>9} "
            f"{r['idle_worker_rss_mib']:>8} {r['peak_worker_rss_mib']:>8} "
            f"{'yes' if r['ok'] else 'NO ' + r['error'][:60]}"
        )
    return "\n".join(lines)


def targets(results: dict, scs: list[Scenario], local: dict | None) -> list[dict]:
    rows = []
    for sc in scs:
        r = results[sc.key]
        valid = not r["gateway"]["errors"] and not r["boto3"]["errors"]
        rows.append(
            {
                "target": f"{sc.label}: throughput gateway/boto3",
                "value": r["ratio"],
                "limit": f">= {sc.min_ratio}",
                "ok": valid and r["ratio"] >= sc.min_ratio,
            }
        )
        cpu = r["gateway"]["cpu_s_per_gib"]
        rows.append(
            {
                "target": f"{sc.label}: gateway CPU s/GiB",
                "value": cpu,
                "limit": f"<= {sc.max_cpu}",
                "ok": valid and cpu <= sc.max_cpu,
            }
        )
        multer = r.get("multer")
        if multer:
            valid_m = valid and not multer["errors"]
            cpu_ratio = round(cpu / multer["cpu_s_per_gib"], 2)
            rows.append(
                {
                    "target": f"{sc.label}: CPU s/GiB over multer-s3's",
                    "value": cpu_ratio,
                    "limit": f"<= {sc.max_cpu_vs_multer}",
                    "ok": valid_m and cpu_ratio <= sc.max_cpu_vs_multer,
                }
            )
            mib_ratio = round(r["gateway"]["mib_s"] / multer["mib_s"], 2)
            rows.append(
                {
                    "target": f"{sc.label}: throughput over multer-s3's",
                    "value": mib_ratio,
                    "limit": ">= 1.0",
                    "ok": valid_m and mib_ratio >= 1.0,
                }
            )
        base = r.get("baseline")
        if base:
            cpu_ratio = round(cpu / base["cpu_s_per_gib"], 2)
            rows.append(
                {
                    "target": f"{sc.label}: CPU s/GiB over @{base['rev']}'s",
                    "value": cpu_ratio,
                    "limit": f"<= {MAX_CPU_OVER_BASELINE}",
                    "ok": valid and not base["errors"] and cpu_ratio <= MAX_CPU_OVER_BASELINE,
                }
            )
    for sc in scs:
        if sc.concurrency > 1:
            growth = results[sc.key]["gateway"]["rss_growth_per_upload_mib"]
            rows.append(
                {
                    "target": f"{sc.label}: RSS growth per in-flight upload, MiB",
                    "value": growth,
                    "limit": f"<= {MAX_RSS_PER_UPLOAD // MiB}",
                    "ok": growth <= MAX_RSS_PER_UPLOAD / MiB,
                }
            )
    if local and local["rows"]:
        small, big = local["rows"][0], local["rows"][-1]
        names = [
            f"{r['size'] // GiB} GiB" if r["size"] >= GiB else f"{r['size'] // MiB} MiB"
            for r in (big, small)
        ]
        rows.append(
            {
                "target": f"local: peak RSS {names[0]} - {names[1]}, MiB",
                "value": local["peak_delta_mib"],
                "limit": f"<= {MAX_LOCAL_RSS_DELTA // MiB}",
                "ok": small["ok"]
                and big["ok"]
                and local["peak_delta_mib"] <= MAX_LOCAL_RSS_DELTA / MiB,
            }
        )
    return rows


def format_targets(rows: list[dict], title: str = "Targets") -> str:
    lines = [title, f"{'target':<58} {'value':>8} {'limit':>8}  verdict"]
    lines += [
        f"{r['target']:<58} {r['value']:>8} {r['limit']:>8}  {verdict(r['ok'])}" for r in rows
    ]
    return "\n".join(lines)


def environment() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except OSError:
            return ""

    from importlib.metadata import version

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", "gateway", "gunicorn.conf.py")),
        "packages": {
            p: version(p)
            for p in ("gunicorn", "flask", "werkzeug", "boto3", "botocore", "moto", "smart_open")
        },
    }


# -- main --------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description="Upload gateway benchmark (see bench/README.md).")
    parser.add_argument("--quick", action="store_true", help="small sizes: a ~1 min sanity run")
    parser.add_argument("--skip-local", action="store_true", help="skip the local-storage RSS test")
    parser.add_argument("--skip-writers", action="store_true", help="skip the writer comparison")
    parser.add_argument("--only", default="abc", help="S3 scenarios to run, e.g. 'a' or 'bc'")
    parser.add_argument(
        "--worker-class",
        default=None,
        help="gunicorn worker class for the gateway (GATEWAY_WORKER_CLASS; "
        "default: gunicorn.conf.py's, gevent), e.g. gthread to compare",
    )
    parser.add_argument(
        "--baseline-rev",
        default=None,
        help="also run the gateway at this git revision in every S3 scenario, interleaved "
        "with the others in the same run (CPU and throughput of this code against that one)",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the gateway under test (repeatable), e.g. GATEWAY_S3_INTEGRITY=crc32c",
    )
    parser.add_argument(
        "--baseline-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the --baseline-rev gateway only (repeatable): e.g. "
        "--baseline-rev HEAD --baseline-env GATEWAY_S3_INTEGRITY=crc32c compares two modes "
        "of this code",
    )
    parser.add_argument(
        "--skip-multer",
        action="store_true",
        help="skip express + multer + multer-s3 (bench/multer, needs node and `npm ci` there)",
    )
    parser.add_argument("--tmp", default=None, help="scratch directory (the 2 GiB file goes here)")
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="runs of each path per scenario, interleaved; medians are reported "
        "(default 3, --quick 2)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="before each measured run, wait up to this many seconds for other "
        "processes' load to fall below 0.25 cores (default 15, --quick 3; "
        "0: don't wait)",
    )
    parser.add_argument(
        "--quiet-budget",
        type=float,
        default=180.0,
        help="at most this many seconds of such waiting in the whole run",
    )
    args = parser.parse_args()
    os.environ.update(aws_env())
    # A plain `kill` must still run the finally below that stops moto and gunicorn.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    reps = args.reps or (2 if args.quick else 3)
    QUIET["wait"] = args.quiet_wait if args.quiet_wait is not None else (3 if args.quick else 15)
    QUIET["budget"] = args.quiet_budget

    scs = [sc for sc in scenarios(args.quick) if sc.key in args.only]
    local_sizes = [16 * MiB, 256 * MiB] if args.quick else [64 * MiB, 2 * GiB]
    writer_sizes = [16 * MiB, 32 * MiB] if args.quick else [64 * MiB, 256 * MiB]
    writer_paced = (16 * MiB, 100.0) if args.quick else (64 * MiB, 100.0)

    started = time.time()
    out: dict = {
        "quick": args.quick,
        "reps": reps,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "environment": environment(),
        "scenarios": {},
        "local": None,
        "writers": None,
    }
    procs = Procs()
    payload = Payload()
    tmp_root = Path(tempfile.mkdtemp(prefix="upload-gateway-bench-", dir=args.tmp))
    try:
        SOURCE["dir"], out["environment"]["source_sha256"] = snapshot_source(tmp_root / "src")
        sys.path.insert(0, str(SOURCE["dir"]))
        from gateway.config import Settings
        from gateway.storage.s3 import make_s3_client

        assert Path(sys.modules["gateway"].__file__).is_relative_to(SOURCE["dir"])

        moto, moto_url = start_moto(procs, tmp_root / "moto.log")
        log(f"moto at {moto_url} (pid {moto.pid}); scratch {tmp_root}")
        s3_tmp = tmp_root / "s3"
        s3_tmp.mkdir()
        biggest = max((sc.size for sc in scs), default=64 * MiB)
        env = gateway_env(
            s3_tmp,
            storage_url=f"s3://{BUCKET}/up",
            moto_url=moto_url,
            jwt_secret=JWT_SECRET,
            max_upload=max(biggest + 64 * MiB, 1 * GiB),
        )
        if args.worker_class:
            env["GATEWAY_WORKER_CLASS"] = args.worker_class
        flask_cmd(env, "init")
        token = flask_cmd(env, "token", "--sub", "bench", "--ttl", "2h")
        settings = Settings.from_env(env)
        client = make_s3_client(settings)
        baseline = None
        if args.baseline_rev:
            extra = dict(item.split("=", 1) for item in args.baseline_env)
            baseline = prepare_baseline(args.baseline_rev, env, tmp_root, extra)
            out["environment"]["baseline_commit"] = baseline.commit
            out["environment"]["baseline_env"] = extra
        own = dict(item.split("=", 1) for item in args.gateway_env)
        env.update(own)  # after the baseline took its copy: for this gateway only
        out["environment"]["gateway_env"] = own
        out["gateway_settings"] = {
            "part_size": settings.effective_part_size,
            "parts_in_flight": settings.s3_parts_in_flight,
            "read_size": settings.read_size,
            "workers": int(env.get("GATEWAY_WORKERS", os.cpu_count())),
            "threads": int(env.get("GATEWAY_THREADS", 32)),
        }

        if scs:
            warm_moto(client, payload)
        paths = ["gateway", "boto3"] + (["baseline"] if baseline else [])
        paths += [] if args.skip_multer else ["multer"]
        names = {"gateway": "gateway", "boto3": "boto3", "multer": "multer-s3"}
        if baseline:
            names["baseline"] = f"gateway@{baseline.rev}"
        for sc in scs:
            common = {"payload": payload, "client": client, "moto_pid": moto.pid}
            servers = {"procs": procs, "tmp": tmp_root, **common}

            def run_baseline(sc: Scenario = sc, servers: dict = servers) -> dict:
                assert baseline is not None
                with baseline.running():
                    return run_gateway(sc, env=baseline.env, token=baseline.token, **servers)

            runners = {
                "gateway": lambda sc=sc, servers=servers: run_gateway(
                    sc, env=env, token=token, **servers
                ),
                "boto3": lambda sc=sc, common=common: run_boto3(
                    sc,
                    parts_in_flight=settings.s3_parts_in_flight,
                    part_size=settings.effective_part_size,
                    **common,
                ),
                "baseline": run_baseline,
                "multer": lambda sc=sc, servers=servers: run_multer(
                    sc, moto_url=moto_url, **servers
                ),
            }
            runs: dict[str, list[dict]] = {path: [] for path in paths}
            for rep in range(reps):
                shift = rep % len(paths)
                for path in paths[shift:] + paths[:shift]:
                    r = runners[path]()
                    runs[path].append(r)
                    growth = r.get("rss_growth_per_upload_mib")
                    log(
                        f"{sc.label} #{rep + 1}: {names[path]} {r['mib_s']} MiB/s, "
                        f"{r['cpu_s_per_gib']} CPU s/GiB, "
                        + (f"+{growth} MiB/upload, " if path == "gateway" else "")
                        + f"other load {r['foreign_cores']} cores, "
                        f"errors {r['errors']} {r['first_errors'][:1]}"
                    )
            g_runs, b_runs = runs["gateway"], runs["boto3"]
            base_runs, m_runs = runs.get("baseline", []), runs.get("multer", [])
            g, b = aggregate(g_runs), aggregate(b_runs)
            ratio = round(g["mib_s"] / b["mib_s"], 2) if b["mib_s"] else 0.0
            # With every core busy, throughput is inversely proportional to the CPU each GiB
            # costs on this machine, whoever spends it.
            g_total = g["cpu_s_per_gib"] + g["moto_cpu_s_per_gib"] + g["client_cpu_s_per_gib"]
            b_total = b["cpu_s_per_gib"] + b["moto_cpu_s_per_gib"]
            out["scenarios"][sc.key] = {
                "label": sc.label,
                "gateway": g,
                "boto3": b,
                "ratio": ratio,
                "cpu_bound_ratio": round(b_total / g_total, 2),
            }
            if baseline:
                out["scenarios"][sc.key]["baseline"] = {
                    **aggregate(base_runs),
                    "rev": baseline.rev,
                }
            if m_runs:
                out["scenarios"][sc.key]["multer"] = aggregate(m_runs)

        if not args.skip_writers:
            log("writer comparison ...")
            out["writers"] = run_writers(
                moto_url,
                moto.pid,
                sizes=writer_sizes,
                paced=writer_paced,
                small_reps=5 if args.quick else 20,
                log=log,
                quiet=wait_quiet,
            )
        if not args.skip_local:
            free = shutil.disk_usage(tmp_root).free
            if free < max(local_sizes) + 1 * GiB:
                raise SystemExit(
                    f"local test needs {mib(max(local_sizes) + GiB)} MiB free in "
                    f"{tmp_root}; {mib(free)} MiB free"
                )
            log("local storage ...")
            out["local"] = run_local(local_sizes, procs=procs, tmp=tmp_root, payload=payload)
    except BaseException:
        traceback.print_exc()
        for name in ("gunicorn.log", "gunicorn-local.log"):
            path = tmp_root / name
            if path.exists():
                print(
                    f"--- tail of {name} ---\n"
                    + "\n".join(path.read_text(errors="replace").splitlines()[-20:]),
                    file=sys.stderr,
                )
        raise
    finally:
        procs.stop_all()
        shutil.rmtree(tmp_root, ignore_errors=True)

    out["elapsed_s"] = round(time.time() - started, 1)
    out["quiet_waited_s"] = round(QUIET["waited"], 1)
    out["targets"] = targets(out["scenarios"], scs, out["local"])
    text = [
        f"upload-gateway bench{' --quick (NOT the benchmark sizes)' if args.quick else ''}: "
        f"{out['environment']['cpus']} CPUs, Python {out['environment']['python']}, "
        f"commit {out['environment']['commit'][:10]}"
        f"{' + local changes' if out['environment']['dirty'] else ''} "
        f"(code snapshot {out['environment'].get('source_sha256', '')[:10]}), "
        f"{out['elapsed_s']} s",
        "",
    ]
    if scs:
        text += [format_scenarios(out["scenarios"], scs, reps), ""]
    if out["local"]:
        text += [format_local(out["local"]), ""]
    if out["writers"]:
        text += [format_writers(out["writers"]), ""]
    text.append(format_targets(out["targets"]))
    report = "\n".join(text)
    print(report)
    out["report"] = report
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    name = time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    (results / f"{name}.json").write_text(json.dumps(out, indent=2))
    log(f"results: {results / (name + '.json')}")
    return 0 if all(r["ok"] for r in out["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
