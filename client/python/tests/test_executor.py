"""The futures executor, against the shared coordinator ($CARPOOL_TARGET) and coordinators
and workers the tests start and break."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import os
import threading
import time

import grpc
import pytest

import carpool
from carpool import Executor, InvalidArgument, NotFound, TaskFailed

from conftest import coordinator, need, worker


@pytest.fixture
def target() -> str:
    return need("CARPOOL_TARGET")


def test_submit_as_completed_wait_and_map_in_order(target: str) -> None:
    with Executor(target) as ex:
        fs = [ex.submit("echo", json.dumps({"i": i})) for i in range(500)]
        seen = [json.loads(f.result())["i"] for f in cf.as_completed(fs, timeout=60)]
        assert sorted(seen) == list(range(500))
        done, not_done = cf.wait(fs, timeout=60)
        assert len(done) == 500 and not not_done
        assert all(f.task is not None and f.task.ok for f in fs)
        assert list(ex.map("echo", ["a", "b", "c"], timeout=60)) == ["a", "b", "c"]
        called = []
        f = ex.submit("echo", "cb")
        f.add_done_callback(lambda g: called.append(g.result()))
        cf.wait([f], timeout=60)
        time.sleep(0.05)
        assert called == ["cb"]


def test_a_failed_task_raises_and_a_bad_submission_has_its_code(target: str) -> None:
    with Executor(target) as ex:
        bad = ex.submit("no-such-function", "x")
        with pytest.raises(InvalidArgument):
            bad.result(timeout=60)
        ok = ex.submit("echo", "fine")
        assert ok.result(timeout=60) == "fine"
        failed = ex.submit("sleep", "not a number")
        with pytest.raises(TaskFailed) as e:
            failed.result(timeout=60)
        assert isinstance(e.value, carpool.CarpoolError) and e.value.result.state == "FAILED"


def test_cancel_a_running_task_and_a_finished_one(target: str) -> None:
    with Executor(target) as ex:
        slow = ex.submit("sleep", "20000")
        deadline = time.time() + 30
        with carpool.Client(target) as c:
            while time.time() < deadline and c.stats().running == 0:
                time.sleep(0.02)
        assert slow.cancel()
        assert slow.cancelled()
        with pytest.raises(cf.CancelledError):
            slow.result(timeout=1)
        quick = ex.submit("echo", "done")
        assert quick.result(timeout=60) == "done"
        assert not quick.cancel()
        # Cancelling by key reaches the coordinator: the task is CANCELLED there.
        with carpool.Client(target) as c, pytest.raises(NotFound):
            c.cancel(key="no-such-key")


def test_a_batch_with_a_bad_item_rejects_that_item_alone(target: str) -> None:
    with carpool.Client(target, timeout=60) as c:
        keys = [f"batch-{os.getpid()}-{time.time()}-{i}" for i in range(5)]
        keys[2] = "k" * 5000  # longer than a key may be
        got = {}
        stream = c._tasks.Map(
            iter(
                [
                    carpool._wire.pb.MapRequest(
                        function="echo",
                        tasks=[
                            carpool._wire.pb.MapTask(input=carpool._wire.pb.Payload(text=str(i)), seq=i, idempotency_key=k)
                            for i, k in enumerate(keys)
                        ],
                    )
                ]
            )
        )
        for response in stream:
            assert not response.rejected and len(response.results) >= 1, response
            for r in response.results:
                got[r.seq] = r
        assert sorted(got) == [0, 1, 2, 3, 4]
        assert got[2].rejected_code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and "key" in got[2].rejected
        for i in (0, 1, 3, 4):
            assert got[i].rejected_code == 0 and got[i].result.output.text == str(i)


def _count_resolutions(fs):
    counts = collections.Counter()
    lock = threading.Lock()

    def seen(f):
        with lock:
            counts[f.seq] += 1

    for f in fs:
        f.add_done_callback(seen)
    return counts


def test_futures_resolve_once_across_a_worker_kill(procs) -> None:
    c = coordinator(procs, "--spawner", "external", "--keep-alive", "60s")
    url = f"http://{c.address}"
    first = worker(procs, url, "sleep", "--id", "doomed")
    with Executor(url, reconnect_timeout_s=30) as ex:
        fs = [ex.submit("sleep", "100") for _ in range(60)]
        counts = _count_resolutions(fs)
        # Kill the worker once some tasks are done and others run on it.
        deadline = time.time() + 30
        while time.time() < deadline and sum(f.done() for f in fs) < 5:
            time.sleep(0.01)
        first.stop()
        worker(procs, url, "sleep", "--id", "rescuer")
        results = [f.result(timeout=60) for f in fs]
    assert all(json.loads(r) == {"slept_ms": 100} for r in results)
    time.sleep(0.05)
    assert sorted(counts.values()) == [1] * 60, counts


def test_futures_resolve_once_across_a_coordinator_restart_on_a_url_list(procs, tmp_path) -> None:
    state = str(tmp_path / "state")
    c = coordinator(procs, "--state-dir", state)
    address = c.address
    # A URL list: a coordinator that is not there, then the real one.
    dead = "127.0.0.1:9"
    with Executor(f"http://{dead},http://{address}", reconnect_timeout_s=60) as ex:
        fs = [ex.submit("sleep", "200") for _ in range(100)]
        counts = _count_resolutions(fs)
        deadline = time.time() + 30
        while time.time() < deadline and sum(f.done() for f in fs) < 10:
            time.sleep(0.01)
        c.stop()  # SIGKILL: no drain, no flush
        coordinator(procs, "--state-dir", state, listen=address)
        results = [f.result(timeout=120) for f in fs]
    assert all(json.loads(r) == {"slept_ms": 200} for r in results)
    time.sleep(0.05)
    assert sorted(counts.values()) == [1] * 100, counts


def test_tls_with_a_ca_file_and_a_token_from_the_environment(procs, monkeypatch) -> None:
    cert, key = need("CARPOOL_TEST_TLS_CERT"), need("CARPOOL_TEST_TLS_KEY")
    token_file = os.path.join(os.path.dirname(cert), "client-token")
    with open(token_file, "w") as f:
        f.write("s3cret\n")
    c = coordinator(procs, "--tls-cert", cert, "--tls-key", key, "--client-token-file", token_file)
    url = f"https://localhost:{c.address.rsplit(':', 1)[1]}"
    monkeypatch.setenv("CARPOOL_TOKEN", "s3cret")
    with carpool.Client(url, ca_file=cert, timeout=60) as client:
        assert client.run("echo", "over tls").output == "over tls"
    with Executor(url, ca_file=cert) as ex:
        assert ex.submit("echo", "future over tls").result(timeout=60) == "future over tls"
    # An IP address in the URL, checked against the certificate's name instead.
    ip_url = f"https://{c.address}"
    with carpool.Client(ip_url, ca_file=cert, server_name="localhost", timeout=60) as client:
        assert client.run("echo", "named").output == "named"
    monkeypatch.setenv("CARPOOL_TOKEN", "wrong")
    with carpool.Client(url, ca_file=cert, timeout=60) as client, pytest.raises(carpool.Unauthenticated):
        client.run("echo", "x")
    monkeypatch.delenv("CARPOOL_TOKEN")
    monkeypatch.setenv("CARPOOL_TOKEN_FILE", token_file)
    with carpool.Client(url, ca_file=cert, timeout=60) as client:
        assert client.run("echo", "from a file").output == "from a file"
    # Without the CA, the certificate is not trusted.
    with carpool.Client(url, timeout=10) as client, pytest.raises(carpool.Unavailable):
        client.run("echo", "x")


def test_a_message_with_a_task_in_its_own_fields_and_a_batch_is_rejected_item_by_item(target: str) -> None:
    pb = carpool._wire.pb
    with carpool.Client(target, timeout=60) as c:
        mixed = pb.MapRequest(
            function="echo",
            input=pb.Payload(text="own"),
            seq=99,
            tasks=[pb.MapTask(input=pb.Payload(text=str(i)), seq=i) for i in range(3)],
        )
        fine = pb.MapRequest(tasks=[pb.MapTask(input=pb.Payload(text="after"), seq=7)])
        got = {}
        for response in c._tasks.Map(iter([mixed, fine]), timeout=60):
            for r in response.results:
                got[r.seq] = r
        assert sorted(got) == [0, 1, 2, 7], got
        for i in range(3):
            assert got[i].rejected_code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "not both" in got[i].rejected
        assert got[7].result.output.text == "after"
