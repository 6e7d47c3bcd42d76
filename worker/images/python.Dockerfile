# An existing Python Lambda function as carpool task code, unchanged (see "Existing Lambda
# handlers, unchanged" in the README): AWS's Python base image, awslambdaric (AWS's runtime
# interface client), the function's code where Lambda keeps it, and carpool-worker as the
# entrypoint. carpool-worker hosts the Lambda Runtime API inside the instance and runs one
# copy of the handler's runtime per task it runs at once.
#
# Build context: a directory with the static carpool-worker (scripts/worker-image leaves it
# in target/worker-image/), the function's app.py and its requirements.txt:
#
#   podman build -f worker/images/python.Dockerfile -t resize-worker CONTEXT
FROM public.ecr.aws/lambda/python:3.12
COPY requirements.txt ${LAMBDA_TASK_ROOT}/
RUN pip install --no-cache-dir "awslambdaric==4.2.2" -r ${LAMBDA_TASK_ROOT}/requirements.txt
COPY app.py ${LAMBDA_TASK_ROOT}/
COPY carpool-worker /usr/local/bin/carpool-worker
WORKDIR ${LAMBDA_TASK_ROOT}
# What each copy runs; an event's "runtime" (the coordinator's --runtime NAME=COMMAND)
# overrides it.
ENV CARPOOL_RUNTIME="python3 -m awslambdaric app.handler"
ENTRYPOINT ["/usr/local/bin/carpool-worker"]
