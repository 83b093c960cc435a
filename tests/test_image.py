"""The Docker image, built and run: a private dockerd (tests/docker_harness.py) builds it once for
this file, and its containers run with the flags docs/deployment.md gives (``--network host``,
``--read-only --tmpfs /tmp``, a volume on /app/var, ``--stop-timeout``) against the moto server
and a Ceph RGW.

- gunicorn in the image on S3 + DynamoDB + SQS (moto): healthy on its own GATEWAY_BIND, a curl
  upload stored with its exact bytes, a worker container of the same image processing it to
  ready; both run as uid 10001 on a read-only root and write nothing outside their volume; both
  stop on SIGTERM with exit code 0.
- the same on Ceph's S3 (tests/ceph_harness.py; records and queue in SQLite on the volume), in
  one container: healthy, a curl upload stored in the Ceph bucket with its exact bytes, its record
  (size, SHA-256, key), the worker (an exec in that container) taking it to ready, exit code 0.
- local storage on the volume: ``docker stop`` during two uploads ends them as the docs say (the
  one that finishes within the grace 201, the one still arriving 503 ``shutting_down``), the
  master exits 0, and the volume holds the stored file and its record, nothing else (no
  ``.partial-*`` file).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import resource
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import media_samples as samples
import pytest
import requests
from docker_harness import IMAGE, Daemon, Docker, build_image, image_size, log

from e2e_harness import ensure_curl, poll
from support import JWT_SECRET, env_for_aws, free_port, leftovers, unique

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

MiB = 1024 * 1024
UID = 10001
# docs/deployment.md asks for 65536 file descriptors; no container gets more than dockerd has.
NOFILE = min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
STOP_TIMEOUT = 30  # the run flag under test: >= delay + grace + 15 s (gunicorn.conf.py checks)
# Short grace periods keep the stop test quick (the defaults are 5 s, 60 s and 120 s), yet the
# slow upload still ends after docker stop's default 10 s: without --stop-timeout it would be
# SIGKILLed (exit 137, no answer, a .partial-* file left).
QUICK_STOP = {
    "GATEWAY_SHUTDOWN_DELAY": "2",
    "GATEWAY_SHUTDOWN_UPLOAD_GRACE": "9",  # ends past docker stop's default 10 s
    "GATEWAY_GRACEFUL_TIMEOUT": "24",
}


@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    daemon = Daemon()
    try:
        yield daemon.start()
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def image(docker: Docker) -> str:
    seconds = build_image(docker)
    log(f"{IMAGE} built in {seconds:.0f} s, {image_size(docker) / 1e6:.0f} MB")
    return IMAGE


@dataclass
class Containers:
    """Containers and volumes of one test, removed at its end."""

    docker: Docker
    image: str
    names: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def volume(self) -> str:
        name = unique("ugw-var")
        self.docker("volume", "create", name)
        self.volumes.append(name)
        return name

    def flags(self, env: dict[str, str], volume: str) -> list[str]:
        """docs/deployment.md's run flags, and a 1 s health interval to see the check quickly."""
        out = [
            "--network",
            "host",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "-v",
            f"{volume}:/app/var",
            "--ulimit",
            f"nofile={NOFILE}:{NOFILE}",
            "--stop-timeout",
            str(STOP_TIMEOUT),
            "--health-interval",
            "1s",
            "--health-start-period",
            "0s",
        ]
        for name, value in env.items():
            out += ["-e", f"{name}={value}"]
        return out

    def once(self, env: dict[str, str], volume: str, *command: str) -> str:
        """Run a command of the image to its end; its stdout."""
        done = self.docker("run", "--rm", *self.flags(env, volume), self.image, *command)
        return done.stdout

    def start(self, env: dict[str, str], volume: str, *command: str) -> str:
        name = unique("ugw")
        self.names.append(name)
        self.docker("run", "-d", "--name", name, *self.flags(env, volume), self.image, *command)
        return name

    def health(self, name: str) -> str:
        return self.docker.inspect(name)["State"]["Health"]["Status"]

    def logs(self, name: str) -> str:
        done = self.docker("logs", name, check=False)
        return done.stdout + done.stderr

    def remove(self) -> None:
        for name in self.names:
            self.docker("rm", "-f", name, check=False)
        for volume in self.volumes:
            self.docker("volume", "rm", "-f", volume, check=False)


