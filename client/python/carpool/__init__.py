"""carpool's Python client: submit tasks, run them, map over iterables, read stats.

    from carpool import Client

    with Client("127.0.0.1:50051") as c:
        print(c.run("echo", '{"hello": "world"}').output)
        for r in c.map("spin", ["100"] * 10):
            print(r.seq, r.state, r.output)
"""

from .client import CarpoolError, Client, Result, Stats, Worker

__all__ = ["CarpoolError", "Client", "Result", "Stats", "Worker"]
