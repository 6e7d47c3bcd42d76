//! The Lambda spawner: each worker is one asynchronous invocation (`InvocationType=Event`)
//! of a Lambda function whose code is a carpool worker. The event
//! ([`carpool_proto::lambda::WorkerEvent`]) tells it where to dial back, and as whom.
//!
//! - The SDK's own retries are off; [`invoke_with_retries`] retries exactly what may
//!   succeed on a second try (throttling, Lambda service errors, a transport failure) with
//!   exponential backoff and jitter, and never a function error or a client error, so one
//!   spawn is at most one invocation unless Lambda itself asked for a retry.
//! - Invoke calls run in their own tasks: scheduling never waits on them. AWS answers an
//!   Event invocation with 202 at once; some emulators answer 200 only when the function
//!   returns, which is accepted too (the worker has connected long before).
//! - A spawn that fails for good is reported to the state, which releases its capacity,
//!   counts it in Stats (`spawn_failures`, `last_spawn_error`) and tries again after a
//!   backoff. A worker that was invoked but never says hello is written off after
//!   `--start-timeout` by the state's sweep.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use aws_sdk_lambda::Client;
use aws_sdk_lambda::config::http::HttpResponse;
use aws_sdk_lambda::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::operation::RequestId;
use aws_sdk_lambda::operation::invoke::{InvokeError, InvokeOutput};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use carpool_proto::lambda::WorkerEvent;
use tracing::{info, warn};

use super::{SpawnContext, Spawner};
use crate::config::{Config, LambdaTarget};
use crate::error::{Error, Result};
use crate::state::{SpawnOutcome, SpawnRequest};

/// First wait between invoke attempts; doubled per attempt, with up to 100 % jitter.
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(200);
/// Longest wait between invoke attempts.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);

/// Error codes after which the same Invoke may succeed.
const RETRYABLE_CODES: [&str; 4] = [
    "TooManyRequestsException",
    "ServiceException",
    "ResourceNotReadyException",
    "EC2ThrottledException",
];

/// Starts workers as Lambda invocations.
#[derive(Debug)]
pub(crate) struct LambdaSpawner {
    /// The Lambda client (SDK retries off: [`invoke_with_retries`] decides).
    client: Client,
    /// The function (and qualifier) whose invocations are the workers.
    target: LambdaTarget,
    /// The qualifier each memory size is invoked with (`--lambda-size`,
    /// `--lambda-publish-sizes`); a size without one uses the target's.
    qualifiers: BTreeMap<u32, String>,
    /// The URL the workers dial, carried in each event.
    coordinator_url: String,
    /// The worker token, carried in each event.
    token: Option<crate::auth::Secret>,
    /// `--slots`, carried in each event.
    slots: Option<u32>,
    /// `--runtime` functions: the one an invocation serves is carried in its event.
    runtimes: Vec<(String, String)>,
    /// Where outcomes are reported.
    context: SpawnContext,
}

impl LambdaSpawner {
    /// A spawner for `config.lambda`, whose workers dial `config.listen.advertise_url` (or
    /// `listen_url`, the listen address, for workers on this machine such as an emulator's).
    /// Region and credentials come from aws-config's default chain (environment, profile,
    /// instance role), and the endpoint from `AWS_ENDPOINT_URL_LAMBDA` / `AWS_ENDPOINT_URL`
    /// if set.
    pub(crate) async fn new(config: &Config, listen_url: String, context: SpawnContext) -> Result<Self> {
        let target = config.lambda.clone();
        if target.function_name.trim().is_empty() {
            return Err(Error::LambdaConfig(
                "no function to invoke: pass --lambda-function NAME (or CARPOOL_LAMBDA_FUNCTION)".into(),
            ));
        }
        let coordinator_url = match &config.listen.advertise_url {
            Some(url) => url.clone(),
            None => {
                warn!(url = %listen_url, "no --advertise-url: Lambda workers will dial the listen address, which only workers on this machine can reach");
                listen_url
            }
        };
        if !carpool_proto::is_http_url(&coordinator_url) {
            return Err(Error::LambdaConfig(format!(
                "--advertise-url {coordinator_url:?} is not an http:// or https:// URL"
            )));
        }
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(carpool_proto::aws_https_client())
            .load()
            .await;
        if sdk.region().is_none() {
            return Err(Error::LambdaConfig(
                "no AWS region: set AWS_REGION (or a profile's region)".into(),
            ));
        }
        let lambda_config = aws_sdk_lambda::config::Builder::from(&sdk)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        let client = Client::from_conf(lambda_config);
        let qualifiers = super::versions::qualifiers(&client, &target, &config.fleet.sizes()).await?;
        info!(function = %target.function_name, qualifier = ?target.qualifier, sizes = ?qualifiers, url = %coordinator_url, "lambda spawner ready");
        Ok(Self {
            client,
            target,
            qualifiers,
            coordinator_url,
            token: config.listen.worker_token.clone(),
            slots: config.fleet.slots,
            runtimes: config.functions.runtime.clone(),
            context,
        })
    }

