"""``outbox``: queue uploads while offline, sync them when the gateway is reachable.

Exit statuses: 0 success; 1 an item failed (or was not found); 2 bad usage or an item that
cannot be queued; 3 the outbox itself (damaged, locked, over its limit); 4 the gateway refused
the token; 5 the disk is full; 75 (EX_TEMPFAIL) ``sync`` stopped with items still waiting (the
gateway unreachable, or their next attempt past ``--max-wait``); 130 ``sync`` interrupted
(Ctrl-C: it stops at the next chunk boundary with everything saved; a second Ctrl-C quits at
once).
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from outbox import advise as advice
from outbox.chain import assemble, document, parse_capture, parse_header, parse_step
from outbox.errors import InvalidItem, OutboxError, TokenRefused
from outbox.report import JsonLines, Reporter, Terminal
from outbox.store import Incoming, Item, Outbox, State
from outbox.sync import KEY_TTL, Syncer
from outbox.transport import GatewayClient

MiB = 1024 * 1024
EX_TEMPFAIL = 75
EX_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
DEFAULT_MAX_WAIT = 300.0
FIELD_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
RESERVED_FIELDS = frozenset({"projectId", "sha256", "file", "files", "filename", "name"})
UNITS = {"": 1, "k": 1024, "kib": 1024, "m": MiB, "mib": MiB, "g": 1024 * MiB, "gib": 1024 * MiB}


class ByteSize(click.ParamType[int]):
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(value))
        if not match or match.group(2).lower() not in UNITS:
            self.fail(f"{value!r} is not a size (bytes, or K, M, G, KiB, MiB, GiB)", param, ctx)
        return int(match.group(1)) * UNITS[match.group(2).lower()]


SIZE = ByteSize()


class BitRate(click.ParamType[int]):
    name = "rate"

    def __init__(self, bounds: tuple[int, int] | None = None) -> None:
        self.bounds = bounds

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            bits = value if isinstance(value, int) else advice.parse_bitrate(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if self.bounds and not self.bounds[0] <= bits <= self.bounds[1]:
            low, high = (_rate(b) for b in self.bounds)
            self.fail(f"{value!r} is not between {low} and {high}", param, ctx)
        return bits


RATE = BitRate()
OPUS_RATE = BitRate(advice.OPUS_BITRATES)


def _fail(error: Exception, status: int) -> NoReturn:
    click.echo(f"outbox: {error}", err=True)
    sys.exit(status)


@contextmanager
def _open(ctx: click.Context) -> Iterator[Outbox]:
    options = ctx.obj
    try:
        with Outbox(
            Path(options["dir"]),
            max_bytes=options["max_bytes"],
            lock_timeout=options["lock_timeout"],
        ) as outbox:
            yield outbox
    except OutboxError as exc:
        _fail(exc, exc.exit_status)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--outbox", "directory", envvar="OUTBOX_DIR", show_envvar=True,
    default=lambda: click.get_app_dir("upload-outbox"), show_default="the user's app dir",
    type=click.Path(file_okay=False), help="Where the outbox database and queued copies live.",
)  # fmt: skip
@click.option(
    "--max-bytes", envvar="OUTBOX_MAX_BYTES", show_envvar=True, type=SIZE,
    default="10GiB", show_default=True, help="The most the queued copies may take.",
)  # fmt: skip
@click.option(
    "--lock-timeout", envvar="OUTBOX_LOCK_TIMEOUT", show_envvar=True, type=float, default=5.0,
    show_default=True, help="Seconds to wait for another process holding the outbox.",
)  # fmt: skip
@click.pass_context
def main(ctx: click.Context, directory: str, max_bytes: int, lock_timeout: float) -> None:
    """Queue uploads while offline; sync them to the gateway exactly once."""
    ctx.obj = {"dir": directory, "max_bytes": max_bytes, "lock_timeout": lock_timeout}


def _fields(raw: Sequence[str]) -> list[tuple[str, str]]:
    fields = []
    for pair in raw:
        name, sep, value = pair.partition("=")
        if not sep or not FIELD_NAME.fullmatch(name) or name in RESERVED_FIELDS:
            raise click.BadParameter(
                f"{pair!r}: expected NAME=VALUE, NAME of A-Z a-z 0-9 _ . - and not one of "
                f"{sorted(RESERVED_FIELDS)}",
                param_hint="--field",
            )
        fields.append((name, value))
    return fields


def audio_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options ``push --optimize`` and ``advise`` share for audio."""
    command = click.option(
        "--audio-min-size", envvar="OUTBOX_AUDIO_MIN_SIZE", show_envvar=True, type=SIZE,
        default="1MiB", show_default=True, help="Audio files smaller than this are not re-encoded.",
    )(command)  # fmt: skip
    return click.option(
        "--opus-bitrate", envvar="OUTBOX_OPUS_BITRATE", show_envvar=True, type=OPUS_RATE,
        default=None, help="The Opus bit rate for audio (64k, 96kbit, ...; 6 to 510 kbit/s). "
        "Default: 64 kb/s mono, 96 kb/s stereo, 48 kb/s per channel beyond.",
    )(command)  # fmt: skip


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--project", "-p", required=True, envvar="OUTBOX_PROJECT", help="The projectId.")
@click.option("--field", "-f", "raw_fields", multiple=True, help="NAME=VALUE, kept as metadata.")
@click.option(
    "--before", "before", multiple=True,
    help="A request before the upload: '[NAME:] METHOD URL [BODY]' (see --capture).",
)  # fmt: skip
@click.option(
    "--then", "then", multiple=True,
    help="A request once stored: '[NAME:] METHOD URL [BODY]' with {{url}}, {{s3Key}}, ...",
)  # fmt: skip
@click.option(
    "--capture", "captures", multiple=True,
    help="STEP.NAME=/json/pointer: a value of the step's JSON answer, as {{steps.STEP.NAME}}.",
)  # fmt: skip
@click.option(
    "--header", "-H", "headers", multiple=True,
    help="'STEP: Header-Name: value': a header of a step (placeholders allowed).",
)  # fmt: skip
@click.option(
    "--tus-threshold", envvar="OUTBOX_TUS_THRESHOLD", show_envvar=True, type=SIZE,
    default="16MiB", show_default=True, help="Files larger than this go over tus, resumably.",
)  # fmt: skip
@click.option(
    "--optimize", is_flag=True,
    help="Queue a smaller copy where `outbox advise` says to re-encode: WebP/AVIF for images, "
    "Ogg Opus for uncompressed or lossless audio (the originals are only read).",
)  # fmt: skip
@audio_options
@click.option("--json", "as_json", is_flag=True, help="Print the queued item as JSON.")
@click.pass_context
def push(
    ctx: click.Context,
    files: tuple[str, ...],
    project: str,
    raw_fields: tuple[str, ...],
    before: tuple[str, ...],
    then: tuple[str, ...],
    captures: tuple[str, ...],
    headers: tuple[str, ...],
    tus_threshold: int,
    optimize: bool,
    opus_bitrate: int | None,
    audio_min_size: int,
    as_json: bool,
) -> None:
    """Queue FILE... as one item (copied now: later edits to the originals are not sent)."""
    fields = _fields(raw_fields)
    try:
        steps = assemble(
            [parse_step(spec, before=True) for spec in before],
            [parse_step(spec, before=False) for spec in then],
            captures=[parse_capture(c) for c in captures],
            headers=[parse_header(h) for h in headers],
        )
    except InvalidItem as exc:
        _fail(exc, exc.exit_status)
    audio = advice.AudioOptions(bitrate=opus_bitrate, min_size=audio_min_size)
    with _open(ctx) as outbox, tempfile.TemporaryDirectory(dir=outbox.root) as scratch:
        incoming = []
        for position, name in enumerate(files):
            path = Path(name)
            own = Path(scratch) / str(position)  # two photo.jpg never share a name here
            own.mkdir()
            smaller = advice.optimize(path, own, audio=audio) if optimize else None
            incoming.append(Incoming(smaller or path, (smaller or path).name))
        try:
            item = outbox.push(
                incoming, project=project, fields=fields, steps=steps, tus_threshold=tus_threshold
            )
        except OutboxError as exc:
            _fail(exc, exc.exit_status)
    if as_json:
        click.echo(json.dumps(item_json(item)))
    else:
        click.echo(f"queued {item.id} ({len(item.files)} files, {_human(item.size)})")


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _when(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")


def item_json(item: Item) -> dict[str, Any]:
    holder = item.holder if item.state == State.UPLOADING else None
    return {
        "id": item.id,
        "state": item.state.value,
        "heldBy": f"{holder.host} pid {holder.pid}" if holder else None,
        "project": item.project,
        "fields": dict(item.fields),
        "idempotencyKey": item.idempotency_key,
        "attempts": item.attempts,
        "nextAttemptAt": _when(item.next_attempt_at) if item.state in (
            State.QUEUED, State.WAITING, State.STORED) else None,
        "lastError": item.last_error,
        "createdAt": _when(item.created_at),
        "updatedAt": _when(item.updated_at),
        "files": [
            {
                "name": f.name, "size": f.size, "sha256": f.sha256, "transport": f.transport.value,
                "sent": f.sent, "tusUrl": f.tus_url, "record": f.record,
            }
            for f in item.files
        ],
        "steps": [
            {
                "name": s.spec.name, "before": s.spec.before, "method": s.spec.method,
                "url": s.spec.url, "done": s.done, "status": s.answer_status,
                "captured": s.captured, "answer": s.answer,
            }
            for s in item.steps
        ],
        "chain": document(
            [s.spec for s in item.steps], project=item.project, fields=item.fields,
            files=[{"name": f.name, "size": f.size, "sha256": f.sha256} for f in item.files],
        ),
    }  # fmt: skip


@main.command()
@click.option("--all", "show_all", is_flag=True, help="Done and failed items too.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def queue(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """What is waiting to be sent (and what failed)."""
    with _open(ctx) as outbox:
        states = None if show_all else [
            State.QUEUED, State.UPLOADING, State.WAITING, State.STORED, State.FAILED]  # fmt: skip
        items = outbox.items(states)
        now = outbox.clock()
    if as_json:
        click.echo(json.dumps([item_json(item) for item in items]))
        return
    for item in items:
        names = ", ".join(f.name for f in item.files)
        error = f"  ({item.last_error})" if item.last_error else ""
        click.echo(
            f"{item.id[:12]}  {_state_text(item, now):28}  {_human(item.size):>10}  "
            f"attempts {item.attempts}  {names}{error}"
        )


def _state_text(item: Item, now: float) -> str:
    """What is happening: ``uploading`` only while an attempt runs."""
    if item.state == State.UPLOADING and item.holder is not None:
        return f"uploading (pid {item.holder.pid})"
    if item.state in (State.WAITING, State.STORED) and item.last_error:
        when = (
            "due now"
            if item.next_attempt_at <= now
            else ("retrying at " + time.strftime("%H:%M:%S", time.localtime(item.next_attempt_at)))
        )
        return f"{item.state.value}, {when}"  # fmt: skip
    return item.state.value


@main.command()
@click.argument("item_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, item_id: str, as_json: bool) -> None:
    """One item: its state, files, records and steps (ITEM_ID or a unique prefix)."""
    with _open(ctx) as outbox:
        try:
            item = outbox.find(item_id)
        except OutboxError as exc:
            _fail(exc, exc.exit_status)
    click.echo(json.dumps(item_json(item), indent=None if as_json else 2))


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Counts and bytes per state, the oldest waiting item, space used and free."""
    with _open(ctx) as outbox:
        numbers = outbox.stats()
    body: dict[str, Any] = {
        "states": {
            s.value: {"items": c.items, "files": c.files, "bytes": c.bytes}
            for s, c in numbers.by_state.items()
        },
        "oldestWaitingSince": _when(numbers.oldest_unfinished_at),
        "outboxBytes": numbers.outbox_bytes,
        "maxBytes": numbers.max_bytes,
        "diskFreeBytes": numbers.disk_free,
    }
    if as_json:
        click.echo(json.dumps(body))
        return
    for state, count in body["states"].items():
        click.echo(f"{state:9} {count['items']:6} items {count['files']:6} files "
                   f"{_human(count['bytes']):>10}")  # fmt: skip
    click.echo(f"oldest waiting since {body['oldestWaitingSince'] or '-'}")
    limit = _human(numbers.max_bytes) if numbers.max_bytes is not None else "no limit"
    click.echo(f"outbox {_human(numbers.outbox_bytes)} of {limit}; "
               f"disk free {_human(numbers.disk_free)}")  # fmt: skip


@main.command()
@click.argument("item_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every failed item.")
@click.pass_context
def retry(ctx: click.Context, item_ids: tuple[str, ...], every: bool) -> None:
    """Put failed items back in the queue (at the step where they stopped)."""
    if not item_ids and not every:
        raise click.UsageError("give ITEM_ID... or --all")
    with _open(ctx) as outbox:
        try:
            items = outbox.items([State.FAILED]) if every else [outbox.find(i) for i in item_ids]
            for item in items:
                again = outbox.retry(item)
                click.echo(f"{again.id} {again.state.value}")
        except OutboxError as exc:
            _fail(exc, exc.exit_status)


@main.command()
@click.option("--done", is_flag=True, required=True, help="Forget done items, delete their copies.")
@click.pass_context
def purge(ctx: click.Context, done: bool) -> None:
    """Free the space of items that are done."""
    with _open(ctx) as outbox:
        count, size = outbox.purge_done()
    click.echo(f"purged {count} items ({_human(size)})")


def _token(token_file: str | None) -> str:
    if token_file:
        return Path(token_file).read_text().strip()
    token = os.environ.get("OUTBOX_TOKEN", "").strip()
    if not token:
        raise click.UsageError("no token: set OUTBOX_TOKEN or OUTBOX_TOKEN_FILE (--token-file)")
    return token


@main.command()
@click.option("--gateway", envvar="OUTBOX_GATEWAY", show_envvar=True, required=True,
              help="The gateway's base URL, e.g. https://uploads.example.com")  # fmt: skip
@click.option(
    "--token-file", envvar="OUTBOX_TOKEN_FILE", show_envvar=True,
    type=click.Path(exists=True, dir_okay=False), help="A file holding the bearer token "
    "(else OUTBOX_TOKEN); never on the command line.",
)  # fmt: skip
@click.option("--watch", is_flag=True, help="Keep going; sync whenever the gateway is back.")
@click.option("--concurrency", "-j", envvar="OUTBOX_CONCURRENCY", type=click.IntRange(1, 32),
              default=2, show_default=True, help="Items sent at once.")  # fmt: skip
@click.option("--chunk-size", envvar="OUTBOX_CHUNK_SIZE", type=SIZE, default="8MiB",
              show_default=True, help="tus chunk: what a dropped connection costs.")  # fmt: skip
@click.option(
    "--max-wait", envvar="OUTBOX_MAX_WAIT", type=click.FloatRange(0), default=None,
    help="Without --watch: seconds to wait for next attempts (Retry-After, backoff; also for an "
    "unreachable gateway when given) before stopping with status 75. Default: an unreachable "
    f"gateway stops the sync at once, other waits up to {DEFAULT_MAX_WAIT:.0f} s.",
)  # fmt: skip
@click.option(
    "--key-ttl", envvar="OUTBOX_KEY_TTL", type=click.FloatRange(3600), default=KEY_TTL,
    show_default=True, help="The gateway's Idempotency-Key lifetime (GATEWAY_IDEMPOTENCY_TTL), "
    "in seconds: an item first sent longer ago is looked up by its records before it is resent.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of progress bars.")
@click.pass_context
def sync(
    ctx: click.Context,
    gateway: str,
    token_file: str | None,
    watch: bool,
    concurrency: int,
    chunk_size: int,
    max_wait: float | None,
    key_ttl: float,
    as_json: bool,
) -> None:
    """Send everything that is due; retry with backoff; resume big files where they stopped."""
    client = GatewayClient(gateway, _token(token_file), chunk_size=chunk_size)
    # tuspy sends its requests without a timeout; on a network that silently drops (a phone
    # going out of range) a PATCH would wait forever. Sockets made without one get this.
    socket.setdefaulttimeout(client.timeout)
    reporter: Reporter = JsonLines() if as_json else Terminal()
    with _open(ctx) as outbox:
        syncer = Syncer(outbox, client, reporter, concurrency=concurrency, key_ttl=key_ttl)
        previous = signal.signal(signal.SIGINT, functools.partial(_on_interrupt, syncer))
        try:
            result = syncer.run(
                watch=watch,
                max_wait=DEFAULT_MAX_WAIT if max_wait is None else max_wait,
                wait_offline=max_wait is not None,
            )
        except TokenRefused as exc:
            reporter.close()
            _fail(exc, TokenRefused.exit_status)
        finally:
            signal.signal(signal.SIGINT, previous)
        reporter.close()
    if result.interrupted:
        _fail(Exception("interrupted; what was sent is kept, sync again to go on"), EX_INTERRUPTED)
    if result.failed:
        sys.exit(1)
    if result.offline:
        click.echo(f"outbox: the gateway {gateway} cannot be reached; {result.unfinished} items "
                   "wait; sync again (or sync --watch)", err=True)  # fmt: skip
        sys.exit(EX_TEMPFAIL)
    if result.unfinished:
        click.echo(f"outbox: {result.unfinished} items still waiting; sync again", err=True)
        sys.exit(EX_TEMPFAIL)


def _on_interrupt(syncer: Syncer, _signum: int, _frame: object) -> None:
    """The first Ctrl-C stops at the next chunk boundary; a second quits at once (every change
    so far is committed, so nothing is lost: the chunk in flight is sent again)."""
    if syncer.stopping():
        os._exit(EX_INTERRUPTED)
    syncer.stop()
    os.write(2, b"outbox: stopping at the next chunk boundary (Ctrl-C again to quit now)\n")


@main.command(name="advise")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--webp-quality", type=click.IntRange(1, 100), default=80, show_default=True)
@click.option("--avif-quality", type=click.IntRange(1, 100), default=60, show_default=True)
@audio_options
@click.option(
    "--measure-seconds", type=click.FloatRange(1), default=advice.MEASURE_SECONDS,
    show_default=True, help="Longer recordings are measured on this many seconds from the "
    "start and the numbers extrapolated.",
)  # fmt: skip
@click.option(
    "--uplink", envvar="OUTBOX_UPLINK", show_envvar=True, type=RATE, default="1Mbit",
    show_default=True, help="The upload rate the transfer time saved is counted at "
    "(256kbit, 1Mbit, 10Mbit, ...).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
def advise_command(
    files: tuple[str, ...],
    webp_quality: int,
    avif_quality: int,
    opus_bitrate: int | None,
    audio_min_size: int,
    measure_seconds: float,
    uplink: int,
    as_json: bool,
) -> None:
    """What re-encoding each image or audio file would save, measured by doing it (the files
    are only read), and whether to."""
    quality = {"webp": webp_quality, "avif": avif_quality}
    audio = advice.AudioOptions(
        bitrate=opus_bitrate, min_size=audio_min_size, measure_seconds=measure_seconds
    )
    for name in files:
        found = advice.advise(Path(name), quality=quality, audio=audio)
        if as_json:
            click.echo(json.dumps(advice_json(name, found, uplink)))
        elif found is None:
            click.echo(f"{name}: not an image or audio file this can re-encode")
        else:
            click.echo("\n".join(advice_text(name, found, uplink)))


def advice_json(name: str, found: advice.Advice | None, uplink: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "file": name,
        "kind": found.kind if found else None,
        "image": found is not None and found.kind == "image",
        "originalBytes": found.original_size if found else None,
        "encodings": [encoding_json(e, uplink) for e in found.encodings] if found else [],
        "recommendation": ("re-encode" if found.reencode else "skip") if found else None,
        "reason": found.reason if found else None,
        "uplinkBitsPerSecond": uplink,
    }
    if found and found.audio:
        a = found.audio
        body["audio"] = {
            "container": a.container, "codec": a.codec, "sampleRate": a.sample_rate,
            "channels": a.channels, "durationSeconds": round(a.duration, 3),
            "measuredSeconds": round(a.measured_seconds, 3),
        }  # fmt: skip
    return body


def encoding_json(e: advice.Encoding, uplink: int) -> dict[str, Any]:
    body: dict[str, Any] = {"format": e.format}
    if e.quality is not None:
        body["quality"] = e.quality
    if e.bitrate is not None:
        body["bitrate"] = e.bitrate
    return body | {
        "bytes": e.size, "originalBytes": e.original_size, "saving": round(e.saving, 4),
        "encodeSeconds": round(e.seconds, 3),
        "transferSecondsSaved": round(e.transfer_seconds_saved(uplink), 3),
        "estimated": e.estimated,
    }  # fmt: skip


def advice_text(name: str, found: advice.Advice, uplink: int) -> list[str]:
    if found.audio:
        a = found.audio
        what = (f"audio ({a.container}, {a.codec}, {a.sample_rate} Hz, {a.channels} ch, "
                f"{a.duration:.1f} s)")  # fmt: skip
    else:
        what = "image"
    lines = [f"{name}: {what}, {_human(found.original_size)}"]
    for e in found.encodings:
        setting = f"q{e.quality}" if e.quality is not None else f"{_rate(e.bitrate or 0)}"
        before, after = found.original_size * 8 / uplink, e.size * 8 / uplink
        lines.append(
            f"  {e.format} {setting}: {_human(e.size)} ({e.saving:.0%} saved), encoded in "
            f"{e.seconds:.2f} s here; upload at {_rate(uplink)} {before:.1f} s -> {after:.1f} s "
            f"({e.transfer_seconds_saved(uplink):.1f} s saved)"
        )
    if found.audio and any(e.estimated for e in found.encodings):
        lines.append(
            f"  measured on the first {found.audio.measured_seconds:.1f} s of "
            f"{found.audio.duration:.1f} s; size and time extrapolated"
        )
    verdict = "re-encode" if found.reencode else "skip"
    lines.append(f"  advice: {verdict}: {found.reason}")
    return lines


def _rate(bits: int) -> str:
    for unit, scale in (("Gbit/s", 10**9), ("Mbit/s", 10**6), ("kbit/s", 10**3)):
        if bits >= scale:
            return f"{bits / scale:g} {unit}"
    return f"{bits} bit/s"


def run() -> None:
    main(prog_name="outbox")
