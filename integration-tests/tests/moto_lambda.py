"""Helper for tests/lambda.rs against a moto server (AWS's API emulated, Docker off).

  moto_lambda.py record URL           start recording requests
  moto_lambda.py setup URL FUNCTION   turn Docker off (moto then accepts every Invoke, even of an
                                      unknown function), create a role and FUNCTION
  moto_lambda.py invocations URL      print each recorded Invoke as one JSON line:
                                      {"function", "qualifier", "invocation_type", "event"}
  moto_lambda.py versions URL FUNCTION
                                      print each version of FUNCTION as one JSON line:
                                      {"version", "memory", "description"}
"""

import base64
import io
import json
import sys
import urllib.parse
import urllib.request
import zipfile

import boto3


def post(url, body=b""):
    req = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read()


def setup(url, function):
    post(url + "/moto-api/config", json.dumps({"lambda": {"use_docker": False}}).encode())
    kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
    role = boto3.client("iam", **kw).create_role(RoleName="carpool-worker", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("bootstrap", "#!/bin/sh\n")
    boto3.client("lambda", **kw).create_function(
        FunctionName=function, Runtime="provided.al2023", Role=role, Handler="bootstrap",
        Code={"ZipFile": code.getvalue()}, MemorySize=2048, Timeout=900)


def client(url):
    return boto3.client("lambda", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def versions(url, function):
    for v in client(url).list_versions_by_function(FunctionName=function)["Versions"]:
        print(json.dumps({"version": v["Version"], "memory": v.get("MemorySize"),
                          "description": v.get("Description", "")}))


def invocations(url):
    with urllib.request.urlopen(url + "/moto-api/recorder/download-recording", timeout=30) as r:
        lines = r.read().decode().splitlines()
    for line in lines:
        if not line.strip():
            continue
        rec = json.loads(line)
        path = rec.get("url", "")
        if "/invocations" not in path:
            continue
        body = rec.get("body") or ""
        if rec.get("body_encoded"):
            body = base64.b64decode(body).decode()
        headers = {k.lower(): v for k, v in rec.get("headers", {}).items()}
        print(json.dumps({
            "function": path.split("/functions/")[1].split("/")[0],
            "qualifier": urllib.parse.parse_qs(urllib.parse.urlparse(path).query).get("Qualifier", [None])[0],
            "invocation_type": headers.get("x-amz-invocation-type", ""),
            "sdk_request": headers.get("amz-sdk-request", ""),
            "event": json.loads(body) if body else None,
        }))


if __name__ == "__main__":
    if sys.argv[1] == "record":
        post(sys.argv[2] + "/moto-api/recorder/start-recording")
    elif sys.argv[1] == "setup":
        setup(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "invocations":
        invocations(sys.argv[2])
    elif sys.argv[1] == "versions":
        versions(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: moto_lambda.py record URL | setup URL FUNCTION | invocations URL | versions URL FUNCTION")
