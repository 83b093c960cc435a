"""Run untrusted decoding in a child process with a memory limit and a deadline.

Image, video and PDF decoders run native code over attacker-supplied bytes (pdfium is not even
thread-safe). A child forked from a clean forkserver gets ``RLIMIT_AS`` (an allocation past it
fails inside the child, not the worker) and is killed at the deadline; the worker only sees a
``SandboxError`` with the reason, and goes on with its next job.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import resource
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_context = multiprocessing.get_context("forkserver")
# Children fork from a server that has the decoders imported already (not once per job).
# (gateway.processing.audio is imported by the child that needs it: a small module on top of
# derive's imports.)
_context.set_forkserver_preload(["gateway.processing.derive", "gateway.processing.sandbox"])


class SandboxError(RuntimeError):
    """The child failed: its own exception (as text), out of memory, killed, or too slow."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind  # "error" (the function raised), "memory", "timeout", "crashed"


def _child(
    conn: multiprocessing.connection.Connection,
    memory: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    try:
        result = fn(*args)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        conn.send(("ok", result, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime))
    except MemoryError:
        conn.send(("memory", "out of memory"))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as text
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=5)))
    finally:
        conn.close()


class Peak:
    """The peak resident memory (bytes) and the CPU time (user + system seconds) of the last
    child that finished, for measurements."""

    rss = 0
    cpu = 0.0


def run(fn: Callable[..., T], *args: Any, memory_bytes: int, timeout: float) -> T:
    """``fn(*args)`` in a child process; ``fn`` and the result must pickle."""
    receive, send = _context.Pipe(duplex=False)
    child = _context.Process(target=_child, args=(send, memory_bytes, fn, args), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(timeout):
            child.kill()
            raise SandboxError(f"took longer than {timeout:g} s", kind="timeout")
        try:
            outcome = receive.recv()
        except EOFError:
            child.join(5)
            raise SandboxError(f"the child died (exit {child.exitcode})", kind="crashed") from None
    finally:
        receive.close()
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join()
    status = outcome[0]
    if status == "ok":
        Peak.rss, Peak.cpu = outcome[2], outcome[3]
        return outcome[1]  # type: ignore[no-any-return]
    if status == "memory":
        raise SandboxError(f"used more than {memory_bytes >> 20} MiB", kind="memory")
    raise SandboxError(outcome[1], kind="error")
