"""The paper's benchmark handler, as its authors ship it for AWS (SeBS' 210.thumbnailer):
Python with boto3 and Pillow. It reads a JPEG from S3, shrinks it, writes the thumbnail
back, and answers with what it wrote. Unchanged Lambda code: carpool runs it under AWS's
awslambdaric.

Its imports are the point: boto3 and Pillow take hundreds of milliseconds of CPU and tens
of megabytes before the first task, as they do in a Lambda sandbox's init.

It also reads a file it ships beside itself through LAMBDA_TASK_ROOT (as a handler reads
a model or a CSV), so the task root must be the handler's directory.
"""
import io
import json
import os
import time

import boto3
from PIL import Image

with open(os.path.join(os.environ["LAMBDA_TASK_ROOT"], "thumb_settings.json")) as f:
    SETTINGS = json.load(f)

S3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3"))


def handler(event, context):
    begin = time.monotonic()
    size = event.get("size", SETTINGS["size"])
    body = S3.get_object(Bucket=event["bucket"], Key=event["key"])["Body"].read()
    image = Image.open(io.BytesIO(body))
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=SETTINGS["quality"])
    S3.put_object(Bucket=event["bucket"], Key=event["out"], Body=out.getvalue())
    return {
        "width": image.width,
        "height": image.height,
        "bytes_in": len(body),
        "bytes_out": out.tell(),
        "pid": os.getpid(),
        "ms": round((time.monotonic() - begin) * 1000, 1),
    }
