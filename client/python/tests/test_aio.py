"""carpool.aio against the shared coordinator ($CARPOOL_TARGET)."""

from __future__ import annotations

import asyncio
import json

import pytest

import carpool
import carpool.aio

from conftest import coordinator, need


def test_run_map_and_the_executor_as_awaitables() -> None:
    target = need("CARPOOL_TARGET")

    async def main() -> None:
        async with carpool.aio.Client(target, timeout=60) as c:
            r = await c.run("echo", "hi")
            assert r.ok and r.output == "hi"
            seqs = [r.seq async for r in c.map("echo", [json.dumps({"i": i}) for i in range(300)])]
            assert sorted(seqs) == list(range(300))

            async def slowly():
                for i in range(3):
                    await asyncio.sleep(0.01)
                    yield str(i)

            assert sorted([r.output async for r in c.map("echo", slowly())]) == ["0", "1", "2"]
            bounded = sorted([r async for r in c.map("sleep", ["20", "2000"], timeouts_s=[0, 0.2])], key=lambda r: r.seq)
            assert [r.ok for r in bounded] == [True, False], bounded
            assert "timeout of 200 ms" in bounded[1].error, bounded[1]
            with pytest.raises(carpool.InvalidArgument):
                async for _ in c.map("no-such-function", ["x"]):
                    pass
            async with c.executor() as ex:
                outs = await asyncio.gather(*[ex.submit("echo", str(i)) for i in range(200)])
                assert outs == [str(i) for i in range(200)]
                with pytest.raises(carpool.TaskFailed):
                    await ex.submit("sleep", "not a number")
                slow = ex.submit("sleep", "20000")
                await asyncio.sleep(0.3)
                slow.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await slow
                # The task was cancelled on the coordinator too.
                for _ in range(100):
                    s = await c.stats()
                    if s.running == 0:
                        break
                    await asyncio.sleep(0.05)
                assert s.running == 0, s

    asyncio.run(main())


def test_the_asyncio_executor_resolves_each_future_once_across_a_coordinator_restart(procs, tmp_path) -> None:
    state = str(tmp_path / "state")
    c = coordinator(procs, "--state-dir", state)
    address = c.address

    async def main() -> None:
        async with carpool.aio.Client(f"http://127.0.0.1:9,http://{address}") as client:
            async with client.executor(reconnect_timeout_s=60) as ex:
                futures = [ex.submit("sleep", "200") for _ in range(100)]
                resolved = []
                for f in futures:
                    f.add_done_callback(resolved.append)
                for _ in range(3000):
                    if sum(f.done() for f in futures) >= 10:
                        break
                    await asyncio.sleep(0.01)
                c.stop()  # SIGKILL: no drain, no flush
                coordinator(procs, "--state-dir", state, listen=address)
                outs = await asyncio.wait_for(asyncio.gather(*futures), 120)
                assert all(json.loads(o) == {"slept_ms": 200} for o in outs)
                await asyncio.sleep(0.05)
                assert len(resolved) == 100 and len(set(map(id, resolved))) == 100

    asyncio.run(main())
