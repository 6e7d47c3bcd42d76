"""A Lambda handler as users write them, unchanged: carpool runs it under AWS's awslambdaric.

The event is the task's payload; the return value is its output. `action` makes it fail
in each way the tests need: raise, exit mid-task, or sleep past the task's timeout.
"""
import os
import sys
import time

# Module state lives across the invocations of one runtime process, as on Lambda.
INVOCATIONS = 0


def handler(event, context):
    global INVOCATIONS
    INVOCATIONS += 1
    action = event.get("action")
    if action == "raise":
        raise ValueError(f"cannot handle n={event['n']}")
    if action == "exit":
        print(f"giving up on n={event['n']}", file=sys.stderr, flush=True)
        os._exit(3)
    if action == "sleep":
        time.sleep(event["seconds"])
    return {
        "n": event["n"],
        "square": event["n"] ** 2,
        "pid": os.getpid(),
        "invocation": INVOCATIONS,
        "request_id": context.aws_request_id,
        "function": context.function_name,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }
