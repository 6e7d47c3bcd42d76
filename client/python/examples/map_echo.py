"""Runs N echo tasks through map() and prints a JSON summary.

    python examples/map_echo.py --target 127.0.0.1:50051 --tasks 100
"""

import argparse
import json

from carpool import Client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--tasks", type=int, default=100)
    args = parser.parse_args()
    with Client(args.target) as client:
        inputs = [json.dumps({"i": i}) for i in range(args.tasks)]
        correct = 0
        for r in client.map("echo", inputs):
            if r.ok and json.loads(r.output)["i"] == r.seq:
                correct += 1
        stats = client.stats()
    print(json.dumps({"tasks": args.tasks, "correct": correct, "workers_started": stats.workers_started}))


if __name__ == "__main__":
    main()