    fn event(&self, request: &SpawnRequest) -> WorkerEvent {
        WorkerEvent {
            coordinator_url: self.coordinator_url.clone(),
            worker_id: request.id.to_string(),
            function: request.function.to_string(),
            token: self.token.as_ref().map(|t| t.expose().to_owned()),
            slots: self.slots,
            tls_domain: None,
            runtime: self
                .runtimes
                .iter()
                .find(|(n, _)| n == request.function.as_ref())
                .map(|(_, cmd)| cmd.clone()),
        }
    }
}

impl Spawner for LambdaSpawner {
    fn spawn(&self, request: SpawnRequest) {
        let payload = serde_json::to_vec(&self.event(&request));
        let client = self.client.clone();
        let target = self.target.clone();
        let qualifier = self
            .qualifiers
            .get(&request.memory_mb)
            .cloned()
            .or_else(|| target.qualifier.clone());
        let context = self.context.clone();
        let stop = context.stop.clone();
        self.context.tracker.spawn(async move {
            let id = request.id;
            let payload = match payload {
                Ok(p) => p,
                Err(e) => {
                    let reason = format!("could not encode the worker event: {e}");
                    context.report(SpawnOutcome::Failed { id, reason }).await;
                    return;
                }
            };
            let invoke = || {
                client
                    .invoke()
                    .function_name(&target.function_name)
                    .set_qualifier(qualifier.clone())
                    .invocation_type(InvocationType::Event)
                    .payload(Blob::new(payload.clone()))
                    .send()
            };
            let attempt = |n| {
                let call = invoke();
                let id = id.clone();
                async move {
                    let outcome = classify(call.await);
                    if let Attempt::Retry(reason) = &outcome {
                        warn!(worker = %id, attempt = n, reason, "invoke failed; retrying");
                    }
                    outcome
                }
            };
            let outcome = tokio::select! {
                outcome = invoke_with_retries(target.invoke_attempts, attempt) => outcome,
                // An emulator may hold an Event invoke until the function returns: at
                // shutdown, stop waiting for that answer.
                () = stop.cancelled() => return,
            };
            match outcome {
                Ok(request_id) => {
                    info!(worker = %id, function = %target.function_name, qualifier = ?qualifier, memory_mb = request.memory_mb, request_id, "invoked");
                    let instance = format!("lambda request {request_id}");
                    context.report(SpawnOutcome::Started { id, instance }).await;
                }
                Err(reason) => {
                    let reason = format!("invoking {} failed: {reason}", target.function_name);
                    // A no-op for a worker that has connected in the meantime.
                    context.report(SpawnOutcome::Failed { id, reason }).await;
                }
            }
        });
    }
}

/// What one Invoke call's outcome calls for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// Accepted; carries the request id (empty if the answer had none).
    Accepted(String),
    /// May succeed if tried again (throttled, Lambda service error, transport failure).
    Retry(String),
    /// Will not succeed (unknown function, no permission, a function error, bad request).
    Fail(String),
}

