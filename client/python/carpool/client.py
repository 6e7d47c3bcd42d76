"""The synchronous client: submit, run, get, cancel, map, stats, workers, relearn."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, List, Optional, TypeVar

import grpc

from ._wire import answers, Payload, Result, pb, payload, ready_batches, rpc, state_name
from .connection import Connection
from .errors import CarpoolError, from_rpc

T = TypeVar("T")

# How long a probe of one coordinator of a list may take before the next is tried.
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Stats:
    """Totals over all functions."""

    pending: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    workers_live: int
    workers_started: int
    billed_gb_ms: float
    cost_usd: float


@dataclass(frozen=True)
class Relearned:
    """What Relearn forgot of a function: at how many memory sizes its learned level, and
    at how many its cost per task."""

    levels: int
    costs: int


@dataclass(frozen=True)
class Worker:
    """One worker as ListWorkers reports it."""

    worker_id: str
    function: str
    state: str
    running_tasks: int
    slots: int
    tasks_done: int


class Client:
    """A connection to a coordinator.

    `target` is `host:port`, `http://host:port` or `https://host:port` (default: the
    CARPOOL_COORDINATOR environment variable, else http://127.0.0.1:50051), or several,
    comma-separated (an active coordinator and its standbys): the first that answers as
    active is used; a standby answers UNAVAILABLE, and if none is active `Unavailable` is
    raised. TLS, token and timeout options are those of `Connection.resolve`.
    """

    def __init__(
        self,
        target: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
        ca_file: Optional[str] = None,
        server_name: Optional[str] = None,
    ):
        self._conn = Connection.resolve(
            target, token=token, token_file=token_file, ca_file=ca_file, server_name=server_name, timeout=timeout
        )
        self._channel: Optional[grpc.Channel] = None
        self.connect()

    def connect(self, probe: bool = False) -> None:
        """(Re)connects, on a fresh channel, to the first coordinator of the list that
        answers as active (with one coordinator, or without `probe`, it is not asked)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        endpoints = self._conn.endpoints
        last: Optional[grpc.RpcError] = None
        for endpoint in endpoints:
            channel = self._conn.channel(endpoint)
            cluster = rpc.ClusterStub(channel)
            if probe or len(endpoints) > 1:
                try:
                    cluster.Stats(pb.StatsRequest(), timeout=self._conn.timeout or PROBE_TIMEOUT_S, metadata=self._conn.metadata)
                except grpc.RpcError as e:
                    channel.close()
                    last = e
                    continue
            self._channel = channel
            self._tasks = rpc.TasksStub(channel)
            self._cluster = cluster
            return
        assert last is not None
        raise from_rpc(last) from None

    @property
    def connection(self) -> Connection:
        return self._conn

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def _call(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, timeout=self._conn.timeout, metadata=self._conn.metadata)
        except grpc.RpcError as e:
            raise from_rpc(e) from None

    def submit(
        self, function: str, payload_: Payload = "", *, key: str = "", timeout_s: float = 0.0, deadline_s: float = 0.0
    ) -> int:
        """Queues one task; returns its id at once. `key`: an idempotency key (submitting it
        again returns the same task); `timeout_s`: per attempt; `deadline_s`: refused at once
        (FailedPrecondition) if the coordinator's measurements say it cannot finish in time."""
        req = pb.SubmitRequest(
            function=function,
            input=payload(payload_),
            idempotency_key=key,
            timeout_ms=int(timeout_s * 1000),
            deadline_ms=int(deadline_s * 1000),
        )
        return self._call(self._tasks.Submit, req).task_id

    def run(self, function: str, payload_: Payload = "", *, key: str = "", timeout_s: float = 0.0) -> Result:
        """Runs one task and waits for its result."""
        req = pb.SubmitRequest(function=function, input=payload(payload_), idempotency_key=key, timeout_ms=int(timeout_s * 1000))
        return Result(self._call(self._tasks.Run, req))

    def get(self, task_id: int) -> Optional[Result]:
        """The task's result if it has finished, else None. Raises NotFound for an unknown id."""
        info = self._call(self._tasks.Get, pb.GetRequest(task_id=task_id))
        return Result(info.result) if info.HasField("result") else None

    def state(self, task_id: int) -> str:
        """The task's current state ("PENDING", "RUNNING", ...)."""
        return state_name(self._call(self._tasks.Get, pb.GetRequest(task_id=task_id)).state)

    def cancel(self, task_id: int = 0, *, key: str = "") -> str:
        """Cancels a task, by id or by the idempotency key it was submitted with; returns its
        state afterwards ("CANCELLED", or the final state it had already reached)."""
        req = pb.CancelRequest(task_id=task_id, idempotency_key=key)
        return state_name(self._call(self._tasks.Cancel, req).state)

    def map(
        self,
        function: str,
        payloads: Iterable[Payload],
        budget_usd: float = 0.0,
        deadline_s: float = 0.0,
        *,
        timeout_s: float = 0.0,
        keys: Optional[Iterable[str]] = None,
        timeouts_s: Optional[Iterable[float]] = None,
    ) -> Iterator[Result]:
        """Runs every payload as a task over one streaming call; yields results as they
        finish, each with `seq`, its payload's position. Submissions go in batches of what is
        ready (see `ready_batches`), results come back the same way.

        A rejected submission raises the CarpoolError subclass of its code (InvalidArgument,
        ResourceExhausted...) when its answer arrives. With `budget_usd`, once the results'
        estimated bill reaches it the pending tasks come back CANCELLED and the rest are
        rejected with ResourceExhausted. With `deadline_s`, a payload that cannot finish
        within that many seconds of the call's start, by what the coordinator has measured,
        is rejected with FailedPrecondition. `keys`: an idempotency key per payload.
        `timeouts_s`: a timeout per payload, in seconds (0, or past its end: `timeout_s`); a
        task known to end within its own timeout is admitted late in a worker's life, where
        one that may take as long as its function's longest is not."""
        timeout_ms = int(timeout_s * 1000)
        first = {"budget_usd": budget_usd, "deadline_ms": int(deadline_s * 1000)}
        if isinstance(payloads, (list, tuple)) and keys is None and timeouts_s is None:
            items: Iterable[Any] = [(i, p, "", timeout_ms) for i, p in enumerate(payloads)]
        else:
            # Fewer keys than payloads: the rest go without one (no payload is dropped).
            key_of: Iterable[str] = itertools.chain(keys if keys is not None else (), itertools.repeat(""))
            limit_of: Iterable[int] = itertools.repeat(timeout_ms)
            if timeouts_s is not None:
                # Fewer timeouts than payloads: the rest get `timeout_s` (no payload is dropped).
                padded = itertools.chain(timeouts_s, itertools.repeat(0.0))
                limit_of = (int(t * 1000) or timeout_ms for t in padded)
            items = ((i, p, k, t) for i, (p, k, t) in enumerate(zip(payloads, key_of, limit_of)))
        stream = self._tasks.Map(ready_batches(function, items, first), metadata=self._conn.metadata)
        try:
            for response in stream:
                for r in answers(response):
                    yield r
        except grpc.RpcError as e:
            raise from_rpc(e) from None
        finally:
            stream.cancel()

    def stats(self) -> Stats:
        """Totals over all functions."""
        t = self._call(self._cluster.Stats, pb.StatsRequest()).total
        return Stats(
            pending=t.pending,
            running=t.running,
            succeeded=t.succeeded,
            failed=t.failed,
            cancelled=t.cancelled,
            workers_live=t.workers_live,
            workers_started=t.workers_started,
            billed_gb_ms=t.billed_gb_ms,
            cost_usd=t.cost_usd,
        )

    def workers(self, function: str = "") -> List[Worker]:
        """Workers connected or starting."""
        response = self._call(self._cluster.ListWorkers, pb.ListWorkersRequest(function=function))
        return [
            Worker(
                worker_id=w.worker_id,
                function=w.function,
                state=pb.WorkerState.Name(w.state).removeprefix("WORKER_STATE_"),
                running_tasks=w.running_tasks,
                slots=w.slots,
                tasks_done=w.tasks_done,
            )
            for w in response.workers
        ]

    def relearn(self, function: str) -> Relearned:
        """Forgets what the coordinator learned of `function` (its concurrency level and what
        each memory size cost, at every size), once its journal holds that: for a handler
        that changed. InvalidArgument for a function it does not serve."""
        r = self._call(self._cluster.Relearn, pb.RelearnRequest(function=function))
        return Relearned(levels=r.levels, costs=r.costs)


__all__ = ["Client", "CarpoolError", "Relearned", "Result", "Stats", "Worker"]
