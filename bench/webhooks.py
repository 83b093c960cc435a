"""A slow webhook receiver against processing, in one run.

N uploads (small PNGs, posted to the app) are processed by workers while a receiver answers
every delivery after ``--delay`` seconds (30; the default GATEWAY_WEBHOOK_TIMEOUT of 10 s ends
each attempt first), and again with a receiver that answers at once. Two arrangements:

- ``shared``: one worker lane on one queue runs processing jobs and deliveries alike, with
  GATEWAY_WORKER_CONCURRENCY slots (how deliveries ran before they had their own queue);
- ``lanes``: ``flask worker``'s two lanes, processing on the processing queue, deliveries on
  theirs with GATEWAY_WEBHOOK_CONCURRENCY slots.

For each: the seconds from each upload's 201 until its media is ``ready`` (min, median, max),
then, once the deliveries have had ``--settle`` more seconds: the attempts the workers made
(handler calls), the POSTs the receiver got, how many events they were for, dead letters.

    .venv/bin/python bench/webhooks.py [--uploads 12] [--delay 30] [--settle 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


class SlowReceiver:
    """Answers 204 to every POST after ``delay`` seconds; counts POSTs by webhook-id on arrival."""

    def __init__(self, delay: float) -> None:
        self.arrivals: Counter[str] = Counter()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.arrivals[self.headers["webhook-id"]] += 1
                time.sleep(delay)
                try:
                    self.send_response(204)
                    self.end_headers()
                except OSError:
                    pass  # the sender stopped waiting

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Outcome:
    ready_seconds: list[float]
    attempts: int
    posts: int
    events_posted: int
    dead: int


def run(arrangement: str, delay: float, uploads: int, settle: float, scratch: Path) -> Outcome:
    import media_samples as samples
    from webhook_receiver import SECRET

    from gateway import create_app
    from gateway.http.auth import mint_token
    from gateway.media.lifecycle import Status
    from gateway.processing.worker import Worker, WorkerOptions, run_lanes
    from gateway.queue import Message, open_queue
    from gateway.services import Services

    from conftest import make_settings
    from support import form_body

    receiver = SlowReceiver(delay)
    settings = make_settings(scratch, webhook_url=receiver.url, webhook_secret=SECRET)
    queue = open_queue(settings)
    # shared: deliveries go to the processing queue itself, as they did before
    svc = Services.from_settings(
        settings, queue=queue, webhook_queue=queue if arrangement == "shared" else None
    )
    svc.provision()
    app = create_app(settings, services=svc)
    with app.app_context():
        auth = {"Authorization": f"Bearer {mint_token('bench')}"}
    pipeline, deliveries = svc.pipeline, svc.deliveries
    assert deliveries is not None and svc.webhook_queue is not None
    attempts = Counter[str]()
    lock = threading.Lock()

    def deliver(message: Message) -> None:
        with lock:
            attempts["webhook"] += 1
        deliveries.handle(message)

    def shared(message: Message) -> None:
        if message.body.get("type") == "webhook":
            deliver(message)
        else:
            pipeline.handle(message)

    def ignore(message: Message, exc: BaseException) -> None:
        pass  # no media fails here: a delivery's last failure is only counted as dead

    stop = threading.Event()
    processing = WorkerOptions(
        concurrency=settings.worker_concurrency, visibility=settings.job_lease_seconds, wait=0.1
    )
    if arrangement == "shared":
        lanes = [Worker(queue, shared, on_last_failure=ignore, options=processing, stop=stop)]
    else:
        lanes = [
            Worker(queue, pipeline.handle, on_last_failure=ignore, options=processing, stop=stop),
            Worker(
                svc.webhook_queue,
                deliver,
                on_last_failure=ignore,
                stop=stop,
                options=WorkerOptions(
                    concurrency=settings.webhook_concurrency,
                    visibility=settings.job_lease_seconds,
                    wait=0.1,
                ),
            ),
        ]
    runner = threading.Thread(target=run_lanes, args=(lanes,))
    runner.start()
    answered: dict[str, float] = {}
    client = app.test_client()
    for n in range(uploads):
        body, content_type = form_body(
            [("projectId", "bench")], [("file", f"p{n}.png", samples.png(300 + n, 200))]
        )
        response = client.post(
            "/api/upload", data=body, headers={"Content-Type": content_type, **auth}
        )
        assert response.status_code == 201, response.get_json()
        answered[response.get_json()["mediaId"]] = time.monotonic()
    ready: dict[str, float] = {}
    while len(ready) < uploads:
        for media_id in answered.keys() - ready.keys():
            if svc.records.get(media_id).status is Status.READY:
                ready[media_id] = time.monotonic()
        time.sleep(0.02)
    time.sleep(settle)
    stop.set()
    runner.join()
    receiver.close()
    return Outcome(
        ready_seconds=sorted(ready[i] - answered[i] for i in answered),
        attempts=attempts["webhook"],
        posts=sum(receiver.arrivals.values()),
        events_posted=len(receiver.arrivals),
        dead=svc.webhook_queue.stats().dead,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=12)
    parser.add_argument("--delay", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=40.0)
    args = parser.parse_args()
    print(
        f"{args.uploads} uploads; receiver delay 0 s and {args.delay:g} s; webhook timeout 10 s;"
        f" deliveries counted {args.settle:g} s after the last ready"
    )
    print(
        "arrangement  receiver  ready after upload (min / median / max s)"
        "  attempts  POSTs  events  dead"
    )
    for arrangement in ("shared", "lanes"):
        for delay in (0.0, args.delay):
            with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as scratch:
                got = run(arrangement, delay, args.uploads, args.settle, Path(scratch))
            seconds = got.ready_seconds
            print(
                f"{arrangement:<11}  {delay:>6g} s  {seconds[0]:>10.2f} / "
                f"{statistics.median(seconds):>6.2f} / {seconds[-1]:>6.2f}"
                f"  {got.attempts:>20}  {got.posts:>5}  {got.events_posted:>6}  {got.dead:>4}",
                flush=True,
            )


if __name__ == "__main__":
    main()