/// Classifies an Invoke call's outcome for the retry policy.
pub(crate) fn classify(
    result: std::result::Result<InvokeOutput, SdkError<InvokeError, HttpResponse>>,
) -> Attempt {
    match result {
        Ok(out) => {
            // AWS never reports a function error for an Event invocation; a synchronous
            // emulator does, and the invocation did run: not a spawn to repeat.
            if let Some(kind) = out.function_error() {
                let body = out
                    .payload()
                    .map(|p| String::from_utf8_lossy(p.as_ref()).into_owned())
                    .unwrap_or_default();
                return Attempt::Fail(format!("the function failed ({kind}): {body}"));
            }
            Attempt::Accepted(out.request_id().unwrap_or_default().to_owned())
        }
        Err(SdkError::ServiceError(e)) => {
            let status = e.raw().status().as_u16();
            let err = e.err();
            let code = err.code().unwrap_or("");
            let message = err.message().unwrap_or("");
            let reason = if code.is_empty() {
                // No Lambda error code (an emulator's function error): the body says what failed.
                let body = e
                    .raw()
                    .body()
                    .bytes()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                let detail = if message.is_empty() { body.trim() } else { message };
                let detail: String = detail.chars().take(300).collect();
                format!("HTTP {status} {detail}").trim_end().to_owned()
            } else {
                format!("{code} (HTTP {status}): {message}")
                    .trim_end_matches([':', ' '])
                    .to_owned()
            };
            // 500 without a Lambda error code is a function error reported by an emulator.
            if RETRYABLE_CODES.contains(&code) || (code.is_empty() && matches!(status, 429 | 502 | 503 | 504))
            {
                Attempt::Retry(reason)
            } else {
                Attempt::Fail(reason)
            }
        }
        Err(SdkError::TimeoutError(_)) => Attempt::Retry("the request timed out".into()),
        Err(SdkError::DispatchFailure(e)) => {
            let reason = format!("the request could not be sent: {:?}", e.as_connector_error());
            if e.is_io() || e.is_timeout() {
                Attempt::Retry(reason)
            } else {
                Attempt::Fail(reason)
            }
        }
        Err(other) => Attempt::Fail(format!("{}", aws_sdk_lambda::error::DisplayErrorContext(&other))),
    }
}

/// Calls `attempt(n)` for n = 1, 2, … until it is accepted, fails for good, or `attempts`
/// tries are spent, sleeping with exponential backoff and jitter between retries. Returns
/// the request id or the last reason.
pub(crate) async fn invoke_with_retries<F, Fut>(
    attempts: u32,
    mut attempt: F,
) -> std::result::Result<String, String>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Attempt>,
{
    let attempts = attempts.max(1);
    let mut waits = retry_waits(attempts);
    let mut n = 1;
    loop {
        match attempt(n).await {
            Attempt::Accepted(request_id) => return Ok(request_id),
            Attempt::Fail(reason) => return Err(reason),
            Attempt::Retry(reason) => match waits.next() {
                Some(wait) => {
                    tokio::time::sleep(wait).await;
                    n += 1;
                }
                None => return Err(format!("{reason} (gave up after {attempts} attempts)")),
            },
        }
    }
}

