"""Packaging and the public API: what `pip install machinery-aio` gives and what users import."""

from __future__ import annotations

import tomllib
from pathlib import Path

import machinery_aio

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_core_depends_only_on_pydantic_and_croniter() -> None:
    project = PYPROJECT["project"]
    names = sorted(dep.split(">")[0].split("<")[0].split("=")[0].strip() for dep in project["dependencies"])
    assert names == ["croniter", "pydantic"]
    assert any(dep.startswith("pydantic>=2") for dep in project["dependencies"])
    assert project["requires-python"] == ">=3.11"
    assert PYPROJECT["build-system"]["build-backend"] == "hatchling.build"


def test_every_driver_is_an_extra_and_every_extra_a_driver_or_tool() -> None:
    from machinery_aio.drivers import TECHNOLOGIES

    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra, package in [
        ("redis", "redis"),
        ("amqp", "aio-pika"),
        ("yaml", "PyYAML"),
        ("uvloop", "uvloop"),
        ("gcp", "google-cloud-pubsub"),
        ("memcache", "aiomcache"),
        ("mongo", "pymongo"),
        ("aws", "aiobotocore"),
        ("otel", "opentelemetry-sdk"),
        ("prometheus", "prometheus-client"),
        ("dashboard", "starlette"),
        ("reload", "watchfiles"),
    ]:
        assert any(dep.startswith(package) for dep in extras[extra]), extra
    drivers = {tech.extra for tech in TECHNOLOGIES if tech.extra}
    assert drivers == {"redis", "amqp", "aws", "gcp", "memcache", "mongo"}
    tools = {"yaml", "uvloop", "otel", "prometheus", "dashboard", "reload"}
    for extra in drivers | tools:
        assert extra in extras["all"][0]
    # no extra promises a driver that does not exist (issue 11: they come with their driver)
    assert set(extras) == drivers | tools | {"all", "test", "docs", "dev"}


def test_redis_is_bounded_to_the_major_version_the_batcher_is_tested_with() -> None:
    [redis] = PYPROJECT["project"]["optional-dependencies"]["redis"]
    assert ">=8" in redis
    assert "<9" in redis


def test_license_file_is_mit() -> None:
    assert PYPROJECT["project"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_console_script_and_typed_marker() -> None:
    assert PYPROJECT["project"]["scripts"] == {"machinery-aio": "machinery_aio.cli:main"}
    assert (Path(machinery_aio.__file__).parent / "py.typed").is_file()


def test_public_api_names() -> None:
    for name in [
        "Server",
        "Config",
        "Signature",
        "Arg",
        "Group",
        "Chain",
        "Chord",
        "RetryTaskLater",
        "TaskFailedError",
        "TaskState",
        "State",
        "TaskResult",
        "GroupMeta",
        "AsyncResult",
        "ChainAsyncResult",
        "ChordAsyncResult",
        "TaskContext",
        "Worker",
        "ConfigError",
        "MissingExtraError",
        "InvalidMessageError",
        "TaskTimeLimitExceeded",
        "Task",
        "Middleware",
        "TaskOutcome",
        "ConnectionFailedError",
    ]:
        assert name in machinery_aio.__all__, name
        assert getattr(machinery_aio, name) is not None
    assert machinery_aio.__version__ == PYPROJECT["project"]["version"]
