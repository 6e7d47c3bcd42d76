// A Lambda handler as users write them, unchanged: carpool runs it under AWS's
// aws-lambda-ric. The event is the task's payload; the return value is its output.

// Module state lives across the invocations of one runtime process, as on Lambda.
let invocations = 0;

exports.handler = async (event, context) => {
  invocations += 1;
  if (event.action === "raise") throw new TypeError(`cannot handle n=${event.n}`);
  if (event.action === "exit") {
    process.stderr.write(`giving up on n=${event.n}\n`);
    process.exit(3);
  }
  if (event.action === "sleep") await new Promise((r) => setTimeout(r, event.seconds * 1000));
  return {
    n: event.n,
    square: event.n * event.n,
    pid: process.pid,
    invocation: invocations,
    request_id: context.awsRequestId,
    function: context.functionName,
    remaining_ms: context.getRemainingTimeInMillis(),
  };
};
