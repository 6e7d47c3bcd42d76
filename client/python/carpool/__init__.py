"""carpool's Python client: submit tasks, run them, map over iterables, futures, asyncio.

    from carpool import Client, Executor

    with Client("http://127.0.0.1:50051") as c:
        print(c.run("echo", '{"hello": "world"}').output)
        for r in c.map("spin", ["100"] * 10):
            print(r.seq, r.state, r.output)

    with Executor("http://127.0.0.1:50051") as ex:
        print(ex.submit("echo", "hi").result())

`carpool.aio` has the same on asyncio.
"""

from ._wire import Result
from .client import Client, Relearned, Stats, Worker
from .connection import Connection
from .errors import (
    AlreadyExists,
    CarpoolError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TaskFailed,
    Unauthenticated,
    Unavailable,
)
from .executor import Executor, TaskFuture

__all__ = [
    "AlreadyExists",
    "CarpoolError",
    "Client",
    "Connection",
    "DeadlineExceeded",
    "Executor",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "Relearned",
    "ResourceExhausted",
    "Result",
    "Stats",
    "TaskFailed",
    "TaskFuture",
    "Unauthenticated",
    "Unavailable",
    "Worker",
]
