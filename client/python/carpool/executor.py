"""`concurrent.futures` over one Map stream: submit and get a future, map in order,
`as_completed`, `wait`, cancel."""

from __future__ import annotations

import concurrent.futures
import itertools
import queue
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple

import grpc

from ._wire import BATCH_ITEMS, Payload, Result, _by_bytes, _message, pb, results
from .client import Client
from .errors import CarpoolError, NotFound, TaskFailed, Unavailable, code_of, error, from_rpc


# One submission waiting to go: (function, future, payload, timeout in ms).
_Item = Tuple[str, "TaskFuture", Payload, int]


class TaskFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """A task's future. `result()` is the task's output (text or bytes); a FAILED task raises
    TaskFailed, a rejected submission the CarpoolError of its code, a CANCELLED one
    CancelledError. `task` holds the full Result once it has arrived."""

    def __init__(self, executor: "Executor", seq: int, key: str):
        super().__init__()
        self._executor = executor
        self.seq = seq
        self.key = key  # the idempotency key the task was submitted with
        self.task: Optional[Result] = None
        self._sent = False
        self._item: Optional[_Item] = None

    def cancel(self) -> bool:
        """Cancels the task: one not sent yet never leaves this process; one sent is
        cancelled on the coordinator (a running one on its worker). False once it has
        finished."""
        return self._executor._cancel(self)




