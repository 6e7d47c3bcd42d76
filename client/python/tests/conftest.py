"""Processes the tests start: real carpool-coordinator and carpool-worker binaries from
$CARPOOL_BIN_DIR, on 127.0.0.1 with ports the OS picks, each stopped by its handle when the
test ends (also when it fails). The Rust integration test `clients` sets the variables."""

from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Iterator, List, Optional

import pytest

BIN_DIR = os.environ.get("CARPOOL_BIN_DIR")


def need(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        pytest.fail(f"{var} is not set: run the Python tests through the test command (scripts/test)")
    return value


class Proc:
    """A started binary; killed (SIGKILL) by `stop`."""

    def __init__(self, name: str, args: List[str], read_address: bool):
        bin_dir = need("CARPOOL_BIN_DIR")
        self.log = tempfile.NamedTemporaryFile(prefix=f"carpool-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [os.path.join(bin_dir, name), *args],
            stdout=subprocess.PIPE if read_address else self.log,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        self.address: Optional[str] = None
        if read_address:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            if "listening on" not in line:
                self.stop()
                pytest.fail(f"{name} printed {line!r} instead of its address")
            self.address = line.split()[-1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def procs() -> Iterator[List[Proc]]:
    started: List[Proc] = []
    yield started
    for p in started:
        p.stop()


def coordinator(procs: List[Proc], *args: str, listen: str = "127.0.0.1:0") -> Proc:
    p = Proc("carpool-coordinator", ["--listen", listen, *args], read_address=True)
    procs.append(p)
    return p


def worker(procs: List[Proc], url: str, function: str, *args: str) -> Proc:
    p = Proc("carpool-worker", ["--coordinator", url, "--function", function, *args], read_address=False)
    procs.append(p)
    return p
