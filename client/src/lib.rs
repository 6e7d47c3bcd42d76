//! carpool's Rust client: the library other programs link to submit work to a coordinator
//! and read results, workers and stats. It depends on the contract, tonic and tokio only;
//! the `carpool` command-line tool is the `carpool-cli` crate.
//!
//! [`Client`]: connect, submit, run, get, cancel, watch, `map` over a stream of payloads,
//! workers and stats.

use carpool_proto::pb::{self, cluster_client::ClusterClient, tasks_client::TasksClient};
use carpool_proto::{Bearer, Bytes, DialError, Secret, TlsOptions, payload};
use futures::{Stream, StreamExt};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// How long a probe of one coordinator of a list may take before the next is tried.
const PROBE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

pub use carpool_proto::pb::{MapResponse, StatsResponse, TaskInfo, TaskResult, TaskState, WorkerInfo};

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The coordinator could not be dialed (a bad URL, or no answer).
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The token cannot be sent as a header.
    #[error("invalid token: {0}")]
    BadToken(String),
    /// The coordinator answered with an error status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
}

/// Result with the client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to reach a coordinator beyond its URL.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// The client token, if the coordinator requires one.
    pub token: Option<Secret>,
    /// TLS settings for an `https://` URL.
    pub tls: TlsOptions,
}

type Authed = InterceptedService<Channel, Bearer>;

/// A connection to a coordinator; cheap to clone (one HTTP/2 channel underneath).
#[derive(Clone, Debug)]
pub struct Client {
    tasks: TasksClient<Authed>,
    cluster: ClusterClient<Authed>,
}

