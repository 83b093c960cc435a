"""A throwaway single-node Ceph cluster with its S3 gateway (RGW), for tests that need a second,
real S3 beside moto.

Plain processes, no systemd and no cephadm: one monitor (messenger v1 on a loopback port), no
manager, one OSD on ``memstore`` (RAM, bounded by ``memstore_device_bytes``), pools of size 1,
and radosgw's beast frontend on a free 127.0.0.1 port. Everything it writes (``ceph.conf``,
keyrings, the monitor's store, sockets, logs) lives in one folder; :meth:`CephCluster.stop`
stops the processes it started, by PID. cephx is on: ``auth none`` does not let the OSD join
("wrong fsid"). Each step waits by polling the cluster, never by sleeping a fixed time.

The S3 user's keys are the ones the suite exports for every AWS client (support.env_for_aws),
so a Settings with ``s3_endpoint_url=cluster.url`` talks to Ceph with no other change. The same
gateway also answers HTTPS (``https_url``) with a self-signed certificate (``ca_file``; give it
to boto3 as AWS_CA_BUNDLE): some S3 behaviour differs over TLS (botocore's checksum trailers).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

from e2e_harness import _apt_install, _find
from support import env_for_aws, free_port, stop

PACKAGES = ("ceph-mon", "ceph-osd", "radosgw", "ceph-common")
BINARIES = (
    "ceph-mon",
    "ceph-osd",
    "radosgw",
    "ceph",
    "ceph-authtool",
    "monmaptool",
    "radosgw-admin",
)
MEMSTORE_BYTES = 4 << 30  # a bound, not an allocation: RSS grows with what the tests store
START_TIMEOUT = 120.0


def ensure_ceph() -> dict[str, str]:
    """The Ceph programs by name, installed from Debian when one is missing."""
    if any(_find(name) is None for name in BINARIES):
        for package in PACKAGES:
            _apt_install([package])
    found = {name: _find(name) for name in BINARIES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise RuntimeError(f"still missing after apt-get install {' '.join(PACKAGES)}: {missing}")
    return {name: str(path) for name, path in found.items()}


@dataclass
class CephCluster:
    """A running cluster: ``url`` is its S3 endpoint; ``access_key``/``secret_key`` its user's."""

    folder: Path
    url: str = ""
    https_url: str = ""
    ca_file: str = ""
    access_key: str = ""
    secret_key: str = ""
    processes: list[subprocess.Popen] = field(default_factory=list)
    started_in: float = 0.0  # seconds from nothing to an answering S3 endpoint

    def stop(self) -> None:
        """Stop what this cluster started, gateway first, by PID. The OSD is killed: on SIGTERM
        memstore writes its whole store to disk first (seconds), and nothing here keeps it."""
        for proc in reversed(self.processes):
            if proc.args[0].endswith("ceph-osd") and proc.poll() is None:
                proc.kill()
                proc.wait()
            stop(proc, timeout=15)
        self.processes.clear()

    def log(self, name: str) -> str:
        path = self.folder / "log" / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def _conf(folder: Path, fsid: str, mon_port: int, rgw_port: int, tls_port: int) -> str:
    return f"""[global]
fsid = {fsid}
mon_host = v1:127.0.0.1:{mon_port}
mon_initial_members = a
ms_bind_msgr2 = false
public_network = 127.0.0.1/32
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
keyring = {folder}/keyring/$name.keyring
run_dir = {folder}/run
admin_socket = {folder}/run/$name.asok
pid_file = {folder}/run/$name.pid
log_file = {folder}/log/$name.log
log_to_stderr = false
err_to_stderr = false
crash_dir = {folder}/crash
mon_data = {folder}/mon/$name
osd_data = {folder}/osd/$name
rgw_data = {folder}/rgw/$name
osd_objectstore = memstore
memstore_device_bytes = {MEMSTORE_BYTES}
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 1
osd_pool_default_pgp_num = 1
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
paxos_propose_interval = 0.05
paxos_min_wait = 0.01
mon_allow_pool_delete = true
mon_max_pg_per_osd = 1000
mon_warn_on_pool_no_redundancy = false
osd_max_object_name_len = 460
osd_max_object_namespace_len = 64
rgw_frontends = beast endpoint=127.0.0.1:{rgw_port} ssl_endpoint=127.0.0.1:{tls_port} \
ssl_certificate={folder}/tls/cert.pem ssl_private_key={folder}/tls/key.pem
rgw_dns_name = 127.0.0.1
rgw_enable_usage_log = false

[osd]
keyring = {folder}/osd/$name/keyring
"""


