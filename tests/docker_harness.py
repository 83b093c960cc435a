"""Docker for the image tests, and for `make image`: a private dockerd, base images, the build.

- Debian's ``docker.io`` (dockerd 20.10 and its own client, ``/usr/bin/docker``: the client must
  match the daemon, whatever other ``docker`` is on the PATH) and ``debootstrap`` are installed
  when missing.
- ``dockerd`` runs with its own data root, exec root, socket and pidfile under ``build/docker``
  of this checkout, and ``--bridge=none --iptables=false --ip-forward=false``: the host's network
  is left as it was, so containers run with ``--network host`` (or ``none``). It is stopped by its
  PID. The data root stays between runs (image layers are the build cache).
- Base images: the usual ``python:3.11-slim`` and ``node:20-bookworm-slim`` when a registry serves
  them; otherwise local stand-ins (``docker/standins/``) on a Debian bookworm made by
  ``debootstrap --variant=minbase``, whose tarball is cached under
  ``~/.cache/upload-gateway`` (``$XDG_CACHE_HOME``) so a second data root needs no debootstrap.
- The image is built with ``--build-arg PYTHON_IMAGE=... NODE_IMAGE=...`` (the Dockerfile's
  defaults are the usual images).

``python tests/docker_harness.py build`` builds the image (``upload-gateway:local``) this way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from e2e_harness import _ensure

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "build" / "docker"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "upload-gateway"
IMAGE = "upload-gateway:local"
UPSTREAM = {"PYTHON_IMAGE": "python:3.11-slim", "NODE_IMAGE": "node:20-bookworm-slim"}
STANDIN_BASE = "upload-gateway-standin/debian:bookworm-slim"
STANDINS = {
    "PYTHON_IMAGE": ("upload-gateway-standin/python:3.11-slim", "python.Dockerfile"),
    "NODE_IMAGE": ("upload-gateway-standin/node:20-bookworm-slim", "node.Dockerfile"),
}
DEBIAN_MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
SUDO = [] if os.geteuid() == 0 else ["sudo", "-n"]


def log(message: str) -> None:
    print(f"docker_harness: {message}", file=sys.stderr, flush=True)


def ensure_tools() -> tuple[str, str]:
    """(dockerd, docker client of the same package), installing ``docker.io`` and
    ``debootstrap`` from Debian when missing."""
    dockerd = _ensure("dockerd", ["docker.io"])
    _ensure("debootstrap", ["debootstrap"])
    client = Path(dockerd).resolve().parent.parent / "bin" / "docker"  # /usr/sbin -> /usr/bin
    if not client.exists():
        raise RuntimeError(f"no docker client beside {dockerd} (expected {client})")
    return dockerd, str(client)


@dataclass
class Docker:
    """The client of one private daemon."""

    client: str
    host: str  # unix://...

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 600, input: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*SUDO, self.client, "--host", self.host, *args],
            capture_output=True,
            text=input is None,
            input=input,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"docker {' '.join(args)} exited {done.returncode}:\n"
                + f"{done.stdout!s}"[-3000:]
                + f"{done.stderr!s}"[-3000:]
            )
        return done  # type: ignore[return-value]

    def popen(self, *args: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen([*SUDO, self.client, "--host", self.host, *args], **kwargs)

    def has_image(self, ref: str) -> bool:
        return self("image", "inspect", ref, check=False).returncode == 0

    def inspect(self, ref: str) -> dict:
        return json.loads(self("inspect", ref).stdout)[0]


class Daemon:
    """dockerd under ``build_dir``, started and stopped by PID."""

    def __init__(self, build_dir: Path = BUILD_DIR) -> None:
        self.build_dir = build_dir
        self.proc: subprocess.Popen | None = None
        self.docker: Docker | None = None

    def start(self, timeout: float = 60) -> Docker:
        dockerd, client = ensure_tools()
        self.build_dir.mkdir(parents=True, exist_ok=True)
        # The exec root holds containerd's sockets: a short path, as unix sockets allow 108 bytes.
        self.exec_root = Path(tempfile.mkdtemp(prefix="ugw-docker-"))
        sock = self.exec_root / "docker.sock"
        self.log_file = open(self.build_dir / "dockerd.log", "ab")
        self.proc = subprocess.Popen(
            [
                *SUDO,
                dockerd,
                "--data-root",
                str(self.build_dir / "data"),
                "--exec-root",
                str(self.exec_root / "exec"),
                "--host",
                f"unix://{sock}",
                "--pidfile",
                str(self.exec_root / "dockerd.pid"),
                "--bridge=none",
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
            ],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.docker = Docker(client, f"unix://{sock}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited {self.proc.returncode}: {self.tail()}")
            if sock.exists() and self.docker("version", check=False, timeout=10).returncode == 0:
                return self.docker
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"dockerd did not answer in {timeout}s: {self.tail()}")

    def tail(self) -> str:
        return (self.build_dir / "dockerd.log").read_text(errors="replace")[-3000:]

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to dockerd's PID (it stops its containers and containerd), SIGKILL after
        ``timeout``."""
        if self.proc is not None and self.proc.poll() is None:
            if SUDO:
                subprocess.run([*SUDO, "kill", "-TERM", str(self.proc.pid)], check=False)
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.log_file.close()
            # dockerd leaves its default network namespace bind-mounted in the exec root.
            netns = self.exec_root / "exec" / "netns" / "default"
            if netns.exists():
                subprocess.run([*SUDO, "umount", str(netns)], check=False, capture_output=True)
            subprocess.run([*SUDO, "rm", "-rf", str(self.exec_root)], check=False)
        self.proc = None


