"""A thin, typed layer over the generated carpool.v1 stubs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Union

import grpc

try:
    from ._pb import carpool_pb2 as pb
    from ._pb import carpool_pb2_grpc as rpc
except ImportError as e:  # pragma: no cover - only without a proper build
    raise ImportError(
        "carpool's gRPC stubs are missing: install the package with pip (pip install client/python), "
        "which generates them from proto/carpool.proto"
    ) from e

Payload = Union[str, bytes]


class CarpoolError(Exception):
    """A gRPC error from the coordinator, with its status code (e.g. grpc.StatusCode.NOT_FOUND)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Result:
    """The final outcome of one task."""

    task_id: int
    state: str  # "SUCCEEDED", "FAILED" or "CANCELLED"
    output: Optional[Payload]  # text when the output is UTF-8, bytes otherwise
    error: str
    worker_id: str
    attempts: int
    started_unix_ms: int
    finished_unix_ms: int
    seq: Optional[int] = None  # the input's position, for map()
    billed_gb_s: float = 0.0  # its estimated share of the bill, GB-seconds

    @property
    def ok(self) -> bool:
        return self.state == "SUCCEEDED"


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
class Worker:
    """One worker as ListWorkers reports it."""

    worker_id: str
    function: str
    state: str
    running_tasks: int
    slots: int
    tasks_done: int


def _payload(p: Payload) -> pb.Payload:
    if isinstance(p, bytes):
        return pb.Payload(binary=p)
    if isinstance(p, str):
        return pb.Payload(text=p)
    raise TypeError(f"payload must be str or bytes, not {type(p).__name__}")


def _code(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode with this number (INVALID_ARGUMENT if none matches)."""
    for c in grpc.StatusCode:
        if c.value[0] == value:
            return c
    return grpc.StatusCode.INVALID_ARGUMENT


def _state(value: int) -> str:
    return pb.TaskState.Name(value).removeprefix("TASK_STATE_")


def _result(r, seq: Optional[int] = None) -> Result:
    kind = r.output.WhichOneof("data") if r.HasField("output") else None
    output = getattr(r.output, kind) if kind else None
    return Result(
        task_id=r.task_id,
        state=_state(r.state),
        output=output,
        error=r.error,
        worker_id=r.worker_id,
        attempts=r.attempts,
        started_unix_ms=r.started_unix_ms,
        finished_unix_ms=r.finished_unix_ms,
        seq=seq,
        billed_gb_s=r.billed_gb_s,
    )


def _grpc_target(one: str) -> str:
    """`host:port` for grpc from `host:port` or `http://host:port` (as the CLI and the
    workers take them)."""
    if one.startswith("https://"):
        raise ValueError(f"{one!r}: TLS is not supported by this client yet; use http:// or host:port")
    return one[len("http://"):].rstrip("/") if one.startswith("http://") else one


class Client:
    """A connection to a coordinator (`host:port` or `http://host:port`, plaintext).

    `target` may name several, comma-separated (an active coordinator and its standbys, which
    share a database): the first that answers as active is used; a standby answers
    UNAVAILABLE, and if none is active that error is raised.
    """

    def __init__(self, target: str = "127.0.0.1:50051", *, timeout: Optional[float] = None, token: Optional[str] = None):
        self._timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        targets = [_grpc_target(t.strip()) for t in target.split(",") if t.strip()]
        if not targets:
            raise ValueError(f"{target!r} names no coordinator")
        for i, one in enumerate(targets):
            self._open(one)
            if len(targets) == 1:
                return
            try:
                self._cluster.Stats(pb.StatsRequest(), timeout=timeout or 10, metadata=self._metadata)
                return
            except grpc.RpcError as e:
                self._channel.close()
                if i == len(targets) - 1:
                    raise CarpoolError(e.code(), e.details()) from None

    def _open(self, target: str) -> None:
        self._channel = grpc.insecure_channel(
            target,
            options=[("grpc.keepalive_time_ms", 20000), ("grpc.max_receive_message_length", -1)],
        )
        self._tasks = rpc.TasksStub(self._channel)
        self._cluster = rpc.ClusterStub(self._channel)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method, request, **kw):
        try:
            return method(request, timeout=self._timeout, metadata=self._metadata, **kw)
        except grpc.RpcError as e:
            raise CarpoolError(e.code(), e.details()) from None

    def submit(self, function: str, payload: Payload = "") -> int:
        """Queues one task; returns its id at once."""
        return self._call(self._tasks.Submit, pb.SubmitRequest(function=function, input=_payload(payload))).task_id

    def run(self, function: str, payload: Payload = "") -> Result:
        """Runs one task and waits for its result."""
        return _result(self._call(self._tasks.Run, pb.SubmitRequest(function=function, input=_payload(payload))))

    def get(self, task_id: int) -> Optional[Result]:
        """The task's result if it has finished, else None. Raises CarpoolError(NOT_FOUND) for an unknown id."""
        info = self._call(self._tasks.Get, pb.GetRequest(task_id=task_id))
        return _result(info.result) if info.HasField("result") else None

    def state(self, task_id: int) -> str:
        """The task's current state ("PENDING", "RUNNING", ...)."""
        return _state(self._call(self._tasks.Get, pb.GetRequest(task_id=task_id)).state)

    def cancel(self, task_id: int) -> str:
        """Cancels a task; returns its state afterwards."""
        return _state(self._call(self._tasks.Cancel, pb.CancelRequest(task_id=task_id)).state)

    def map(
        self,
        function: str,
        payloads: Iterable[Payload],
        budget_usd: float = 0.0,
        deadline_s: float = 0.0,
    ) -> Iterator[Result]:
        """Runs every payload as a task over one streaming call; yields results as they
        finish, each with `seq`, its payload's position. A rejected submission raises
        CarpoolError with the code Submit would have answered (INVALID_ARGUMENT,
        RESOURCE_EXHAUSTED...) when its answer arrives. With `budget_usd`, once the
        results' estimated bill reaches it the pending tasks come back CANCELLED and the
        rest are rejected with RESOURCE_EXHAUSTED. With `deadline_s`, a payload that cannot
        finish within that many seconds of the call's start, by what the coordinator has
        measured, is rejected with FAILED_PRECONDITION."""

        def requests():
            for i, p in enumerate(payloads):
                first = i == 0
                yield pb.MapRequest(
                    function=function if first else "",
                    input=_payload(p),
                    seq=i,
                    budget_usd=budget_usd if first else 0.0,
                    deadline_ms=int(deadline_s * 1000) if first else 0,
                )

        try:
            for response in self._tasks.Map(requests(), timeout=self._timeout, metadata=self._metadata):
                if response.rejected:
                    raise CarpoolError(_code(response.rejected_code), f"input {response.seq}: {response.rejected}")
                yield _result(response.result, seq=response.seq)
        except grpc.RpcError as e:
            raise CarpoolError(e.code(), e.details()) from None

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