@pytest.fixture
def containers(docker: Docker, image: str) -> Iterator[Containers]:
    made = Containers(docker, image)
    try:
        yield made
    finally:
        made.remove()


def token(containers: Containers, env: dict[str, str], volume: str) -> str:
    out = containers.once(
        env, volume, "flask", "--app", "wsgi", "token", "--sub", "alice", "--projects", "p1"
    )
    return out.strip().splitlines()[-1]


def wait_healthy(containers: Containers, name: str) -> None:
    if not poll(lambda: containers.health(name) == "healthy", timeout=60, interval=0.5):
        raise AssertionError(f"{name}: {containers.health(name)}\n{containers.logs(name)}")


def proc_uids(docker: Docker, name: str) -> set[str]:
    """The real, effective, saved and filesystem uids of every process in the container."""
    out = docker("exec", name, "sh", "-c", "grep -h '^Uid:' /proc/[0-9]*/status").stdout
    return {uid for line in out.splitlines() for uid in line.split()[1:]}


def assert_confined(docker: Docker, name: str) -> None:
    """Non-root everywhere, a read-only root, nothing written outside the volume and /tmp."""
    assert proc_uids(docker, name) == {str(UID)}
    assert docker.inspect(name)["HostConfig"]["ReadonlyRootfs"] is True
    probe = docker("exec", name, "touch", "/app/probe", check=False)
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr
    writable = docker("exec", name, "touch", "/app/var/probe", "/tmp/probe", check=False)
    assert writable.returncode == 0, writable.stderr
    docker("exec", name, "rm", "/app/var/probe", "/tmp/probe")
    assert docker("diff", name).stdout == ""


def stop_exit_code(docker: Docker, name: str) -> int:
    docker("stop", name, timeout=STOP_TIMEOUT + 30)
    state = docker.inspect(name)["State"]
    assert state["OOMKilled"] is False
    return state["ExitCode"]