class Executor(concurrent.futures.Executor):
    """Runs tasks on a coordinator as `concurrent.futures` runs callables:

        with Executor("http://127.0.0.1:50051") as ex:
            f = ex.submit("echo", "hi")
            print(f.result())
            for out in ex.map("echo", ["a", "b"]):
                print(out)

    Everything goes over one Map stream, in batches of what is ready. Each submission has an
    idempotency key; if the stream breaks (a coordinator restart, a standby taking over),
    the executor reconnects to the first active coordinator of its URL list, for up to
    `reconnect_timeout_s`, and submits every unresolved task again with its key, so each
    future resolves exactly once. Connection options are those of `Client`.
    """

    def __init__(self, target: Optional[str] = None, *, reconnect_timeout_s: float = 60.0, **options: Any):
        self._client = Client(target, **options)
        self._reconnect_timeout_s = reconnect_timeout_s
        self._lock = threading.Lock()
        self._futures: Dict[int, TaskFuture] = {}
        self._seqs = itertools.count()
        self._prefix = uuid.uuid4().hex
        self._out: "queue.SimpleQueue[Optional[_Item]]" = queue.SimpleQueue()
        self._closed = False
        self._failure: Optional[CarpoolError] = None
        self._call: Any = None
        self._thread = threading.Thread(target=self._run, name="carpool-executor", daemon=True)
        self._thread.start()

    # -- the public API --------------------------------------------------------------

    def submit(self, fn: str, /, *args: Any, **kwargs: Any) -> TaskFuture:  # type: ignore[override]
        """Submits one task of function `fn` with `payload` (str or bytes, default empty);
        `timeout_s=`: per attempt. Returns its future at once."""
        payload: Payload = args[0] if args else kwargs.pop("payload", "")
        timeout_ms = int(kwargs.pop("timeout_s", 0.0) * 1000)
        if kwargs or len(args) > 1:
            raise TypeError("submit(function, payload='', *, timeout_s=0.0)")
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit after shutdown")
            if self._failure is not None:
                raise self._failure
            seq = next(self._seqs)
            f = TaskFuture(self, seq, f"{self._prefix}-{seq}")
            self._futures[seq] = f
            f._item = (fn, f, payload, timeout_ms)
            self._out.put(f._item)
        return f

    def map(self, fn: str, *iterables: Any, timeout: Optional[float] = None, chunksize: int = 1) -> Iterator[Any]:  # type: ignore[override]
        """The outputs of `fn` over the payloads, in order (as `concurrent.futures`)."""
        return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions; with `cancel_futures`, the unresolved ones are cancelled;
        with `wait`, returns once every future has resolved and the stream is closed."""
        with self._lock:
            self._closed = True
            pending = list(self._futures.values())
        if cancel_futures:
            for f in pending:
                f.cancel()
        if wait:
            concurrent.futures.wait(pending)
            self._stop()
            self._thread.join()
            self._client.close()

    # -- the stream ------------------------------------------------------------------

    def _stop(self) -> None:
        self._out.put(None)
        call = self._call
        if call is not None:
            call.cancel()

    def _requests(self, out: "queue.SimpleQueue[Optional[_Item]]") -> Iterator[Any]:
        while True:
            batch: List[Optional[_Item]] = [out.get()]
            while len(batch) < BATCH_ITEMS:
                try:
                    batch.append(out.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is None
            items: List[_Item] = []
            with self._lock:
                for x in batch:
                    if x is not None and x[1].seq in self._futures:
                        x[1]._sent = True
                        items.append(x)
            for function, run in itertools.groupby(items, key=lambda x: x[0]):
                wire = [(f.seq, p, f.key, t) for _, f, p, t in run]
                for chunk in _by_bytes(wire):
                    yield _message(function, chunk, None)
            if stop:
                return

    def _run(self) -> None:
        while True:
            out = self._out
            try:
                self._call = self._client._tasks.Map(self._requests(out), metadata=self._client.connection.metadata)
                for response in self._call:
                    for seq, result, rejected, code in results(response):
                        self._resolve(seq, result, rejected, code)
                    with self._lock:
                        if self._closed and not self._futures:
                            self._call.cancel()
                return
            except grpc.RpcError as e:
                with self._lock:
                    if self._closed and not self._futures:
                        return
                try:
                    self._reconnect(e)
                except CarpoolError as fatal:
                    self._fail_all(fatal)
                    return

    def _reconnect(self, cause: grpc.RpcError) -> None:
        """Connects again and queues every unresolved task on a fresh queue for the new
        stream; raises what ends the executor when no coordinator comes back in time."""
        deadline = time.monotonic() + self._reconnect_timeout_s
        last: CarpoolError = from_rpc(cause)
        while time.monotonic() < deadline:
            try:
                self._client.connect(probe=True)
                break
            except Unavailable as e:
                last = e
            except CarpoolError as e:
                if e.code != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
                last = e
            time.sleep(0.2)
        else:
            raise last
        with self._lock:
            fresh: "queue.SimpleQueue[Optional[_Item]]" = queue.SimpleQueue()
            old, self._out = self._out, fresh
            # The broken stream's reader ends; what it had not taken goes again below.
            old.put(None)
            for f in self._futures.values():
                if f._item is not None:
                    fresh.put(f._item)
            if self._closed and not self._futures:
                fresh.put(None)

    def _resolve(self, seq: int, result: Any, rejected: str, code: int) -> None:
        with self._lock:
            f = self._futures.pop(seq, None)
        if f is None:  # answered already (a resubmission's twin) or cancelled here
            return
        if result is None:
            f.set_exception(error(code_of(code), rejected))
            return
        r = Result(result, seq)
        f.task = r
        if result.state == pb.TASK_STATE_SUCCEEDED:
            f.set_result(r.output)
        elif result.state == pb.TASK_STATE_CANCELLED:
            concurrent.futures.Future.cancel(f)
            f.set_running_or_notify_cancel()
        else:
            f.set_exception(TaskFailed(r, r.error))

    def _fail_all(self, e: CarpoolError) -> None:
        with self._lock:
            self._failure = e
            futures, self._futures = list(self._futures.values()), {}
        for f in futures:
            f.set_exception(e)

    def _cancel(self, f: TaskFuture) -> bool:
        with self._lock:
            if f.done():
                return f.cancelled()
            if not f._sent:
                self._futures.pop(f.seq, None)
                concurrent.futures.Future.cancel(f)
                f.set_running_or_notify_cancel()
                return True
        deadline = time.monotonic() + 5.0
        while True:
            try:
                state = self._client.cancel(key=f.key)
                break
            except NotFound:
                # Sent but not yet accepted: the coordinator knows the key in a moment.
                if time.monotonic() > deadline or f.done():
                    return f.cancelled()
                time.sleep(0.01)
            except CarpoolError:
                return f.cancelled()
        if state != "CANCELLED":
            return False
        with self._lock:
            mine = self._futures.pop(f.seq, None) is not None
        if mine:
            concurrent.futures.Future.cancel(f)
            f.set_running_or_notify_cancel()
        return f.cancelled()
