"""Config: from code, from environment variables, or from a Go Machinery YAML file.

Field names are Go Machinery's in snake_case, environment variables are the
names Go's envconfig reads (``BROKER``, ``DEFAULT_QUEUE``, ``REDIS_MAX_IDLE``
...), and YAML keys are those of Go's ``config.yml``, so a Go service's
configuration loads unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)

__all__ = [
    "AMQPConfig",
    "Config",
    "ConfigError",
    "DynamoDBConfig",
    "GCPPubSubConfig",
    "MongoDBConfig",
    "RedisConfig",
    "SQSConfig",
    "TLSConfig",
]

logger = logging.getLogger("machinery_aio.config")

RELOAD_INTERVAL = 10.0
"""Seconds between re-reads of a YAML file loaded with ``keep_reloading`` (as Go)."""


class ConfigError(ValueError):
    """A configuration value, URL or file is wrong; the message says which."""


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="ignore", validate_assignment=True, validate_by_name=True, validate_by_alias=True
    )


class TLSConfig(_Section):
    """TLS for ``rediss://`` and ``amqps://`` (Go's ``TLSConfig``)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    insecure_skip_verify: bool = False


class AMQPConfig(_Section):
    """RabbitMQ settings (Go's ``AMQPConfig``)."""

    exchange: str = "machinery_exchange"
    exchange_type: str = "direct"
    queue_declare_args: dict[str, Any] = Field(default_factory=dict)
    queue_binding_args: dict[str, Any] = Field(default_factory=dict)
    binding_key: str = ""
    """Empty means "the queue's own name"; Go's default ``machinery_task`` makes a
    phantom queue next to ``machinery_tasks`` (Go issues #262, #378)."""
    prefetch_count: int = Field(default=3, ge=0)
    auto_delete: bool = False
    delayed_queue: str = ""


class RedisConfig(_Section):
    """Redis settings (Go's ``RedisConfig``)."""

    max_idle: int = Field(default=3, ge=0)
    max_active: int = Field(default=0, ge=0)
    """Connection pool size; 0 picks a size from the worker's concurrency."""
    idle_timeout: int = Field(
        default=240, ge=0, validation_alias=AliasChoices("idle_timeout", "max_idle_timeout")
    )
    wait: bool = True
    read_timeout: int = Field(default=15, ge=0)
    write_timeout: int = Field(default=15, ge=0)
    connect_timeout: int = Field(default=15, ge=0)
    normal_tasks_poll_period: int = Field(default=1000, ge=0)
    """Milliseconds a consumer blocks on an empty queue before checking for shutdown."""
    delayed_tasks_poll_period: int = Field(default=500, ge=0)
    """Upper bound, in ms, on how long the delayed-task mover sleeps between checks."""
    delayed_tasks_key: str = "delayed_tasks"
    client_name: str = ""
    master_name: str = ""
    cluster_enabled: bool = False
    sentinel_password: str = ""
    consumer_timeout: float = Field(default=30.0, gt=0)
    """Seconds without a heartbeat after which a Python worker is presumed dead and the
    messages it claimed go back to the queue (not in Go)."""


class GCPPubSubConfig(_Section):
    """Google Cloud Pub/Sub settings (Go's ``GCPPubSubConfig``, plus what Go leaves to its client)."""

    max_extension: float = Field(default=3600.0, ge=0)
    """Seconds a running task's lease is extended at most (Go's ``MaxExtension``); after that
    Pub/Sub may deliver the message again. 0 means no limit."""
    ack_deadline: int = Field(default=60, ge=10, le=600)
    """The ack deadline of subscriptions created here (seconds): how soon a killed worker's
    messages are delivered again."""
    ordering: bool = False
    """Publish ``BrokerMessageGroupId`` as the ordering key; subscriptions created here
    deliver messages with one key in order."""
    dead_letter_max_attempts: int = Field(default=0, ge=0, le=100)
    """Give subscriptions created here a dead-letter policy after this many delivery attempts
    (5 to 100; 0 means none)."""

    @field_validator("dead_letter_max_attempts")
    @classmethod
    def _attempts(cls, value: int) -> int:
        if 0 < value < 5:
            raise ValueError("Pub/Sub accepts 5 to 100 delivery attempts (0 means no dead-letter policy)")
        return value