def test_gateway_and_worker_containers_on_s3(containers: Containers, moto_url: str, tmp_path):
    docker = containers.docker
    port = free_port()
    bucket, table, queue = unique("img"), unique("img-media"), unique("img-jobs")
    env = {
        **env_for_aws(),
        "GATEWAY_BIND": f"127.0.0.1:{port}",
        "GATEWAY_WORKERS": "1",
        "GATEWAY_JWT_SECRET": JWT_SECRET,
        "GATEWAY_STORAGE_URL": f"s3://{bucket}/uploads",
        "GATEWAY_S3_ENDPOINT_URL": moto_url,
        "GATEWAY_RECORDS_URL": f"dynamodb://{table}",
        "GATEWAY_DYNAMODB_ENDPOINT_URL": moto_url,
        "GATEWAY_QUEUE_URL": f"sqs://{queue}",
        "GATEWAY_SQS_ENDPOINT_URL": moto_url,
        "GATEWAY_SHUTDOWN_DELAY": "1",
    }
    volume = containers.volume()
    assert "ready" in containers.once(env, volume, "flask", "--app", "wsgi", "init")
    bearer = token(containers, env, volume)

    gateway = containers.start(env, volume)
    wait_healthy(containers, gateway)  # the check asks GATEWAY_BIND, here not 0.0.0.0:8000
    url = f"http://127.0.0.1:{port}"
    assert requests.get(url + "/healthz", timeout=5).status_code == 200
    # The other branch of the same check: nothing answering on the address it is given.
    closed = f"GATEWAY_BIND=127.0.0.1:{free_port()}"
    check = ["python", "-m", "gateway.healthcheck"]
    assert docker("exec", "-e", closed, gateway, *check, check=False).returncode == 1
    assert docker("exec", gateway, *check, check=False).returncode == 0

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(samples.photo(1200, 900))
    curl = [ensure_curl(), "-sS", "-H", f"Authorization: Bearer {bearer}", "-F", "projectId=p1"]
    done = subprocess.run(
        [*curl, "-F", f"file=@{photo};type=image/jpeg", url + "/api/upload"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answer = json.loads(done.stdout)
    assert answer["success"] is True, answer
    media_id = answer["mediaId"]
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert len(keys) == 1
    assert s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read() == photo.read_bytes()

    def status() -> str:
        got = requests.get(
            f"{url}/api/media/{media_id}", headers={"Authorization": f"Bearer {bearer}"}, timeout=5
        )
        return got.json()["status"]

    assert status() == "stored"  # no worker yet
    worker = containers.start(env, volume, "flask", "--app", "wsgi", "worker")
    assert poll(lambda: status() == "ready", timeout=120, interval=0.5), containers.logs(worker)
    wait_healthy(containers, worker)
    variants = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert len(variants) > 1  # the worker wrote its derived images beside the original

    for name in (gateway, worker):
        assert_confined(docker, name)
    assert stop_exit_code(docker, worker) == 0  # the worker's own SIGTERM handler, as PID 1
    assert stop_exit_code(docker, gateway) == 0


def test_gateway_container_on_ceph(containers: Containers, ceph_url: str, tmp_path):
    """The image on Ceph's S3 (docs/deployment.md "Ceph RGW"), records and queue in SQLite on
    the volume: one container; init, the token and the worker are execs in it."""
    docker = containers.docker
    port = free_port()
    bucket = unique("img-ceph")
    env = {
        **env_for_aws(),  # the keys of the cluster's S3 user
        "GATEWAY_BIND": f"127.0.0.1:{port}",
        "GATEWAY_WORKERS": "1",
        "GATEWAY_JWT_SECRET": JWT_SECRET,
        "GATEWAY_STORAGE_URL": f"s3://{bucket}/uploads",
        "GATEWAY_S3_ENDPOINT_URL": ceph_url,
        "GATEWAY_S3_VERIFIES_SHA256": "off",
        "GATEWAY_SHUTDOWN_DELAY": "1",
    }
    gateway = containers.start(env, containers.volume())
    init = docker("exec", gateway, "flask", "--app", "wsgi", "init").stdout
    assert "ready" in init
    bearer = docker(
        "exec", gateway, "flask", "--app", "wsgi", "token", "--sub", "alice", "--projects", "p1"
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    wait_healthy(containers, gateway)
    url = f"http://127.0.0.1:{port}"
    assert requests.get(url + "/healthz", timeout=5).status_code == 200

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(samples.photo(1200, 900))
    sent = photo.read_bytes()
    done = subprocess.run(
        [ensure_curl(), "-sS", "-H", f"Authorization: Bearer {bearer}", "-F", "projectId=p1",
         "-F", f"file=@{photo};type=image/jpeg", url + "/api/upload"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    answer = json.loads(done.stdout)
    assert answer["success"] is True, answer
    media_id = answer["mediaId"]

    def record() -> dict:
        got = requests.get(
            f"{url}/api/media/{media_id}", headers={"Authorization": f"Bearer {bearer}"}, timeout=5
        )
        assert got.status_code == 200, got.text
        return got.json()

    stored = record()
    assert stored["status"] == "stored"  # no worker yet
    assert (stored["size"], stored["sha256"]) == (len(sent), hashlib.sha256(sent).hexdigest())
    s3 = boto3.client("s3", endpoint_url=ceph_url, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == [stored["s3Key"]]
    assert s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read() == sent

    # The worker of the same image, beside gunicorn in the container (its PID 1 stays gunicorn).
    docker("exec", "-d", gateway, "flask", "--app", "wsgi", "worker")
    assert poll(lambda: record()["status"] == "ready", timeout=120, interval=0.5), containers.logs(
        gateway
    )
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert record()["variants"] and len(listed) > 1  # the derived images, beside it on Ceph
    assert s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read() == sent
    assert_confined(docker, gateway)
    assert stop_exit_code(docker, gateway) == 0


@dataclass
class Upload:
    """A streamed form upload of ``size`` bytes of PNG, paced at ``mib_per_s`` (0: flat out)."""

    port: int
    token: str
    size: int
    mib_per_s: float
    sent: int = 0
    status: int = 0
    body: dict = field(default_factory=dict)
    retry_after: str | None = None
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Upload:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        boundary = "image-stop-boundary-3c9d"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        block = bytes(range(256)) * 4096  # 1 MiB, without the boundary
        first = samples.png(64, 64)
        first += block[len(first) :]
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.putrequest("POST", "/api/upload?projectId=p1")
            conn.putheader("Authorization", f"Bearer {self.token}")
            conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
            conn.putheader("Content-Length", str(len(head) + self.size + len(tail)))
            conn.endheaders(head)
            started = time.monotonic()
            try:
                while self.sent < self.size:
                    conn.send(block if self.sent else first)
                    self.sent += MiB
                    if self.mib_per_s:
                        ahead = self.sent / MiB / self.mib_per_s - (time.monotonic() - started)
                        time.sleep(max(0.0, ahead))
                conn.send(tail)
            except OSError:  # answered early and closed: read the answer
                pass
            response = conn.getresponse()
            self.status = response.status
            self.retry_after = response.getheader("Retry-After")
            self.body = json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.error = repr(exc)
        finally:
            conn.close()
            self.done.set()


def test_var_is_a_volume_writable_on_a_read_only_root(containers: Containers):
    """Without a -v, /app/var is still writable (an anonymous volume, owned by the gateway user):
    a forgotten mount loses data at removal but never fails uploads with a read-only error."""
    docker = containers.docker
    assert list(docker.inspect(containers.image)["Config"]["Volumes"]) == ["/app/var"]
    probe = docker(
        "run", "--rm", "--read-only", "--network", "none", containers.image,
        "sh", "-c", "touch /app/var/probe && id -u",
    )  # fmt: skip
    assert probe.stdout.strip() == str(UID)
    denied = docker(
        "run", "--rm", "--read-only", "--network", "none", containers.image,
        "touch", "/app/probe", check=False,
    )  # fmt: skip
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr


def test_docker_stop_during_uploads_ends_them_as_documented(containers: Containers):
    """docker stop with the run's --stop-timeout: SIGTERM, /readyz 503 for the delay, then the
    upload still arriving after the grace gets 503 shutting_down and is rolled back; the one that
    finishes first is stored; the master exits 0 (no SIGKILL), nothing half-written remains."""
    docker = containers.docker
    port = free_port()
    env = {
        "GATEWAY_BIND": f"127.0.0.1:{port}",
        "GATEWAY_WORKERS": "1",
        "GATEWAY_JWT_SECRET": JWT_SECRET,
        "GATEWAY_PROCESSING": "off",
        **QUICK_STOP,
    }
    volume = containers.volume()
    containers.once(env, volume, "flask", "--app", "wsgi", "init")
    bearer = token(containers, env, volume)
    gateway = containers.start(env, volume)
    wait_healthy(containers, gateway)

    slow = Upload(port, bearer, size=64 * MiB, mib_per_s=2).start()
    assert poll(lambda: slow.sent >= 2 * MiB, timeout=30)
    stopping = docker.popen("stop", gateway, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # Within the delay everything is still served (and readiness says no): a short upload
        # started now finishes within the grace and is stored.
        assert poll(lambda: _readyz(port) == 503, timeout=10)
        fast = Upload(port, bearer, size=2 * MiB, mib_per_s=0).start()
        assert fast.done.wait(30) and slow.done.wait(60)
    finally:
        assert stopping.wait(STOP_TIMEOUT + 30) == 0, stopping.stderr
    assert (fast.status, fast.error) == (201, ""), fast.body
    assert (slow.status, slow.error) == (503, ""), slow.body
    assert slow.body["error"]["code"] == "shutting_down" and slow.retry_after
    state = docker.inspect(gateway)["State"]
    assert (state["ExitCode"], state["OOMKilled"]) == (0, False), containers.logs(gateway)

    root = Path(docker("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip())
    media = sorted(
        p.relative_to(root / "media") for p in (root / "media").rglob("*") if p.is_file()
    )
    assert not [p for p in media if p.name.startswith(".partial-")], media
    assert len(media) == 1, media
    svc = _services_on(root)
    left = leftovers(svc)
    assert left["records"] == [fast.body["mediaId"]]
    assert left["pending_uploads"] == []
    record = svc.records.get(fast.body["mediaId"])
    assert record.size == 2 * MiB


def _readyz(port: int) -> int:
    try:
        return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
    except requests.RequestException:
        return 0


def _services_on(root: Path):
    """The gateway's own view of the volume (local storage and SQLite, the image's defaults)."""
    from gateway.config import Settings
    from gateway.services import Services

    settings = Settings.from_env(
        {
            "GATEWAY_JWT_SECRET": JWT_SECRET,
            "GATEWAY_STORAGE_URL": str(root / "media"),
            "GATEWAY_RECORDS_URL": f"sqlite:///{root / 'gateway.db'}",
            "GATEWAY_PROCESSING": "off",
        }
    )
    return Services.from_settings(settings)
