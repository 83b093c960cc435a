"""Who holds an item: a process identity that survives PID reuse, reboots and shared volumes.

A bare PID says little on a device: after a reboot (or in another container sharing the outbox's
volume) the same number is some other process. A ``Holder`` is the PID with the process's start
time (``/proc/<pid>/stat`` field 22, clock ticks since boot), the kernel's boot id, the PID
namespace (two containers on one kernel each have a PID 1) and the machine id. A claim is stale
when that identity no longer runs:

- same boot, same PID namespace: the PID must run *and* have started at the same tick;
- same machine id, another boot id: the machine rebooted since, so the holder is gone;
- anything else (another container's PID namespace, another machine, no ``/proc``): the holder
  renews its lease while it works (``LEASE_TTL``); a lease not renewed for that long is stale.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

LEASE_TTL = 120.0  # seconds a lease stays good without renewal (renewed every quarter of it)
PROC = Path("/proc")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int, proc: Path = PROC) -> int | None:
    """The process's start time in clock ticks since boot, or None when it does not run."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:  # no such process (or no /proc)
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; fields follow the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 overall; fields[0] is field 3 (state)


def _pid_namespace(proc: Path = PROC) -> str:
    try:
        return os.readlink(proc / "self" / "ns" / "pid")
    except OSError:
        return ""


@dataclass(frozen=True)
class Holder:
    pid: int
    started: int  # clock ticks since boot; 0 when unknown
    boot_id: str
    pid_ns: str
    machine_id: str
    host: str  # for people reading ``status``; never decides anything

    def text(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_text(cls, text: str) -> Holder:
        return cls(**json.loads(text))

    @property
    def local(self) -> bool:
        """Its liveness can be read from this process's ``/proc``."""
        me = current()
        return bool(self.boot_id) and (self.boot_id, self.pid_ns) == (me.boot_id, me.pid_ns)

    def running(self, *, renewed_at: float, now: float, ttl: float = LEASE_TTL) -> bool:
        """Whether the process this names may still be working (see the module's doc)."""
        me = current()
        if self == me:
            return True
        if self.local:
            return self.started != 0 and _start_ticks(self.pid) == self.started
        if self.machine_id and self.machine_id == me.machine_id and self.boot_id != me.boot_id:
            return False  # this machine rebooted since the lease was taken
        return now - renewed_at < ttl


_CURRENT: Holder | None = None


def of_process(pid: int) -> Holder | None:
    """A process of this PID namespace as a holder (None when it does not run)."""
    started = _start_ticks(pid)
    if started is None:
        return None
    me = current()
    return Holder(pid, started, me.boot_id, me.pid_ns, me.machine_id, me.host)


def current() -> Holder:
    """This process (read once per process: a fork gets its own, as ``os.getpid`` says)."""
    global _CURRENT  # noqa: PLW0603 (a per-process cache)
    if _CURRENT is None or _CURRENT.pid != os.getpid():
        pid = os.getpid()
        _CURRENT = Holder(
            pid=pid,
            started=_start_ticks(pid) or 0,
            boot_id=_read(PROC / "sys" / "kernel" / "random" / "boot_id"),
            pid_ns=_pid_namespace(),
            machine_id=_read(Path("/etc/machine-id")),
            host=socket.gethostname(),
        )
    return _CURRENT