class MongoDBConfig(_Section):
    """MongoDB result backend settings (Go's ``MongoDBConfig``, minus the client object)."""

    database: str = ""
    """The database of ``tasks`` and ``group_metas``. Empty: the one the URL names, else
    Go's ``machinery``. Set, it wins over the URL, as Go's ``MongoDB.Database`` does."""


class SQSConfig(_Section):
    """Amazon SQS settings (Go's ``SQSConfig``; YAML keys in Go's spelling also work)."""

    wait_time_seconds: int = Field(
        default=20,
        ge=0,
        le=20,
        validation_alias=AliasChoices("wait_time_seconds", "receive_wait_time_seconds"),
    )
    """Long-poll seconds of each receive (``WaitTimeSeconds``)."""
    visibility_timeout: int = Field(
        default=30,
        ge=1,
        le=43200,
        validation_alias=AliasChoices("visibility_timeout", "receive_visibility_timeout"),
    )
    """Seconds a received message stays hidden; a killed worker's messages return after it."""
    visibility_heartbeat: bool = Field(
        default=True, validation_alias=AliasChoices("visibility_heartbeat", "visibility_hearth_beat")
    )
    """Extend the visibility of running tasks' messages every ``visibility_timeout / 2`` s
    (Go's default is off, so a task running longer than the timeout ran twice)."""
    create_queues: bool = True
    """Create a missing queue (and its dead-letter queue) on first use; Go requires them to exist."""


class DynamoDBConfig(_Section):
    """Amazon DynamoDB settings (Go's ``DynamoDBConfig``)."""

    task_states_table: str = "task_states"
    group_metas_table: str = "group_metas"
    create_tables: bool = True
    """Create missing tables (and turn on their TTL) on first use; Go requires them to exist."""