def _pull(docker: Docker, ref: str) -> bool:
    if docker.has_image(ref):
        return True
    try:
        return docker("pull", ref, check=False, timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def base_images(docker: Docker, cache_dir: Path = CACHE_DIR) -> dict[str, str]:
    """The build arguments naming the base images: the usual ones when they can be pulled (or
    are already there), otherwise the local stand-ins, built when missing."""
    if all(_pull(docker, ref) for ref in UPSTREAM.values()):
        return dict(UPSTREAM)
    log("no registry serves the base images: local stand-ins")
    args = {}
    for arg, (name, dockerfile) in STANDINS.items():
        tag = f"{name}-{_standin_digest(dockerfile)}"
        if not docker.has_image(tag):
            _standin_base(docker, cache_dir)
            _build_standin(docker, tag, dockerfile)
        args[arg] = tag
    return args


def _standin_digest(dockerfile: str) -> str:
    """What a stand-in is made of (its Dockerfile, the CA bundle, this machine's Node): a new
    digest, a new tag, a new build."""
    digest = hashlib.sha256((ROOT / "docker" / "standins" / dockerfile).read_bytes())
    digest.update(CA_BUNDLE.read_bytes())
    if dockerfile == "node.Dockerfile":
        node = shutil.which("node")
        digest.update(Path(node).resolve().read_bytes() if node else b"")
    return digest.hexdigest()[:12]


def _standin_base(docker: Docker, cache_dir: Path) -> None:
    """Debian bookworm (minbase) imported from the cached tarball, debootstrapped once."""
    if docker.has_image(STANDIN_BASE):
        return
    tarball = cache_dir / "debian-bookworm-minbase.tar.gz"
    if not tarball.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="ugw-debootstrap-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            started = time.monotonic()
            log(f"debootstrap --variant=minbase bookworm from {DEBIAN_MIRROR}")
            subprocess.run(
                [*SUDO, "debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            # Written whole or not at all: a second run never imports half a tarball.
            partial = tarball.with_name(tarball.name + ".partial")
            subprocess.run(
                [*SUDO, "tar", "-C", str(rootfs), "--numeric-owner", "-czf", str(partial), "."],
                check=True,
            )
            partial.replace(tarball)
            subprocess.run([*SUDO, "rm", "-rf", str(rootfs)], check=True)
            log(f"debootstrap and tarball: {time.monotonic() - started:.0f} s -> {tarball}")
    docker("import", str(tarball), STANDIN_BASE)


def _build_standin(docker: Docker, tag: str, dockerfile: str) -> None:
    with tempfile.TemporaryDirectory(prefix="ugw-standin-") as tmp:
        context = Path(tmp)
        shutil.copy(ROOT / "docker" / "standins" / dockerfile, context / "Dockerfile")
        shutil.copy(CA_BUNDLE, context / "ca-certificates.crt")
        if dockerfile == "node.Dockerfile":
            _stage_node(context / "node")
        log(f"building the stand-in {tag}")
        docker(
            "build",
            "--network",
            "host",
            "--build-arg",
            f"BASE={STANDIN_BASE}",
            "-t",
            tag,
            str(context),
        )


def _stage_node(stage: Path) -> None:
    """This machine's Node and npm under /usr/local, with the libraries node links against."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        raise RuntimeError("the node stand-in needs node and npm on this machine (make node)")
    node = str(Path(node).resolve())
    (stage / "usr/local/bin").mkdir(parents=True)
    shutil.copy(node, stage / "usr/local/bin/node")
    npm_dir = Path(npm).resolve().parent.parent  # .../node_modules/npm
    shutil.copytree(npm_dir, stage / "usr/local/lib/node_modules/npm", symlinks=True)
    linked = subprocess.run(["ldd", node], capture_output=True, text=True, check=True).stdout
    for line in linked.splitlines():
        parts = line.split("=>")
        if len(parts) == 2 and parts[1].strip().startswith("/"):
            lib = Path(parts[1].split()[0])
            if not lib.name.startswith(("libc.so", "libm.so", "libdl.so", "libpthread.so")):
                # Under its real directory: /lib is a link to usr/lib in bookworm, and a COPY of
                # a lib/ directory would replace that link.
                target = stage / (lib.parent.resolve() / lib.name).relative_to("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(lib, target)


def build_image(docker: Docker, tag: str = IMAGE) -> float:
    """Build the project's image; the seconds it took."""
    args = base_images(docker)
    started = time.monotonic()
    build_args = [x for arg, ref in args.items() for x in ("--build-arg", f"{arg}={ref}")]
    docker("build", "--network", "host", *build_args, "-t", tag, str(ROOT), timeout=1800)
    seconds = time.monotonic() - started
    _forget_old_builds(docker, args)
    return seconds


def _forget_old_builds(docker: Docker, kept: dict[str, str]) -> None:
    """The data root is kept between runs: drop what no current image uses (earlier builds'
    images, stand-ins of an earlier digest). Layers of current images stay: the build cache."""
    names = docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    for name in names:
        stale = name not in kept.values() and name != STANDIN_BASE
        if name.startswith("upload-gateway-standin/") and stale:
            docker("rmi", name, check=False)
    docker("image", "prune", "--force", check=False)


def image_size(docker: Docker, tag: str = IMAGE) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


def main(argv: list[str]) -> int:
    if argv[1:] != ["build"]:
        print("usage: docker_harness.py build", file=sys.stderr)
        return 2
    daemon = Daemon()
    started = time.monotonic()
    docker = daemon.start()
    try:
        seconds = build_image(docker)
        size = image_size(docker)
    finally:
        daemon.stop()
    log(
        f"{IMAGE}: {size / 1e6:.0f} MB; image build {seconds:.0f} s, "
        f"{time.monotonic() - started:.0f} s in all (data root {BUILD_DIR / 'data'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
