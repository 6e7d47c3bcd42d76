"""Messages to and from the wire: payloads, results, and batches of Map submissions."""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterable, Iterator, List, Optional, Tuple, Union

try:
    from ._pb import carpool_pb2 as pb
    from ._pb import carpool_pb2_grpc as rpc
except ImportError as e:  # pragma: no cover - only without a proper build
    raise ImportError(
        "carpool's gRPC stubs are missing: install the package with pip (pip install client/python), "
        "which generates them from proto/carpool.proto"
    ) from e

from .errors import code_of, error

__all__ = ["pb", "rpc", "Payload", "Result", "payload", "BATCH_ITEMS", "BATCH_BYTES", "ready_batches"]

Payload = Union[str, bytes]

# A Map message carries what is ready, up to this many submissions and payload bytes (the
# coordinator takes at most 10,000 per message and a message of twice its payload limit).
BATCH_ITEMS = 2048
BATCH_BYTES = 1 << 20

_STATES = {v: pb.TaskState.Name(v).removeprefix("TASK_STATE_") for v in pb.TaskState.values()}


def payload(p: Payload) -> Any:
    """A Payload message: text for str, binary for bytes."""
    if isinstance(p, str):
        return pb.Payload(text=p)
    if isinstance(p, (bytes, bytearray, memoryview)):
        return pb.Payload(binary=bytes(p))
    raise TypeError(f"payload must be str or bytes, not {type(p).__name__}")


def state_name(value: int) -> str:
    return _STATES.get(value, str(value))


class Result:
    """The final outcome of one task. Fields are read from the message when asked for, so a
    result costs little until it is looked at."""

    __slots__ = ("_r", "seq")

    def __init__(self, message: Any, seq: Optional[int] = None):
        self._r = message
        self.seq = seq  # the submission's tag: the input's position for map()

    @property
    def task_id(self) -> int:
        return self._r.task_id

    @property
    def state(self) -> str:
        """"SUCCEEDED", "FAILED" or "CANCELLED"."""
        return _STATES.get(self._r.state, str(self._r.state))

    @property
    def ok(self) -> bool:
        return self._r.state == pb.TASK_STATE_SUCCEEDED

    @property
    def output(self) -> Optional[Payload]:
        """Text when the output is UTF-8, bytes otherwise; None if there is none."""
        kind = self._r.output.WhichOneof("data")
        return getattr(self._r.output, kind) if kind else None

    @property
    def error(self) -> str:
        return self._r.error

    @property
    def worker_id(self) -> str:
        return self._r.worker_id

    @property
    def attempts(self) -> int:
        return self._r.attempts

    @property
    def started_unix_ms(self) -> int:
        return self._r.started_unix_ms

    @property
    def finished_unix_ms(self) -> int:
        return self._r.finished_unix_ms

    @property
    def billed_gb_s(self) -> float:
        """Its estimated share of the bill, GB-seconds."""
        return self._r.billed_gb_s

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Result) and self._r == other._r and self.seq == other.seq

    def __hash__(self) -> int:
        return hash((self._r.task_id, self.seq))

    def __repr__(self) -> str:
        return (
            f"Result(task_id={self.task_id}, state={self.state!r}, output={self.output!r}, "
            f"error={self.error!r}, attempts={self.attempts}, seq={self.seq})"
        )


# One submission: (seq, payload, idempotency key, timeout in ms).
Item = Tuple[int, Payload, str, int]


def _message(function: str, items: List[Item], first: Optional[dict]) -> Any:
    tasks = [
        pb.MapTask(input=payload(p), seq=seq, idempotency_key=key, timeout_ms=timeout_ms)
        for seq, p, key, timeout_ms in items
    ]
    return pb.MapRequest(function=function, tasks=tasks, **(first or {}))


def ready_batches(function: str, items: Iterable[Item], first: Optional[dict] = None) -> Iterator[Any]:
    """MapRequests carrying `items` in batches of what is ready: a list is cut at once; any
    other iterable is read on a thread, and each message takes what has arrived, never
    waiting for more, so one item at a time goes as soon as it is there. `first`: the
    call's options, set on the first message."""
    if isinstance(items, (list, tuple)):
        for start in range(0, len(items), BATCH_ITEMS):
            for chunk in _by_bytes(list(items[start : start + BATCH_ITEMS])):
                yield _message(function, chunk, first)
                first = None
        if first is not None:  # nothing to send: still name the call
            yield pb.MapRequest(function=function, **first)
        return
    q: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
    end = object()

    def feed() -> None:
        try:
            for item in items:
                q.put(item)
        except BaseException as e:  # handed to the reader
            q.put(e)
        q.put(end)

    threading.Thread(target=feed, name="carpool-map-feed", daemon=True).start()
    done = False
    while not done:
        batch = [q.get()]
        while len(batch) < BATCH_ITEMS:
            try:
                batch.append(q.get_nowait())
            except queue.Empty:
                break
        if batch[-1] is end:
            batch.pop()
            done = True
        for x in batch:
            if isinstance(x, BaseException):
                raise x
        for chunk in _by_bytes(batch):
            yield _message(function, chunk, first)
            first = None
    if first is not None:
        yield pb.MapRequest(function=function, **first)


def _by_bytes(items: List[Item]) -> List[List[Item]]:
    """`items` in runs of at most BATCH_BYTES of payload (each run at least one item)."""
    out: List[List[Item]] = []
    size = 0
    for item in items:
        n = len(item[1])
        if out and size + n <= BATCH_BYTES:
            out[-1].append(item)
            size += n
        else:
            out.append([item])
            size = n
    return out


def results(response: Any) -> List[Tuple[int, Any, str, int]]:
    """(seq, result message or None, rejected, rejected_code) for each answer of a
    MapResponse, batched or single."""
    if len(response.results):
        return [(r.seq, r.result if r.HasField("result") else None, r.rejected, r.rejected_code) for r in response.results]
    return [
        (response.seq, response.result if response.HasField("result") else None, response.rejected, response.rejected_code)
    ]


def answers(response: Any) -> List[Result]:
    """The results a MapResponse carries, in order; a rejected submission raises the
    CarpoolError of its code, naming its input."""
    out = []
    for seq, result, rejected, code in results(response):
        if result is None:
            raise error(code_of(code), f"input {seq}: {rejected}")
        out.append(Result(result, seq))
    return out