class Config(BaseModel):
    """Everything a server, worker and scheduler need to know.

    ``Config()`` uses the embedded ``memory://`` broker and backend, which need
    no server. URLs choose the drivers: ``redis://`` (and ``rediss://``,
    ``redis+socket://``, Sentinel, Cluster), ``amqp://`` / ``amqps://``,
    ``https://sqs.<region>.amazonaws.com/<account>/``; for results also ``null://`` and
    ``https://dynamodb.<region>.amazonaws.com``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    broker: str = "memory://"
    lock: str = ""
    """Lock URL for periodic tasks; empty means the result backend's URL if its driver has a
    lock (Redis), else the broker's if its driver has one, else in-memory."""
    multiple_broker_separator: str = ""
    default_queue: str = "machinery_tasks"
    result_backend: str = "memory://"
    results_expire_in: int = Field(default=3600, ge=0)
    """Seconds a result lives; 0 means Go's default of 3600."""
    no_unix_signals: bool = False
    go_compatible: bool = True
    """Take Go Machinery's own locks (``TriggerChordMutex``, periodic lock keys) so
    Go workers sharing the broker stay exclusive with us."""
    app_name: str = ""
    """Used in periodic lock keys as Go uses ``basename(argv[0])``; empty means the same."""
    amqp: AMQPConfig = Field(default_factory=AMQPConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    gcp_pubsub: GCPPubSubConfig = Field(default_factory=GCPPubSubConfig)
    tls: TLSConfig = Field(default_factory=TLSConfig)
    mongodb: MongoDBConfig = Field(default_factory=MongoDBConfig)
    sqs: SQSConfig = Field(default_factory=SQSConfig)
    dynamodb: DynamoDBConfig = Field(default_factory=DynamoDBConfig)

    _source: Path | None = PrivateAttr(default=None)

    def broker_urls(self) -> list[str]:
        """The broker URLs, split by ``multiple_broker_separator`` for failover."""
        if self.multiple_broker_separator:
            parts = self.broker.split(self.multiple_broker_separator)
            return [p.strip() for p in parts if p.strip()]
        return [self.broker]

    # -- environment -------------------------------------------------------------

    @classmethod
    def from_env(cls, prefix: str = "", environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read Go Machinery's environment variables (optionally ``prefix``-ed).

        Unset variables keep their defaults. ``overrides`` win over the environment.
        """
        env = os.environ if environ is None else environ
        data: dict[str, Any] = {}
        for name, (path, parse) in _ENV_VARS.items():
            raw = env.get(prefix + name)
            if raw is None:
                continue
            try:
                value = parse(raw)
            except ValueError as exc:
                raise ConfigError(f"environment variable {prefix + name}: {exc}") from None
            section, _, key = path.rpartition(".")
            (data.setdefault(section, {}) if section else data)[key] = value
        for key, value in overrides.items():
            data[key] = value
        return cls._build(data, f"environment variables (prefix {prefix!r})")

    # -- YAML ----------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], keep_reloading: bool = False) -> Config:
        """Load a Go Machinery ``config.yml``.

        With ``keep_reloading``, a running worker re-reads the file every 10 s
        and applies the new values in place, as Go does.
        """
        source = Path(path)
        config = cls._build(cls._known_keys(_read_yaml(source), source), str(source))
        if keep_reloading:
            config._source = source
        return config

    def reload(self) -> bool:
        """Re-read the YAML file this config came from; True if anything changed."""
        if self._source is None:
            return False
        data = type(self)._known_keys(_read_yaml(self._source), self._source)
        fresh = type(self)._build(data, str(self._source))
        changed = False
        for name in type(self).model_fields:
            new = getattr(fresh, name)
            if getattr(self, name) != new:
                setattr(self, name, new)
                changed = True
        return changed

    async def keep_reloading(self, interval: float = RELOAD_INTERVAL) -> None:
        """Re-read the YAML file every ``interval`` s until cancelled (errors are logged)."""
        while self._source is not None:
            await asyncio.sleep(interval)
            try:
                if self.reload():
                    logger.info("configuration reloaded from %s", self._source)
            except (ConfigError, OSError) as exc:
                logger.error("configuration reload failed, keeping the old values: %s", exc)

    @property
    def reloads(self) -> bool:
        return self._source is not None

    @classmethod
    def _known_keys(cls, data: dict[str, Any], source: Path) -> dict[str, Any]:
        """Drop top-level keys we do not know, with a warning (Go ignores them too)."""
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            logger.warning("%s: ignoring unknown settings %s", source, ", ".join(unknown))
        return {k: v for k, v in data.items() if k in cls.model_fields}

    @classmethod
    def _build(cls, data: dict[str, Any], where: str) -> Config:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                for err in exc.errors(include_url=False)
            )
            raise ConfigError(f"invalid configuration in {where}: {problems}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        raise ConfigError("loading YAML needs PyYAML: pip install 'machinery-aio[yaml]'") from None
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, not {type(doc).__name__}")
    return doc


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "t", "true", "yes", "on"):
        return True
    if value in ("0", "f", "false", "no", "off", ""):
        return False
    raise ValueError(f"{raw!r} is not a boolean")


def _parse_int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(f"{raw!r} is not an integer") from None


def _parse_scalar(raw: str) -> Any:
    """A map value from ``k:v,k:v``: JSON if it parses (10 -> int), else the string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _parse_map(raw: str) -> dict[str, Any]:
    """Go envconfig's ``k:v,k:v`` maps. Unlike Go, values keep their type (``x-max-priority:10``)."""
    result: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        key, sep, value = item.partition(":")
        if not sep:
            raise ValueError(f"{item!r} is not key:value")
        result[key.strip()] = _parse_scalar(value.strip())
    return result


def _str(raw: str) -> str:
    return raw


_ENV_VARS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "BROKER": ("broker", _str),
    "LOCK": ("lock", _str),
    "MULTIPLE_BROKER_SEPARATOR": ("multiple_broker_separator", _str),
    "MULTIPLE_BROKEN_SEPARATOR": ("multiple_broker_separator", _str),  # Go's spelling
    "DEFAULT_QUEUE": ("default_queue", _str),
    "RESULT_BACKEND": ("result_backend", _str),
    "RESULTS_EXPIRE_IN": ("results_expire_in", _parse_int),
    "NO_UNIX_SIGNALS": ("no_unix_signals", _parse_bool),
    "GO_COMPATIBLE": ("go_compatible", _parse_bool),
    "APP_NAME": ("app_name", _str),
    "AMQP_EXCHANGE": ("amqp.exchange", _str),
    "AMQP_EXCHANGE_TYPE": ("amqp.exchange_type", _str),
    "AMQP_QUEUE_DECLARE_ARGS": ("amqp.queue_declare_args", _parse_map),
    "AMQP_QUEUE_BINDING_ARGS": ("amqp.queue_binding_args", _parse_map),
    "AMQP_BINDING_KEY": ("amqp.binding_key", _str),
    "AMQP_PREFETCH_COUNT": ("amqp.prefetch_count", _parse_int),
    "AMQP_AUTO_DELETE": ("amqp.auto_delete", _parse_bool),
    "AMQP_DELAYED_QUEUE": ("amqp.delayed_queue", _str),
    "REDIS_MAX_IDLE": ("redis.max_idle", _parse_int),
    "REDIS_MAX_ACTIVE": ("redis.max_active", _parse_int),
    "REDIS_IDLE_TIMEOUT": ("redis.idle_timeout", _parse_int),
    "REDIS_WAIT": ("redis.wait", _parse_bool),
    "REDIS_READ_TIMEOUT": ("redis.read_timeout", _parse_int),
    "REDIS_WRITE_TIMEOUT": ("redis.write_timeout", _parse_int),
    "REDIS_CONNECT_TIMEOUT": ("redis.connect_timeout", _parse_int),
    "REDIS_NORMAL_TASKS_POLL_PERIOD": ("redis.normal_tasks_poll_period", _parse_int),
    "REDIS_DELAYED_TASKS_POLL_PERIOD": ("redis.delayed_tasks_poll_period", _parse_int),
    "REDIS_DELAYED_TASKS_KEY": ("redis.delayed_tasks_key", _str),
    "REDIS_CLIENT_NAME": ("redis.client_name", _str),
    "REDIS_MASTER_NAME": ("redis.master_name", _str),
    "REDIS_CLUSTER_ENABLED": ("redis.cluster_enabled", _parse_bool),
    "REDIS_SENTINEL_PASSWORD": ("redis.sentinel_password", _str),
    "REDIS_CONSUMER_TIMEOUT": ("redis.consumer_timeout", float),
    "GCP_PUBSUB_MAX_EXTENSION": ("gcp_pubsub.max_extension", float),
    "GCP_PUBSUB_ACK_DEADLINE": ("gcp_pubsub.ack_deadline", _parse_int),
    "GCP_PUBSUB_ORDERING": ("gcp_pubsub.ordering", _parse_bool),
    "GCP_PUBSUB_DEAD_LETTER_MAX_ATTEMPTS": ("gcp_pubsub.dead_letter_max_attempts", _parse_int),
    "SQS_WAIT_TIME_SECONDS": ("sqs.wait_time_seconds", _parse_int),
    "SQS_VISIBILITY_TIMEOUT": ("sqs.visibility_timeout", _parse_int),
    "SQS_VISIBILITY_HEARTBEAT": ("sqs.visibility_heartbeat", _parse_bool),
    "SQS_CREATE_QUEUES": ("sqs.create_queues", _parse_bool),
    "TASK_STATES_TABLE": ("dynamodb.task_states_table", _str),
    "GROUP_METAS_TABLE": ("dynamodb.group_metas_table", _str),
    "DYNAMODB_CREATE_TABLES": ("dynamodb.create_tables", _parse_bool),
    "TLS_CA_FILE": ("tls.ca_file", _str),
    "TLS_CERT_FILE": ("tls.cert_file", _str),
    "TLS_KEY_FILE": ("tls.key_file", _str),
    "TLS_INSECURE_SKIP_VERIFY": ("tls.insecure_skip_verify", _parse_bool),
    "MONGODB_DATABASE": ("mongodb.database", _str),
}

# envconfig also reads a nested field under its struct's name first (AMQP_AMQP_EXCHANGE,
# REDIS_REDIS_MAX_IDLE); listed last, so that form wins, as in Go.
_ENV_VARS.update(
    {
        f"{path.partition('.')[0].upper()}_{name}": (path, parse)
        for name, (path, parse) in list(_ENV_VARS.items())
        if path.partition(".")[0] in ("amqp", "redis", "sqs", "dynamodb")
    }
)