class _Steps:
    def __init__(self, folder: Path, programs: dict[str, str]) -> None:
        self.folder = folder
        self.programs = programs
        self.conf = str(folder / "ceph.conf")

    def run(self, name: str, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            [self.programs[name], "-c", self.conf, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{name} {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout

    def ceph(self, *args: str) -> str:
        return self.run("ceph", "--connect-timeout", "5", *args)

    def ceph_json(self, *args: str) -> dict:
        return json.loads(self.ceph(*args, "--format", "json"))

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [self.programs[name], "-c", self.conf, "-f", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def _poll(what: str, check, procs: list[subprocess.Popen], deadline: float, cluster: CephCluster):
    """Call ``check`` until it answers something true; fail at once if a process died."""
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{proc.args[0]} exited with {proc.returncode} waiting for {what}: "
                    + cluster.log("mon.a")
                    + cluster.log("osd.0")
                    + cluster.log("client.rgw.gw")
                )
        try:
            answer = check()
        except (RuntimeError, subprocess.TimeoutExpired, requests.RequestException):
            answer = None
        if answer:
            return answer
        time.sleep(0.2)
    raise RuntimeError(f"Ceph: no {what} in {START_TIMEOUT:.0f} s")


def _certificate(folder: Path) -> None:
    """A self-signed certificate for 127.0.0.1 (cert.pem is its own CA bundle)."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip


def start_ceph(folder: Path) -> CephCluster:
    """Bring up mon, OSD and radosgw in ``folder``; the S3 user has the suite's AWS keys."""
    began = time.monotonic()
    deadline = began + START_TIMEOUT
    programs = ensure_ceph()
    for sub in ("run", "log", "keyring", "crash", "mon/mon.a", "osd/osd.0", "rgw/client.rgw.gw"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    fsid = str(uuid.uuid4())
    mon_port, rgw_port, tls_port = free_port(), free_port(), free_port()
    (folder / "ceph.conf").write_text(_conf(folder, fsid, mon_port, rgw_port, tls_port))
    _certificate(folder / "tls")
    steps = _Steps(folder, programs)
    cluster = CephCluster(folder)
    keyring = folder / "keyring"
    try:
        # Keyrings: the monitors' own key, and an admin key the monitor knows from its first start.
        authtool = programs["ceph-authtool"]
        mon_keyring = str(keyring / "mon.a.keyring")
        subprocess.run(
            [authtool, "--create-keyring", mon_keyring, "--gen-key", "-n", "mon.",
             "--cap", "mon", "allow *"],
            check=True, capture_output=True,
        )  # fmt: skip
        admin = str(keyring / "client.admin.keyring")
        subprocess.run(
            [authtool, "--create-keyring", admin, "--gen-key", "-n", "client.admin",
             "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *"],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            [authtool, mon_keyring, "--import-keyring", admin], check=True, capture_output=True
        )
        monmap = str(folder / "monmap")
        subprocess.run(
            [programs["monmaptool"], "--create", "--fsid", fsid,
             "--addv", "a", f"[v1:127.0.0.1:{mon_port}]", monmap],
            check=True, capture_output=True,
        )  # fmt: skip
        steps.run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", mon_keyring)
        cluster.processes.append(steps.spawn("ceph-mon", "-i", "a"))
        _poll(
            "monitor", lambda: steps.ceph_json("mon", "stat"), cluster.processes, deadline, cluster
        )

        # The OSD: registered with a key of its own, then made and started on memstore.
        osd_uuid = str(uuid.uuid4())
        secret = subprocess.run(
            [authtool, "--gen-print-key"], check=True, capture_output=True, text=True
        ).stdout.strip()
        secrets = folder / "osd" / "new.json"
        secrets.write_text(json.dumps({"cephx_secret": secret}))
        osd_id = steps.ceph("osd", "new", osd_uuid, "-i", str(secrets)).strip()
        if osd_id != "0":
            raise RuntimeError(f"Ceph: the first OSD got id {osd_id!r}")
        steps.run("ceph-osd", "-i", "0", "--mkfs", "--key", secret, "--osd-uuid", osd_uuid)
        subprocess.run(
            [authtool, "--create-keyring", str(folder / "osd" / "osd.0" / "keyring"),
             "-n", "osd.0", "--add-key", secret],
            check=True, capture_output=True,
        )  # fmt: skip
        cluster.processes.append(steps.spawn("ceph-osd", "-i", "0"))
        _poll(
            "OSD up",
            lambda: steps.ceph_json("osd", "stat").get("num_up_osds") == 1,
            cluster.processes,
            deadline,
            cluster,
        )

        # The S3 gateway, with a key of its own; it creates its pools on first start.
        rgw_keyring = str(keyring / "client.rgw.gw.keyring")
        steps.ceph(
            "auth", "get-or-create", "client.rgw.gw",
            "mon", "allow rw", "osd", "allow rwx", "-o", rgw_keyring,
        )  # fmt: skip
        cluster.processes.append(steps.spawn("radosgw", "-n", "client.rgw.gw"))
        url = f"http://127.0.0.1:{rgw_port}"
        _poll(
            "S3 endpoint",
            lambda: requests.get(url, timeout=2).status_code == 200,
            cluster.processes,
            deadline,
            cluster,
        )
        aws = env_for_aws()
        cluster.access_key, cluster.secret_key = (
            aws["AWS_ACCESS_KEY_ID"],
            aws["AWS_SECRET_ACCESS_KEY"],
        )
        steps.run(
            "radosgw-admin", "user", "create", "--uid", "gateway-tests",
            "--display-name", "gateway tests",
            "--access-key", cluster.access_key, "--secret", cluster.secret_key,
        )  # fmt: skip
        cluster.url, cluster.https_url = url, f"https://127.0.0.1:{tls_port}"
        cluster.ca_file = str(folder / "tls" / "cert.pem")
    except BaseException:
        cluster.stop()
        raise
    cluster.started_in = time.monotonic() - began
    return cluster


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":  # a cluster by hand: python tests/ceph_harness.py DIR
    import sys

    started = start_ceph(Path(sys.argv[1]))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # not inherited
    print(f"{started.url} and {started.https_url} (CA {started.ca_file}) ready in", end=" ")
    print(f"{started.started_in:.1f} s; SIGINT or SIGTERM to {os.getpid()} stops it", flush=True)
    signal.sigwait({signal.SIGINT, signal.SIGTERM})
    started.stop()
