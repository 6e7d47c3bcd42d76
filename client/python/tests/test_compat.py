"""Clients built from the contract before batches still work: stubs generated from that
proto (tests/fixtures/carpool_before_batches.proto) send one submission per Map message and
read one result per message."""

from __future__ import annotations

import subprocess
import os
import shutil
import sys

from grpc_tools import protoc

from conftest import need

HERE = os.path.dirname(os.path.abspath(__file__))


def test_single_task_map_clients_of_the_previous_contract(tmp_path) -> None:
    target = need("CARPOOL_TARGET")
    pkg = tmp_path / "oldcarpool"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    shutil.copy(os.path.join(HERE, "fixtures", "carpool_before_batches.proto"), pkg / "carpool.proto")
    assert protoc.main(["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(pkg / "carpool.proto")]) == 0
    # A fresh interpreter: the old stubs' names would clash with this package's in one pool.
    script = tmp_path / "old_client.py"
    script.write_text(OLD_CLIENT)
    out = subprocess.run([sys.executable, str(script), target], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


OLD_CLIENT = """
import sys

import grpc

from oldcarpool import carpool_pb2 as old
from oldcarpool import carpool_pb2_grpc as old_rpc

assert "tasks" not in old.MapRequest.DESCRIPTOR.fields_by_name
with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = old_rpc.TasksStub(channel)
    requests = [old.MapRequest(function="echo" if i == 0 else "", input=old.Payload(text=str(i)), seq=i) for i in range(50)]
    requests.append(old.MapRequest(function="no-such-function", input=old.Payload(text="x"), seq=50))
    got = {}
    for response in stub.Map(iter(requests), timeout=60):
        assert response.seq not in got, response
        got[response.seq] = response
    assert sorted(got) == list(range(51)), sorted(got)
    assert all(got[i].result.output.text == str(i) for i in range(50))
    assert got[50].rejected_code == grpc.StatusCode.INVALID_ARGUMENT.value[0], got[50]
    state = stub.Cancel(old.CancelRequest(task_id=got[0].result.task_id), timeout=60).state
    assert state == old.TASK_STATE_SUCCEEDED, state
print("ok")
"""
