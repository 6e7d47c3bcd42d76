"""An API fan-out handler: one HTTP call that takes a few hundred milliseconds (the
service's own delay), as most I/O-bound Lambda handlers spend their time. Imports
boto3 as such handlers usually do, though it only waits on HTTP.
"""
import json
import os
import urllib.request

import boto3  # noqa: F401  (the usual import of a Lambda handler; its cost is the point)


def handler(event, context):
    url = event.get("url") or os.environ["CARPOOL_WAIT_URL"]
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read()
    return {"status": 200, "bytes": len(body), "pid": os.getpid(), "echo": json.loads(body or b"{}")}
