"""Case 6: secrets and TLS. A worker and a producer use ``rediss://`` with a password against a
private redis-server with TLS enabled (a CA and server certificate generated here); tasks run,
and the password appears in no log line and no exception message. (Every worker the fault
suite starts has its log grepped for the password: see the ``workers`` fixture.)"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from machinery_aio import Arg, Server, Signature
from tests.faults.conftest import PASSWORD, PrivateRedis, Workers, record_figures, redis_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TASKS = 200


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = directory / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for command in (
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            ca_key,
            "-out",
            ca,
            "-days",
            "1",
            "-subj",
            "/CN=machinery-aio test CA",
        ],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        [
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "1",
            "-extfile",
            ext,
        ],
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    return ca, cert, key


@pytest.fixture
def tls_redis(tmp_path: Path, private_redis: Callable[..., PrivateRedis]) -> tuple[str, Path]:
    """A rediss:// URL (with the password) for a TLS-only private redis-server, and its CA."""
    ca, cert, key = make_certificates(tmp_path)
    redis = private_redis(
        "--requirepass",
        PASSWORD,
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(ca),
        "--tls-auth-clients",
        "no",
        "--tls-port",
        "{port}",
        "--port",
        "0",
    )
    return f"rediss://:{PASSWORD}@127.0.0.1:{redis.port}/0?ssl_ca_certs={ca}", ca


async def test_rediss_with_a_password_works_and_never_leaks_it(
    tls_redis: tuple[str, Path],
    unique: str,
    workers: Workers,
    caplog: pytest.LogCaptureFixture,
    raw: object,
) -> None:
    caplog.set_level(logging.DEBUG)
    url, _ = tls_redis
    config = redis_config(unique, url)
    server = Server(config)
    key = f"{unique}:runs"
    try:
        workers.start(config, "w", 10)
        sigs = [
            Signature(
                uuid=f"task_{unique}_{i}", name="count", args=[Arg.of(key), Arg.of(str(i)), Arg.of(0.0)]
            )
            for i in range(TASKS)
        ]
        results = await server.send_tasks(sigs)
        values = [await r.get(timeout=60) for r in results]
        assert values == [str(i) for i in range(TASKS)]

        wrong = redis_config(unique, url.replace(PASSWORD, f"{PASSWORD}-wrong"))
        bad_server = Server(wrong)
        with pytest.raises(Exception) as caught:
            await bad_server.send_task(sigs[0])
        await bad_server.close()
        assert PASSWORD not in f"{caught.value!r} {caught.value}"
        plain = redis_config(unique, url.replace("rediss://", "redis://"))
        plain_server = Server(plain)
        with pytest.raises(Exception) as caught_plain:
            await plain_server.send_task(sigs[0])
        await plain_server.close()
        assert PASSWORD not in f"{caught_plain.value!r} {caught_plain.value}"
    finally:
        await server.close()
    assert PASSWORD not in caplog.text
    assert workers.leaked_password() == []
    record_figures(
        "6. rediss:// + password, private TLS redis",
        sent=TASKS,
        completed=len(values),
        lost=TASKS - len(values),
        duplicated=0,
        note="password in no log/exception",
    )
