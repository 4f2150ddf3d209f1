"""machinery-aio: an asyncio-native distributed task queue that speaks Go Machinery's wire format."""

from .config import Config, ConfigError
from .context import TaskContext
from .drivers import MissingExtraError
from .errors import (
    ConnectionFailedError,
    MachineryError,
    TaskFailedError,
    TaskNotRegisteredError,
    TaskRevokedError,
    TaskTimeLimitExceeded,
)
from .middleware import Middleware, TaskOutcome
from .result import AsyncResult, ChainAsyncResult, ChordAsyncResult
from .retry import RetryTaskLater
from .server import Server
from .signature import Arg, InvalidMessageError, Signature
from .state import GroupMeta, Progress, State, TaskResult, TaskState
from .tasks import Task
from .worker import Worker
from .workflow import Chain, Chord, Group

__version__ = "0.1.0"

__all__ = [
    "Arg",
    "AsyncResult",
    "Chain",
    "ChainAsyncResult",
    "Chord",
    "ChordAsyncResult",
    "Config",
    "ConfigError",
    "ConnectionFailedError",
    "Group",
    "GroupMeta",
    "InvalidMessageError",
    "MachineryError",
    "Middleware",
    "MissingExtraError",
    "Progress",
    "RetryTaskLater",
    "Server",
    "Signature",
    "State",
    "Task",
    "TaskContext",
    "TaskFailedError",
    "TaskNotRegisteredError",
    "TaskOutcome",
    "TaskResult",
    "TaskRevokedError",
    "TaskState",
    "TaskTimeLimitExceeded",
    "Worker",
    "__version__",
]