impl Client {
    /// Connects to `url`, e.g. `http://127.0.0.1:50051` (or `https://…`), with HTTP/2
    /// keepalive on.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &ConnectOptions::default()).await
    }

    /// Connects with a token (and, later, other options). `url` may name several
    /// coordinators, comma-separated (an active one and its standbys): the first that
    /// answers as active is used (a standby answers UNAVAILABLE).
    pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Self> {
        let urls = carpool_proto::coordinator_urls(url);
        if let [one] = urls[..] {
            return Self::connect_one(one, options).await;
        }
        let mut last = None;
        for one in urls {
            let client = match Self::connect_one(one, options).await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            // A coordinator that accepted the connection but does not answer (frozen) must
            // not hold the others up: each probe has a deadline.
            let mut cluster = client.cluster.clone();
            let probe = cluster.stats(pb::StatsRequest::default());
            match tokio::time::timeout(PROBE_DEADLINE, probe).await {
                Ok(Ok(_)) => return Ok(client),
                Ok(Err(status)) => last = Some(Error::Status(status)),
                Err(_) => {
                    last = Some(Error::Dial(DialError::Connect(
                        one.to_owned(),
                        format!("no answer within {} s", PROBE_DEADLINE.as_secs()),
                    )))
                }
            }
        }
        Err(last.unwrap_or_else(|| DialError::BadUrl(url.to_owned(), "no URL".into()).into()))
    }

    async fn connect_one(url: &str, options: &ConnectOptions) -> Result<Self> {
        let channel = carpool_proto::dial(url, &options.tls, |e| e).await?;
        Self::from_channel(channel, options.token.as_ref())
    }

    /// A client over an existing channel.
    pub fn from_channel(channel: Channel, token: Option<&Secret>) -> Result<Self> {
        let bearer = Bearer::new(token).map_err(Error::BadToken)?;
        Ok(Self {
            tasks: TasksClient::with_interceptor(channel.clone(), bearer.clone())
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
            cluster: ClusterClient::with_interceptor(channel, bearer),
        })
    }

    /// Submits one task; returns its id at once.
    pub async fn submit(&self, function: &str, input: impl Into<Bytes>) -> Result<u64> {
        let req = submit_request(function, input.into());
        Ok(self.tasks.clone().submit(req).await?.into_inner().task_id)
    }

    /// Submits a fully specified request (per-task timeout, idempotency key); returns the id.
    pub async fn submit_request(&self, request: pb::SubmitRequest) -> Result<u64> {
        Ok(self.tasks.clone().submit(request).await?.into_inner().task_id)
    }

    /// Submits one task and waits for its result.
    pub async fn run(&self, function: &str, input: impl Into<Bytes>) -> Result<TaskResult> {
        let req = submit_request(function, input.into());
        Ok(self.tasks.clone().run(req).await?.into_inner())
    }

    /// Runs a fully specified request (per-task timeout, idempotency key) and waits for
    /// its result.
    pub async fn run_request(&self, request: pb::SubmitRequest) -> Result<TaskResult> {
        Ok(self.tasks.clone().run(request).await?.into_inner())
    }

    /// A request for `function` with `input` and a per-attempt `timeout` (`None`: the
    /// coordinator's default), for [`Client::submit_request`] and [`Client::run_request`].
    pub fn request(
        function: &str,
        input: impl Into<Bytes>,
        timeout: Option<std::time::Duration>,
    ) -> pb::SubmitRequest {
        pb::SubmitRequest {
            timeout_ms: millis(timeout),
            ..submit_request(function, input.into())
        }
    }

    /// A task's state, attempts, worker and timings.
    pub async fn get(&self, task_id: u64) -> Result<TaskInfo> {
        Ok(self
            .tasks
            .clone()
            .get(pb::GetRequest { task_id })
            .await?
            .into_inner())
    }

    /// Cancels a task; returns its state afterwards.
    pub async fn cancel(&self, task_id: u64) -> Result<TaskState> {
        self.cancel_request(pb::CancelRequest {
            task_id,
            ..Default::default()
        })
        .await
    }

    /// Cancels the task submitted with idempotency key `key` (how a Map caller, which
    /// learns ids only with results, cancels one); returns its state afterwards.
    pub async fn cancel_by_key(&self, key: &str) -> Result<TaskState> {
        self.cancel_request(pb::CancelRequest {
            idempotency_key: key.to_owned(),
            ..Default::default()
        })
        .await
    }

    async fn cancel_request(&self, req: pb::CancelRequest) -> Result<TaskState> {
        Ok(self.tasks.clone().cancel(req).await?.into_inner().state())
    }

    /// The results of `task_ids`, as each finishes.
    pub async fn watch(&self, task_ids: Vec<u64>) -> Result<impl Stream<Item = Result<TaskResult>>> {
        let stream = self
            .tasks
            .clone()
            .watch(pb::WatchRequest { task_ids })
            .await?
            .into_inner();
        Ok(stream.map(|r| r.map_err(Error::from)))
    }

    /// Runs every payload of `inputs` as a task of `function` over one streaming call and
    /// yields the results as they finish (each tagged with its input's position in `seq`).
    pub async fn map<S>(
        &self,
        function: &str,
        inputs: S,
    ) -> Result<impl Stream<Item = Result<MapResponse>> + use<S>>
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        self.map_with(function, inputs, MapOptions::default()).await
    }

    /// [`Client::map`] with options for the whole call (a budget in dollars).
    pub async fn map_with<S>(
        &self,
        function: &str,
        inputs: S,
        options: MapOptions,
    ) -> Result<impl Stream<Item = Result<MapResponse>> + use<S>>
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let function = function.to_owned();
        // What is ready goes at once, in batches bounded by count and bytes: no waiting
        // for more, so one task at a time is as quick as before.
        let requests = inputs
            .enumerate()
            .ready_chunks(MAP_BATCH_ITEMS)
            .flat_map(|chunk| {
                futures::stream::iter(carpool_proto::split_by_size(chunk, MAP_BATCH_BYTES, |(_, b)| {
                    b.len()
                }))
            })
            .enumerate()
            .map(move |(n, batch)| pb::MapRequest {
                // The first message names the function and carries the call's options;
                // the rest inherit them.
                function: if n == 0 { function.clone() } else { String::new() },
                budget_usd: if n == 0 {
                    options.budget_usd.unwrap_or(0.0)
                } else {
                    0.0
                },
                deadline_ms: if n == 0 { millis(options.deadline) } else { 0 },
                tasks: batch
                    .into_iter()
                    .map(|(i, bytes)| pb::MapTask {
                        input: Some(binary_or_text(bytes)),
                        seq: i as u64,
                        timeout_ms: millis(options.timeout),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            });
        let stream = self.tasks.clone().map(requests).await?.into_inner();
        Ok(stream.flat_map(|r| futures::stream::iter(one_by_one(r))))
    }

    /// Workers connected or starting, optionally of one function.
    pub async fn workers(&self, function: &str) -> Result<Vec<WorkerInfo>> {
        let req = pb::ListWorkersRequest {
            function: function.to_owned(),
        };
        Ok(self.cluster.clone().list_workers(req).await?.into_inner().workers)
    }

    /// Counters and the bill.
    pub async fn stats(&self) -> Result<StatsResponse> {
        Ok(self
            .cluster
            .clone()
            .stats(pb::StatsRequest {})
            .await?
            .into_inner())
    }

    /// Forgets what the coordinator learned of `function` (its concurrency level and what
    /// each memory size cost, at every size), once its journal holds that: for a handler
    /// that changed. How many sizes' levels and costs were forgotten.
    pub async fn relearn(&self, function: &str) -> Result<pb::RelearnResponse> {
        Ok(self
            .cluster
            .clone()
            .relearn(pb::RelearnRequest {
                function: function.to_owned(),
            })
            .await?
            .into_inner())
    }
}