/// The waits between `attempts` tries: 200 ms doubled per attempt, capped at 10 s, each
/// with up to 100 % random jitter so that throttled spawns do not come back in step.
fn retry_waits(attempts: u32) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(FIRST_RETRY_WAIT)
        .with_max_delay(MAX_RETRY_WAIT)
        .with_jitter()
        .with_max_times(attempts.saturating_sub(1) as usize)
        .build()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use aws_sdk_lambda::primitives::SdkBody;
    use aws_sdk_lambda::types::error::{ResourceNotFoundException, TooManyRequestsException};

    use super::*;

    fn service_error(err: InvokeError, status: u16) -> SdkError<InvokeError, HttpResponse> {
        let status = aws_sdk_lambda::config::http::HttpResponse::new(
            status
                .try_into()
                .unwrap_or_else(|_| 500u16.try_into().unwrap_or_else(|_| unreachable!())),
            SdkBody::empty(),
        );
        SdkError::service_error(err, status)
    }

    fn throttled() -> SdkError<InvokeError, HttpResponse> {
        let e = TooManyRequestsException::builder()
            .message("Rate Exceeded.")
            .meta(
                aws_sdk_lambda::error::ErrorMetadata::builder()
                    .code("TooManyRequestsException")
                    .build(),
            )
            .build();
        service_error(InvokeError::TooManyRequestsException(e), 429)
    }

    #[test]
    fn throttling_is_retried() {
        assert!(
            matches!(classify(Err(throttled())), Attempt::Retry(r) if r.contains("TooManyRequestsException (HTTP 429)"))
        );
    }

    #[test]
    fn an_unknown_function_is_not_retried() {
        let e = ResourceNotFoundException::builder()
            .message("Function not found: arn:aws:lambda:us-east-1:123456789012:function:nope")
            .meta(
                aws_sdk_lambda::error::ErrorMetadata::builder()
                    .code("ResourceNotFoundException")
                    .message("Function not found: arn:aws:lambda:us-east-1:123456789012:function:nope")
                    .build(),
            )
            .build();
        let got = classify(Err(service_error(InvokeError::ResourceNotFoundException(e), 404)));
        assert!(
            matches!(got, Attempt::Fail(ref r) if r.contains("Function not found")),
            "{got:?}"
        );
    }

    #[test]
    fn a_function_error_is_not_retried() {
        // What an emulator that runs Event invocations synchronously answers for a handler
        // error: 500 with no Lambda error code.
        let unhandled = InvokeError::generic(
            aws_sdk_lambda::error::ErrorMetadata::builder()
                .message("boom")
                .build(),
        );
        assert!(matches!(
            classify(Err(service_error(unhandled, 500))),
            Attempt::Fail(_)
        ));
        let out = InvokeOutput::builder()
            .status_code(200)
            .function_error("Unhandled")
            .payload(Blob::new("{\"errorMessage\":\"boom\"}"))
            .build();
        assert!(matches!(classify(Ok(out)), Attempt::Fail(r) if r.contains("boom")));
    }

    #[test]
    fn a_gateway_error_without_a_code_is_retried() {
        let unhandled = InvokeError::generic(aws_sdk_lambda::error::ErrorMetadata::builder().build());
        assert!(matches!(
            classify(Err(service_error(unhandled, 503))),
            Attempt::Retry(_)
        ));
    }

    #[test]
    fn accepted_event_invocations_pass() {
        for status in [200, 202] {
            let out = InvokeOutput::builder().status_code(status).build();
            assert_eq!(classify(Ok(out)), Attempt::Accepted(String::new()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_success_and_at_the_limit() {
        let calls = AtomicU32::new(0);
        let got = invoke_with_retries(5, |n| {
            calls.fetch_add(1, Ordering::Relaxed);
            async move {
                if n < 3 {
                    classify(Err(throttled()))
                } else {
                    Attempt::Accepted("req-1".into())
                }
            }
        })
        .await;
        assert_eq!(got, Ok("req-1".into()));
        assert_eq!(calls.load(Ordering::Relaxed), 3);

        let calls = AtomicU32::new(0);
        let got = invoke_with_retries(4, |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { classify(Err(throttled())) }
        })
        .await;
        assert_eq!(calls.load(Ordering::Relaxed), 4);
        assert!(matches!(got, Err(r) if r.contains("gave up after 4 attempts")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_tried_once() {
        let calls = AtomicU32::new(0);
        let got = invoke_with_retries(5, |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Attempt::Fail("ResourceNotFoundException".into()) }
        })
        .await;
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(got.is_err());
    }

    #[test]
    fn waits_grow_are_capped_and_end_with_the_attempts() {
        let waits: Vec<Duration> = retry_waits(30).collect();
        assert_eq!(waits.len(), 29, "one wait between each two of 30 attempts");
        assert!(waits[0] >= FIRST_RETRY_WAIT && waits[0] < FIRST_RETRY_WAIT * 2);
        assert!(waits[2] >= FIRST_RETRY_WAIT * 4);
        assert!(waits.iter().all(|w| *w <= MAX_RETRY_WAIT * 2));
        assert_eq!(retry_waits(1).count(), 0, "a single attempt has no wait");
    }
}
