"""Start the real servers the test suite needs, if they are not running.

``python -m tests.services start`` is run by ``scripts/test``. Redis and
RabbitMQ are expected on their standard ports (started here if missing);
servers the suite owns (a Redis Cluster on 7000-7002, ...) run under
``.services/`` and are started once and reused.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".services"

REDIS = ("127.0.0.1", 6379)
RABBITMQ = ("127.0.0.1", 5672)
REDIS_CLUSTER_PORTS = (7000, 7001, 7002)
MOTO = ("127.0.0.1", 5000)


def is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_open(host: str, port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if is_open(host, port):
            return True
        time.sleep(0.2)
    return False


def _log(msg: str) -> None:
    print(f"[services] {msg}", file=sys.stderr, flush=True)


def apt_install(*packages: str) -> None:
    """Install Debian packages when missing (only as root, where apt exists)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        _log(f"cannot install {' '.join(packages)}: not root or no apt-get")
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(
        ["apt-get", "install", "-y", "-q", *packages], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", *packages], env=env, check=False, capture_output=True
        )


def ensure_binary(name: str, package: str) -> str | None:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        _log(f"{name} not found; installing {package}")
        apt_install(package)
        path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    return path


def redis_server_cmd(port: int, workdir: Path, *extra: str) -> list[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    return [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "yes",
        "--dir",
        str(workdir),
        "--logfile",
        str(workdir / "redis.log"),
        "--pidfile",
        str(workdir / "redis.pid"),
        *extra,
    ]


def ensure_redis() -> bool:
    if is_open(*REDIS):
        return True
    if ensure_binary("redis-server", "redis-server") is None:
        return False
    _log("starting redis-server on 6379")
    subprocess.run(redis_server_cmd(REDIS[1], STATE / "redis-6379"), check=False)
    return wait_open(*REDIS, 10)


def ensure_rabbitmq() -> bool:
    if is_open(*RABBITMQ):
        return True
    if ensure_binary("rabbitmq-server", "rabbitmq-server") is None:
        return False
    _log("starting rabbitmq-server (takes 10-20 s)")
    subprocess.run(["rabbitmq-server", "-detached"], check=False, capture_output=True)
    subprocess.run(["rabbitmqctl", "await_startup", "--timeout", "60"], check=False, capture_output=True)
    return wait_open(*RABBITMQ, 60)


def ensure_redis_cluster() -> bool:
    """A 3-master Redis Cluster on 127.0.0.1:7000-7002 (owned by the suite)."""
    if all(is_open("127.0.0.1", p) for p in REDIS_CLUSTER_PORTS) and _cluster_ok():
        return True
    if ensure_binary("redis-server", "redis-server") is None:
        return False
    base = STATE / "redis-cluster"
    for port in REDIS_CLUSTER_PORTS:
        if is_open("127.0.0.1", port):
            subprocess.run(
                ["redis-cli", "-p", str(port), "shutdown", "nosave"], check=False, capture_output=True
            )
        workdir = base / str(port)
        shutil.rmtree(workdir, ignore_errors=True)
        cmd = redis_server_cmd(
            port,
            workdir,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(workdir / "nodes.conf"),
            "--cluster-node-timeout",
            "2000",
        )
        subprocess.run(cmd, check=False)
    for port in REDIS_CLUSTER_PORTS:
        if not wait_open("127.0.0.1", port, 10):
            return False
    _log("creating the Redis Cluster on 7000-7002")
    nodes = [f"127.0.0.1:{p}" for p in REDIS_CLUSTER_PORTS]
    subprocess.run(
        ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
        check=False,
        capture_output=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _cluster_ok():
            return True
        time.sleep(0.3)
    return False


def _cluster_ok() -> bool:
    result = subprocess.run(
        ["redis-cli", "-p", str(REDIS_CLUSTER_PORTS[0]), "cluster", "info"],
        capture_output=True,
        text=True,
        check=False,
    )
    return "cluster_state:ok" in result.stdout


PUBSUB = ("127.0.0.1", 8085)
PUBSUB_PACKAGE = "google-cloud-cli-pubsub-emulator"
NOT_INSTALLED: set[str] = set()
"""Services that cannot run on this machine at all (their tests are left out, even under CI)."""


def pubsub_emulator() -> str | None:
    """The path of the Pub/Sub emulator's launcher, from its Debian package (None if absent)."""
    if shutil.which("dpkg") is None:
        return None
    result = subprocess.run(["dpkg", "-L", PUBSUB_PACKAGE], capture_output=True, text=True, check=False)
    for line in result.stdout.splitlines():
        if line.endswith("bin/cloud-pubsub-emulator") and Path(line).exists():
            return line
    return None


def ensure_pubsub() -> bool:
    """Google's Pub/Sub emulator on 127.0.0.1:8085 (clients set PUBSUB_EMULATOR_HOST).

    It comes from the Debian package google-cloud-cli-pubsub-emulator, whose apt source
    is usually not configured: where the package is absent this says so and returns False.
    """
    if is_open(*PUBSUB):
        return True
    launcher = pubsub_emulator()
    if launcher is None:
        _log(
            f"the Pub/Sub emulator is not installed (Debian package {PUBSUB_PACKAGE}, whose apt "
            "source is not configured here); the Pub/Sub tests are left out"
        )
        NOT_INSTALLED.add("pubsub")
        return False
    workdir = STATE / "pubsub"
    workdir.mkdir(parents=True, exist_ok=True)
    _log("starting the Pub/Sub emulator on 8085 (takes 2-5 s)")
    with open(workdir / "emulator.log", "ab") as log:
        subprocess.Popen(
            [launcher, f"--host={PUBSUB[0]}", f"--port={PUBSUB[1]}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return wait_open(*PUBSUB, 60)


MEMCACHED = ("127.0.0.1", 11211)
MONGO = ("127.0.0.1", 27017)


def ensure_memcached() -> bool:
    """memcached from Debian on 127.0.0.1:11211."""
    if is_open(*MEMCACHED):
        return True
    binary = ensure_binary("memcached", "memcached")
    if binary is None:
        return False
    _log("starting memcached on 11211")
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    subprocess.run([binary, "-d", "-l", MEMCACHED[0], "-p", str(MEMCACHED[1]), *user], check=False)
    return wait_open(*MEMCACHED, 10)


def ensure_mongo() -> bool:
    """nx-27017 (a MongoDB wire-protocol server on SQLite, from the test extra) on 27017."""
    if is_open(*MONGO):
        return True
    binary = shutil.which("nx-27017") or str(Path(sys.executable).parent / "nx-27017")
    if not Path(binary).exists():
        _log("nx-27017 not found: install the test extra (scripts/venv)")
        return False
    workdir = STATE / "nx-27017"
    workdir.mkdir(parents=True, exist_ok=True)
    _log("starting nx-27017 on 27017")
    cmd = [binary, "--db", "memory", "-p", str(MONGO[1])]
    cmd += ["--log-file", str(workdir / "nx.log"), "--pid-file", str(workdir / "nx.pid")]
    subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return wait_open(*MONGO, 15)


def ensure_moto() -> bool:
    """moto's server (from the test extra) on 127.0.0.1:5000: SQS and DynamoDB for the AWS drivers."""
    if is_open(*MOTO):
        return True
    exe = Path(sys.executable).with_name("moto_server")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    workdir = STATE / "moto"
    workdir.mkdir(parents=True, exist_ok=True)
    _log("starting moto_server on 5000")
    with (workdir / "moto.log").open("ab") as log:
        subprocess.Popen(
            [*command, "-H", MOTO[0], "-p", str(MOTO[1])],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    return wait_open(*MOTO, 30)


CHROMIUM = ("chromium", "chromedriver")


def ensure_chromium() -> bool:
    """Debian's headless-capable Chromium and its chromedriver, for the dashboard's browser tests."""
    if all(shutil.which(name) for name in CHROMIUM):
        return True
    _log("chromium or chromedriver not found; installing chromium chromium-driver")
    apt_install("chromium", "chromium-driver")
    return all(shutil.which(name) for name in CHROMIUM)


SERVICES: dict[str, Callable[[], bool]] = {
    "redis": ensure_redis,
    "rabbitmq": ensure_rabbitmq,
    "redis-cluster": ensure_redis_cluster,
    "pubsub": ensure_pubsub,
    "memcached": ensure_memcached,
    "mongo": ensure_mongo,
    "moto": ensure_moto,
    "chromium": ensure_chromium,
}


def start(names: list[str] | None = None) -> int:
    failed = []
    for name in names or list(SERVICES):
        ok = SERVICES[name]()
        if not ok and name in NOT_INSTALLED:
            _log(f"{name}: not installed here")
            continue
        _log(f"{name}: {'up' if ok else 'NOT AVAILABLE'}")
        if not ok:
            failed.append(name)
    return 1 if failed and os.environ.get("CI") == "true" else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] != "start":
        print("usage: python -m tests.services start [NAME ...]", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(start(args[1:] or None))
