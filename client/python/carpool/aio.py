"""asyncio: the same client and executor on grpc.aio.

    import asyncio, carpool.aio

    async def main():
        async with carpool.aio.Client("http://127.0.0.1:50051") as c:
            print((await c.run("echo", "hi")).output)
            async for r in c.map("echo", ["a", "b"]):
                print(r.seq, r.output)
            async with c.executor() as ex:
                print(await ex.submit("echo", "x"))

    asyncio.run(main())
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any, AsyncIterable, AsyncIterator, Dict, Iterable, List, Optional, Tuple, Union

import grpc

from ._wire import answers, BATCH_ITEMS, ready_batches, Payload, Result, _by_bytes, _message, pb, payload, results, rpc, state_name
from .client import PROBE_TIMEOUT_S, Relearned, Stats
from .connection import Connection
from .errors import CarpoolError, NotFound, TaskFailed, Unavailable, code_of, error, from_rpc


class Client:
    """An asyncio connection to a coordinator; the options are those of `carpool.Client`."""

    def __init__(self, target: Optional[str] = None, **options: Any):
        self._conn = Connection.resolve(target, **options)
        self._channel: Optional[grpc.aio.Channel] = None

    async def connect(self) -> None:
        """(Re)connects, on a fresh channel, to the first coordinator of the list that
        answers as active."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        last: Optional[grpc.RpcError] = None
        for endpoint in self._conn.endpoints:
            channel = self._conn.aio_channel(endpoint)
            cluster = rpc.ClusterStub(channel)
            try:
                await cluster.Stats(pb.StatsRequest(), timeout=self._conn.timeout or PROBE_TIMEOUT_S, metadata=self._conn.metadata)
            except grpc.RpcError as e:
                await channel.close()
                last = e
                continue
            self._channel, self._tasks, self._cluster = channel, rpc.TasksStub(channel), cluster
            return
        assert last is not None
        raise from_rpc(last) from None

    async def __aenter__(self) -> "Client":
        await self.connect()
        return self

    async def __aexit__(self, *_exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _call(self, method: Any, request: Any) -> Any:
        if self._channel is None:
            await self.connect()
        try:
            return await method(request, timeout=self._conn.timeout, metadata=self._conn.metadata)
        except grpc.RpcError as e:
            raise from_rpc(e) from None

    async def submit(self, function: str, payload_: Payload = "", *, key: str = "", timeout_s: float = 0.0) -> int:
        """Queues one task; returns its id."""
        req = pb.SubmitRequest(function=function, input=payload(payload_), idempotency_key=key, timeout_ms=int(timeout_s * 1000))
        return (await self._call(self._tasks.Submit, req)).task_id

    async def run(self, function: str, payload_: Payload = "", *, key: str = "", timeout_s: float = 0.0) -> Result:
        """Runs one task and returns its result."""
        req = pb.SubmitRequest(function=function, input=payload(payload_), idempotency_key=key, timeout_ms=int(timeout_s * 1000))
        return Result(await self._call(self._tasks.Run, req))

    async def get(self, task_id: int) -> Optional[Result]:
        """The task's result if it has finished, else None (NotFound for an unknown id)."""
        info = await self._call(self._tasks.Get, pb.GetRequest(task_id=task_id))
        return Result(info.result) if info.HasField("result") else None

    async def cancel(self, task_id: int = 0, *, key: str = "") -> str:
        """Cancels a task by id or idempotency key; returns its state afterwards."""
        reply = await self._call(self._tasks.Cancel, pb.CancelRequest(task_id=task_id, idempotency_key=key))
        return state_name(reply.state)

    async def stats(self) -> Stats:
        t = (await self._call(self._cluster.Stats, pb.StatsRequest())).total
        return Stats(t.pending, t.running, t.succeeded, t.failed, t.cancelled, t.workers_live, t.workers_started, t.billed_gb_ms, t.cost_usd)

    async def relearn(self, function: str) -> Relearned:
        """Forgets what was learned of `function` (see `Client.relearn`)."""
        r = await self._call(self._cluster.Relearn, pb.RelearnRequest(function=function))
        return Relearned(levels=r.levels, costs=r.costs)

    async def map(
        self,
        function: str,
        payloads: Union[Iterable[Payload], AsyncIterable[Payload]],
        *,
        timeout_s: float = 0.0,
        timeouts_s: Optional[Iterable[float]] = None,
    ) -> AsyncIterator[Result]:
        """`async for` over the results as they finish (each with `seq`); a rejected
        submission raises its CarpoolError subclass. `timeouts_s`: a timeout per payload, in
        seconds (0: `timeout_s`), as the synchronous client's `map` takes it."""
        if self._channel is None:
            await self.connect()
        timeout_ms = int(timeout_s * 1000)
        limits = iter(timeouts_s) if timeouts_s is not None else itertools.repeat(0.0)

        def limit() -> int:
            return int(next(limits, 0.0) * 1000) or timeout_ms

        async def requests() -> AsyncIterator[Any]:
            batch: List[Tuple[int, Payload, str, int]] = []
            if isinstance(payloads, (list, tuple)):
                for message in ready_batches(function, [(i, p, "", limit()) for i, p in enumerate(payloads)]):
                    yield message
                return
            seqs = itertools.count()
            async for p in _aiter(payloads):
                batch.append((next(seqs), p, "", limit()))
                if len(batch) >= BATCH_ITEMS:
                    for chunk in _by_bytes(batch):
                        yield _message(function, chunk, None)
                    batch = []
            for chunk in _by_bytes(batch):
                yield _message(function, chunk, None)

        call = self._tasks.Map(requests(), metadata=self._conn.metadata)
        try:
            async for response in call:
                for r in answers(response):
                    yield r
        except grpc.RpcError as e:
            raise from_rpc(e) from None
        finally:
            call.cancel()

    def executor(self, *, reconnect_timeout_s: float = 60.0) -> "Executor":
        """An executor over this client (see `Executor`)."""
        return Executor(self, reconnect_timeout_s=reconnect_timeout_s)


async def _aiter(items: Union[Iterable[Payload], AsyncIterable[Payload]]) -> AsyncIterator[Payload]:
    if hasattr(items, "__aiter__"):
        async for x in items:  # type: ignore[union-attr]
            yield x
    else:
        for x in items:  # type: ignore[union-attr]
            yield x


class Executor:
    """The executor's semantics as awaitables: `submit` returns an asyncio.Future of the
    task's output (TaskFailed for a FAILED task, the CarpoolError of its code for a rejected
    submission); cancelling the future cancels the task. One Map stream; after a break the
    executor reconnects and submits the unresolved tasks again with their idempotency keys,
    so each future resolves once."""

    def __init__(self, client: Client, *, reconnect_timeout_s: float = 60.0):
        self._client = client
        self._reconnect_timeout_s = reconnect_timeout_s
        self._futures: Dict[int, Tuple[asyncio.Future, Tuple[str, Payload, str, int]]] = {}
        self._seqs = itertools.count()
        self._prefix = uuid.uuid4().hex
        self._queue: "asyncio.Queue[Optional[int]]" = asyncio.Queue()
        self._runner: Optional[asyncio.Task] = None
        self._closing = False

    async def __aenter__(self) -> "Executor":
        return self

    async def __aexit__(self, *_exc: Any) -> None:
        await self.close()

    def submit(self, function: str, payload_: Payload = "", *, timeout_s: float = 0.0) -> "asyncio.Future[Any]":
        """The task's future, at once."""
        if self._closing:
            raise RuntimeError("cannot submit after close")
        loop = asyncio.get_running_loop()
        if self._runner is None:
            self._runner = loop.create_task(self._run())
        seq = next(self._seqs)
        fut: asyncio.Future = loop.create_future()
        key = f"{self._prefix}-{seq}"
        self._futures[seq] = (fut, (function, payload_, key, int(timeout_s * 1000)))
        fut.add_done_callback(lambda f, seq=seq: self._on_done(seq, f))
        self._queue.put_nowait(seq)
        return fut

    def _on_done(self, seq: int, fut: asyncio.Future) -> None:
        entry = self._futures.pop(seq, None)
        if entry is not None and fut.cancelled():
            # Cancelled by the caller: cancel the task too (NotFound: never sent, or not yet known).
            asyncio.get_running_loop().create_task(self._cancel_remote(entry[1][2]))

    async def _cancel_remote(self, key: str) -> None:
        for _ in range(100):
            try:
                await self._client.cancel(key=key)
                return
            except NotFound:
                await asyncio.sleep(0.02)
            except CarpoolError:
                return

    async def close(self) -> None:
        """Waits for every future, then closes the stream."""
        self._closing = True
        pending = [f for f, _ in self._futures.values()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass

    async def _requests(self, queue: "asyncio.Queue[Optional[int]]") -> AsyncIterator[Any]:
        while True:
            seqs = [await queue.get()]
            while len(seqs) < BATCH_ITEMS and not queue.empty():
                seqs.append(queue.get_nowait())
            if None in seqs:
                return
            items = [self._futures[s][1] + (s,) for s in seqs if s in self._futures]
            for function, run in itertools.groupby(items, key=lambda x: x[0]):
                wire = [(s, p, key, t) for _, p, key, t, s in run]
                for chunk in _by_bytes(wire):
                    yield _message(function, chunk, None)

    async def _run(self) -> None:
        if self._client._channel is None:
            await self._client.connect()
        while True:
            queue = self._queue
            call = self._client._tasks.Map(self._requests(queue), metadata=self._client._conn.metadata)
            try:
                async for response in call:
                    for seq, result, rejected, code in results(response):
                        self._resolve(seq, result, rejected, code)
                return
            except grpc.RpcError as e:
                try:
                    await self._reconnect(e)
                except CarpoolError as fatal:
                    for fut, _ in list(self._futures.values()):
                        if not fut.done():
                            fut.set_exception(fatal)
                    self._futures.clear()
                    return
            finally:
                call.cancel()

    async def _reconnect(self, cause: grpc.RpcError) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._reconnect_timeout_s
        last: CarpoolError = from_rpc(cause)
        while loop.time() < deadline:
            try:
                await self._client.connect()
                break
            except (Unavailable, CarpoolError) as e:
                if e.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                last = e
            await asyncio.sleep(0.2)
        else:
            raise last
        old, self._queue = self._queue, asyncio.Queue()
        old.put_nowait(None)
        for seq in list(self._futures):
            self._queue.put_nowait(seq)

    def _resolve(self, seq: int, result: Any, rejected: str, code: int) -> None:
        entry = self._futures.pop(seq, None)
        if entry is None or entry[0].done():
            return
        fut = entry[0]
        if result is None:
            fut.set_exception(error(code_of(code), rejected))
        elif result.state == pb.TASK_STATE_SUCCEEDED:
            fut.set_result(Result(result, seq).output)
        elif result.state == pb.TASK_STATE_CANCELLED:
            fut.cancel()
        else:
            r = Result(result, seq)
            fut.set_exception(TaskFailed(r, r.error))
