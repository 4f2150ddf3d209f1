"""Redis URLs as Go Machinery accepts them, and real connections over each kind: TCP,
unix socket with a password, TLS (with client certificates), Sentinel, Cluster; and a script
that never closes its server exits quietly."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import BlockingConnectionPool, ConnectionPool, SSLConnection
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import UnixDomainSocketConnection
from redis.exceptions import ConnectionError

from machinery_aio import Config, ConfigError, Server
from machinery_aio.drivers.redis.connection import create_redis, is_cluster, parse_redis_url
from tests.conftest import IN_CI
from tests.drivers.redis.conftest import CLUSTER, STANDALONE, need
from tests.support.drivers import run_left_open

# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://", {"hosts": [("127.0.0.1", 6379)], "db": 0}),
        ("redis://example.com", {"hosts": [("example.com", 6379)], "db": 0}),
        ("redis://example.com:6380/3", {"hosts": [("example.com", 6380)], "db": 3}),
        ("redis://s3cret@example.com:6380", {"password": "s3cret", "username": None}),  # Go's form
        ("redis://user:s3cret@example.com/2", {"username": "user", "password": "s3cret", "db": 2}),
        ("redis://:s3cret@example.com", {"username": None, "password": "s3cret"}),
        ("redis://user:p%40ss%2Fword@h", {"username": "user", "password": "p@ss/word"}),
        ("redis://[::1]:6390/1", {"hosts": [("::1", 6390)], "db": 1}),
        ("redis://[::1]", {"hosts": [("::1", 6379)]}),
        ("redis://h1:7000,h2:7001, h3:7002", {"hosts": [("h1", 7000), ("h2", 7001), ("h3", 7002)]}),
        ("rediss://pw@example.com:6390/1", {"tls": True, "password": "pw", "db": 1}),
        (
            "rediss://h?ssl_ca_certs=/ca.pem&ssl_cert_reqs=none",
            {"tls": True, "options": {"ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "none"}},
        ),
        ("redis+socket:///var/run/redis.sock", {"socket_path": "/var/run/redis.sock", "db": 0}),
        (
            "redis+socket://pw@/var/run/redis.sock:/5",
            {"socket_path": "/var/run/redis.sock", "db": 5, "password": "pw"},
        ),
        (
            "redis+sentinel://pw@s1,s2:26380/2?master_name=mymaster",
            {"sentinel": True, "hosts": [("s1", 26379), ("s2", 26380)], "db": 2, "password": "pw"},
        ),
    ],
)
def test_parse(url: str, expected: dict[str, Any]) -> None:
    settings = parse_redis_url(url)
    for key, value in expected.items():
        assert getattr(settings, key) == value, key


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("amqp://guest:s3cret@localhost", "not a Redis URL"),
        ("localhost:6379", "not a Redis URL"),
        ("redis://:s3cret@host:port", "bad port 'port'"),
        ("redis://:s3cret@host:99999", "bad port '99999'"),
        ("redis://:s3cret@host/x", "bad database number 'x'"),
        ("redis://:s3cret@host/-1", "bad database number '-1'"),
        ("redis://:s3cret@[::1", "bad host"),
        ("redis+socket://s3cret@", "needs a socket path"),
        ("redis+socket://s3cret@/tmp/r.sock:/db", "bad database number"),
    ],
)
def test_bad_urls_are_refused_without_showing_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_redis_url(url)
    assert "s3cret" not in str(info.value)


def test_sentinel_url_needs_a_master_name() -> None:
    with pytest.raises(ConfigError, match="master_name"):
        create_redis("redis+sentinel://127.0.0.1:26379", Config())


def test_cluster_detection() -> None:
    config = Config()
    assert is_cluster("redis://h1:1,h2:2", config)
    assert not is_cluster("redis://h1:1", config)
    assert not is_cluster("redis+socket:///tmp/r.sock", config)
    config.redis.cluster_enabled = True
    assert is_cluster("redis://h1:1", config)
    config.redis.master_name = "mymaster"
    assert not is_cluster("redis://h1:1,h2:2", config)


# -- clients from URLs and config ----------------------------------------------------------------


async def test_pool_sizes_and_timeouts_come_from_the_config() -> None:
    config = Config()
    config.redis.read_timeout = 7
    config.redis.connect_timeout = 3
    config.redis.client_name = "machinery-test"
    client = create_redis("redis://127.0.0.1:6379/1", config, max_connections=12)
    pool = client.connection_pool
    assert isinstance(pool, BlockingConnectionPool)  # redis.wait (Go's Wait) is on by default
    assert pool.max_connections == 12
    assert pool.timeout == 3
    assert pool.connection_kwargs["socket_timeout"] == 7
    assert pool.connection_kwargs["socket_connect_timeout"] == 3
    assert pool.connection_kwargs["client_name"] == "machinery-test"
    assert pool.connection_kwargs["db"] == 1
    await client.aclose()
    config.redis.wait = False
    config.redis.max_active = 5
    client = create_redis("redis://127.0.0.1:6379/1", config)
    assert type(client.connection_pool) is ConnectionPool
    assert client.connection_pool.max_connections == 5
    await client.aclose()


async def test_client_kinds() -> None:
    config = Config()
    socket_client = create_redis("redis+socket://pw@/tmp/x.sock:/4", config)
    kwargs = socket_client.connection_pool.connection_kwargs
    assert issubclass(socket_client.connection_pool.connection_class, UnixDomainSocketConnection)
    assert (kwargs["path"], kwargs["db"], kwargs["password"]) == ("/tmp/x.sock", 4, "pw")
    await socket_client.aclose()
    tls_client = create_redis("rediss://127.0.0.1:6390", config)
    assert issubclass(tls_client.connection_pool.connection_class, SSLConnection)
    await tls_client.aclose()
    cluster = create_redis("redis://127.0.0.1:7000,127.0.0.1:7001", config)
    assert isinstance(cluster, RedisCluster)
    await cluster.aclose()
    with pytest.raises(ConfigError, match="only database 0"):
        create_redis("redis://127.0.0.1:7000,127.0.0.1:7001/3", config)


def test_commands_are_packed_exactly_as_redis_py_packs_them() -> None:
    from redis.asyncio.connection import Connection
    from redis.exceptions import DataError

    client = create_redis("redis://127.0.0.1:6379/1", Config())
    fast = client.connection_pool.connection_class()
    assert type(fast).__name__ == "HiredisConnection"
    plain = Connection()
    for args in [
        ("SET", "k", "v", "EX", 3600),
        ("ZADD", "delayed_tasks", 1736937000123456789, b'{"UUID":"x"}'),
        ("BLMOVE", "q", "{q}:processing:w", "LEFT", "RIGHT", 0.999),
        ("CLIENT SETNAME", "name"),
        (b"CONFIG GET", "maxmemory"),
        ("EVALSHA", "ab" * 20, 1, "é", -3, 1e20, memoryview(b"view")),
    ]:
        assert b"".join(fast.pack_command(*args)) == b"".join(plain.pack_command(*args))
    with pytest.raises(DataError):
        fast.pack_command("SET", "k", None)


# -- real servers started by the test ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is needed to start a test server")
        pytest.skip(f"{name} is not installed")
    return path


class _Servers:
    """redis-server processes owned by this test module."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str, ready: Any) -> None:
        workdir = self.base / name
        workdir.mkdir(parents=True, exist_ok=True)
        with (workdir / "server.log").open("wb") as log:
            proc = subprocess.Popen(
                [_binary("redis-server"), *args, "--dir", str(workdir)], stdout=log, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        deadline = time.monotonic() + 20
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {(workdir / 'server.log').read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("redis-servers")
    found = _Servers(base)
    common = ["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"]
    info: dict[str, Any] = {}
    try:
        sock = base / "redis.sock"
        found.start(
            "socket",
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--requirepass",
            "s3cret",
            *common,
            ready=sock.exists,
        )
        info["socket"] = sock

        certs = base / "certs"
        certs.mkdir()
        subprocess.run(
            [
                _binary("openssl"),
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-keyout",
                str(certs / "key.pem"),
                "-out",
                str(certs / "cert.pem"),
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )
        tls_port = _free_port()
        found.start(
            "tls",
            "--port",
            "0",
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            str(certs / "cert.pem"),
            "--tls-key-file",
            str(certs / "key.pem"),
            "--tls-ca-cert-file",
            str(certs / "cert.pem"),
            "--tls-auth-clients",
            "yes",
            *common,
            ready=lambda: _port_open(tls_port),
        )
        info["tls_port"] = tls_port
        info["certs"] = certs

        master = _free_port()
        found.start(
            "master",
            "--port",
            str(master),
            "--requirepass",
            "mpass",
            "--masterauth",
            "mpass",
            *common,
            ready=lambda: _port_open(master),
        )
        sentinel = _free_port()
        conf = base / "sentinel.conf"
        conf.write_text(
            f"port {sentinel}\nbind 127.0.0.1\nrequirepass spass\n"
            f"sentinel monitor mymaster 127.0.0.1 {master} 1\n"
            "sentinel auth-pass mymaster mpass\n"
        )
        found.start("sentinel", str(conf), "--sentinel", ready=lambda: _port_open(sentinel))
        info["sentinel_port"] = sentinel
        yield info
    finally:
        found.stop()


async def _round_trip(client: Any) -> None:
    try:
        await client.set("machinery_url_test", "ok", ex=10)
        assert await client.get("machinery_url_test") == b"ok"
        await client.delete("machinery_url_test")
    finally:
        await client.aclose()


async def test_unix_socket_with_a_password(servers: dict[str, Any]) -> None:
    url = f"redis+socket://s3cret@{servers['socket']}:/2"
    await _round_trip(create_redis(url, Config()))
    with pytest.raises(ConnectionError, match="invalid username-password"):
        await _round_trip(create_redis(f"redis+socket://wrong@{servers['socket']}", Config()))


async def test_tls_with_ca_and_client_certificate(servers: dict[str, Any]) -> None:
    certs: Path = servers["certs"]
    config = Config()
    config.tls.ca_file = str(certs / "cert.pem")
    config.tls.cert_file = str(certs / "cert.pem")
    config.tls.key_file = str(certs / "key.pem")
    url = f"rediss://127.0.0.1:{servers['tls_port']}/0"
    await _round_trip(create_redis(url, config))
    query = (
        f"?ssl_ca_certs={certs / 'cert.pem'}&ssl_certfile={certs / 'cert.pem'}"
        f"&ssl_keyfile={certs / 'key.pem'}"
    )
    await _round_trip(create_redis(url + query, Config()))
    with pytest.raises(ConnectionError):  # no CA: the self-signed server is not trusted
        await _round_trip(create_redis(url, Config()))


async def test_sentinel_with_passwords(servers: dict[str, Any]) -> None:
    port = servers["sentinel_port"]
    config = Config()
    config.redis.master_name = "mymaster"
    config.redis.sentinel_password = "spass"
    await _round_trip(create_redis(f"redis://mpass@127.0.0.1:{port}", config))
    url = f"redis+sentinel://mpass@127.0.0.1:{port}/0?master_name=mymaster"
    config = Config()
    config.redis.sentinel_password = "spass"
    await _round_trip(create_redis(url, config))


async def test_a_worker_over_a_unix_socket(servers: dict[str, Any], unique: str) -> None:
    url = f"redis+socket://s3cret@{servers['socket']}:/0"
    server = Server(Config(broker=url, result_backend=url, default_queue=f"{unique}_q"))

    @server.task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    try:
        async with server.new_worker("socket", concurrency=2):
            assert await (await add.delay(2, 3)).get(timeout=30) == 5
    finally:
        await server.close()


@pytest.mark.parametrize("url", [STANDALONE, CLUSTER], ids=["standalone", "cluster"])
async def test_the_shared_servers(url: str) -> None:
    await _round_trip(create_redis(need(url), Config()))


@pytest.mark.parametrize("close", [False, True], ids=["left-open", "closed"])
async def test_a_script_exits_quietly_whether_or_not_it_closes_its_server(
    redis_url: str, raw: Any, unique: str, close: bool
) -> None:
    env = {"BROKER": redis_url, "RESULT_BACKEND": redis_url, "DEFAULT_QUEUE": f"{unique}_q"}
    code, out, err = await run_left_open(env, close=close)
    assert code == 0, err
    assert out.strip().startswith("task_")
    await raw.delete(out.strip())  # its PENDING state (the queue is deleted with the test's keys)
    assert err == ""
