"""A real clamd (Debian's clamav-daemon) on a loopback port, with a signature database the
tests write themselves (freshclam cannot download signatures here): an ``.ndb`` body signature
for a marker string, and the EICAR test file's MD5 as an ``.hdb`` whole-file hash."""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

from e2e_harness import _apt_install, _find
from support import free_port, stop

MARKER = b"GATEWAY-TEST-VIRUS-MARKER-7f3a"
MARKER_SIGNATURE = "Gateway.Test.Marker"
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
STREAM_MAX = 8 * 1024 * 1024


def ensure_clamd() -> str:
    found = _find("clamd")
    if found is None:
        _apt_install(["clamav-daemon"])
        found = _find("clamd")
    if found is None:
        raise RuntimeError("clamd is still missing after apt-get install clamav-daemon")
    return found


def write_database(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gateway.ndb").write_text(f"{MARKER_SIGNATURE}:0:*:{MARKER.hex()}\n")
    (folder / "gateway.hdb").write_text(
        f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:Gateway.Test.EICAR\n"
    )


def start_clamd(run_dir: Path) -> tuple[subprocess.Popen, str]:
    clamd = ensure_clamd()
    write_database(run_dir / "db")
    port = free_port()
    user = pwd.getpwuid(os.geteuid()).pw_name
    conf = run_dir / "clamd.conf"
    conf.write_text(f"""Foreground yes
DatabaseDirectory {run_dir / "db"}
TCPSocket {port}
TCPAddr 127.0.0.1
LogFile {run_dir / "clamd.log"}
StreamMaxLength {STREAM_MAX}
User {user}
""")
    proc = subprocess.Popen(
        [clamd, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (run_dir / "clamd.log").read_text() if (run_dir / "clamd.log").exists() else ""
            raise RuntimeError(f"clamd exited with {proc.returncode}: {log[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"zPING\0")
                if sock.recv(16).startswith(b"PONG"):
                    return proc, f"tcp://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError("clamd did not answer PING in 60 s")


def remove(run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