/// Most submissions [`Client::map`] puts in one message...
const MAP_BATCH_ITEMS: usize = 1024;

/// ...and most payload bytes (one always goes, whatever its size), well under the
/// coordinator's message limit.
const MAP_BATCH_BYTES: usize = 1 << 20;

/// A Map answer as one [`MapResponse`] per result, whether it came alone or in a batch.
fn one_by_one(r: Result<MapResponse, tonic::Status>) -> Vec<Result<MapResponse>> {
    match r {
        Ok(resp) if resp.results.is_empty() => vec![Ok(resp)],
        Ok(resp) => resp.results.into_iter().map(|r| Ok(r.into())).collect(),
        Err(e) => vec![Err(e.into())],
    }
}

/// What a Map call may carry besides its tasks.
#[derive(Clone, Debug, Default)]
pub struct MapOptions {
    /// The most the call's tasks may cost, US dollars: past it the coordinator cancels the
    /// call's pending tasks and rejects new ones with `RESOURCE_EXHAUSTED`.
    pub budget_usd: Option<f64>,
    /// Finish every task within this of the call's start: a task that cannot, by what the
    /// coordinator has measured, is rejected with `FAILED_PRECONDITION`.
    pub deadline: Option<std::time::Duration>,
    /// Every task's own timeout (`MapTask.timeout_ms`): the longest one attempt may run. A
    /// task known to end within it is also admitted late in a worker's life, where it fits.
    pub timeout: Option<std::time::Duration>,
}

/// A duration as the whole milliseconds a request carries (at least 1; `None`: 0, none).
pub fn millis(d: Option<std::time::Duration>) -> u64 {
    d.map_or(0, |t| t.as_millis().clamp(1, u128::from(u64::MAX)) as u64)
}

fn submit_request(function: &str, input: Bytes) -> pb::SubmitRequest {
    pb::SubmitRequest {
        function: function.to_owned(),
        input: Some(binary_or_text(input)),
        ..Default::default()
    }
}

/// Text when the bytes are UTF-8 (readable in logs and grpcurl), binary otherwise.
fn binary_or_text(bytes: Bytes) -> pb::Payload {
    payload::from_bytes(bytes)
}
