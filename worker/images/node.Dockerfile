# An existing Node.js Lambda function as carpool task code, unchanged (see "Existing Lambda
# handlers, unchanged" in the README): AWS's Node.js base image, aws-lambda-ric (AWS's
# runtime interface client, whose native part is built in a first stage), the function's
# code where Lambda keeps it, and carpool-worker as the entrypoint.
#
# Build context: a directory with the static carpool-worker (scripts/worker-image leaves it
# in target/worker-image/) and the function's index.js and package.json:
#
#   podman build -f worker/images/node.Dockerfile -t thumbs-worker CONTEXT
FROM public.ecr.aws/lambda/nodejs:20 AS ric
RUN dnf install -y cmake make gcc-c++ autoconf automake libtool tar gzip && dnf clean all
WORKDIR /opt/ric
RUN npm install --no-audit --no-fund "aws-lambda-ric@3.3.0"

FROM public.ecr.aws/lambda/nodejs:20
COPY --from=ric /opt/ric/node_modules /opt/ric/node_modules
COPY package.json ${LAMBDA_TASK_ROOT}/
RUN cd ${LAMBDA_TASK_ROOT} && npm install --omit=dev --no-audit --no-fund
COPY index.js ${LAMBDA_TASK_ROOT}/
COPY carpool-worker /usr/local/bin/carpool-worker
WORKDIR ${LAMBDA_TASK_ROOT}
# What each copy runs; an event's "runtime" (the coordinator's --runtime NAME=COMMAND)
# overrides it.
ENV CARPOOL_RUNTIME="node /opt/ric/node_modules/aws-lambda-ric/bin/index.mjs index.handler"
ENTRYPOINT ["/usr/local/bin/carpool-worker"]
