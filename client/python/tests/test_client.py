"""Runs against a live coordinator at $CARPOOL_TARGET (the Rust integration test
`python_client` starts one with local workers and runs this file)."""

import json
import os

import grpc
import pytest

from carpool import CarpoolError, Client, Relearned

TARGET = os.environ.get("CARPOOL_TARGET")


@pytest.fixture
def client():
    if not TARGET:
        pytest.fail("CARPOOL_TARGET is not set: run through the integration test (scripts/test)")
    with Client(TARGET, timeout=60) as c:
        yield c


def test_http_urls_and_blank_entries_name_the_same_coordinator():
    if not TARGET:
        pytest.fail("CARPOOL_TARGET is not set: run through the integration test (scripts/test)")
    for target in [f"http://{TARGET}", f" , http://{TARGET}/ , ,"]:
        with Client(target, timeout=60) as c:
            assert c.run("echo", "hi").output == "hi"
    with pytest.raises(ValueError):
        Client(" , ,")


def test_map_returns_every_result_once(client):
    inputs = [json.dumps({"i": i}) for i in range(100)]
    results = list(client.map("echo", inputs))
    assert len(results) == 100
    assert sorted(r.seq for r in results) == list(range(100))
    for r in results:
        assert r.ok, r
        assert json.loads(r.output) == {"i": r.seq}


def test_map_takes_a_timeout_per_payload(client):
    # The second sleep is bounded by 0.2 s and runs past it at every attempt; the others
    # run to the end.
    results = sorted(client.map("sleep", ["50", "2000", "50"], timeouts_s=[0, 0.2, 5]), key=lambda r: r.seq)
    assert [r.ok for r in results] == [True, False, True], results
    assert results[1].state == "FAILED", results[1]
    assert "timeout of 200 ms" in results[1].error, results[1]
    # Fewer timeouts than payloads: the rest run with the call's, none is dropped.
    assert len(list(client.map("echo", ["a", "b", "c"], timeouts_s=[1]))) == 3
    # Fewer keys than payloads: the rest go without one.
    assert len(list(client.map("echo", ["a", "b"], keys=["map-fewer-keys-0"]))) == 2


def test_a_spent_budget_cancels_the_rest_of_a_map_call(client):
    # Enough tasks that some are still pending when the first result spends the budget
    # (all are submitted at once, in batches).
    results = list(client.map("sleep", ["100"] * 2000, budget_usd=1e-12))
    assert len(results) == 2000
    assert any(r.ok and r.billed_gb_s > 0 for r in results), results
    cancelled = [r for r in results if r.state == "CANCELLED"]
    assert cancelled and all("budget of $" in r.error for r in cancelled), results


def test_run_and_get(client):
    r = client.run("sleep", "50")
    assert r.state == "SUCCEEDED"
    assert json.loads(r.output) == {"slept_ms": 50}
    assert client.get(r.task_id) == r


def test_submit_then_state(client):
    task_id = client.submit("echo", b"\xff\x00binary")
    assert client.state(task_id) in {"PENDING", "RUNNING", "SUCCEEDED"}


def test_errors_carry_status_codes(client):
    with pytest.raises(CarpoolError) as e:
        client.get(10**12)
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert str(10**12) in e.value.message
    with pytest.raises(CarpoolError) as e:
        client.submit("no-such-function", "x")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_stats_and_workers(client):
    client.run("echo", "1")
    s = client.stats()
    assert s.succeeded >= 1 and s.workers_started >= 1 and s.cost_usd > 0
    assert all(w.function for w in client.workers())


def test_relearn_forgets_and_refuses_an_unknown_function(client):
    client.run("echo", "1")
    first = client.relearn("echo")
    assert first.levels >= 0 and first.costs >= 0
    # Nothing is left to forget the second time.
    assert client.relearn("echo") == Relearned(levels=0, costs=0)
    with pytest.raises(CarpoolError) as e:
        client.relearn("no-such-function")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_the_coordinator_and_token_come_from_the_environment_as_the_cli_reads_them(monkeypatch):
    if not TARGET:
        pytest.fail("CARPOOL_TARGET is not set: run through the integration test (scripts/test)")
    monkeypatch.setenv("CARPOOL_COORDINATOR", f"http://{TARGET}")
    with Client(timeout=60) as c:
        assert c.run("echo", "from the environment").output == "from the environment"
    with pytest.raises(ValueError):
        Client("ftp://somewhere")
    with pytest.raises(ValueError):
        Client(TARGET, token="a", token_file="/nonexistent")
