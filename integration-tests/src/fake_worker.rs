//! A worker stream driven by the test itself, to script samples and results exactly.

use super::*;

/// A worker stream driven by the test: it says hello, then sends exactly what the test
/// tells it to.
pub struct FakeWorker {
    out: tmpsc::Sender<pb::WorkerMessage>,
    inbound: tonic::Streaming<pb::CoordinatorMessage>,
    /// The Welcome the coordinator answered with.
    pub welcome: pb::Welcome,
}

impl FakeWorker {
    /// Connects and says `hello`; panics unless a Welcome comes back.
    pub async fn connect(channel: Channel, hello: pb::Hello) -> Self {
        match Self::try_connect(
            channel,
            pb::WorkerMessage {
                kind: Some(Up::Hello(hello)),
            },
        )
        .await
        {
            Ok(w) => w,
            Err(status) => panic!("worker connect refused: {status}"),
        }
    }

    /// Opens the stream with `first` as the first message; the coordinator's refusal comes
    /// back as its status.
    pub async fn try_connect(channel: Channel, first: pb::WorkerMessage) -> Result<Self, tonic::Status> {
        Self::open(channel, Bearer::default(), first).await
    }

    /// Connects with a token and says `hello`.
    pub async fn connect_with(channel: Channel, bearer: Bearer, hello: pb::Hello) -> Self {
        let first = pb::WorkerMessage {
            kind: Some(Up::Hello(hello)),
        };
        match Self::open(channel, bearer, first).await {
            Ok(w) => w,
            Err(status) => panic!("worker connect refused: {status}"),
        }
    }

    async fn open(channel: Channel, bearer: Bearer, first: pb::WorkerMessage) -> Result<Self, tonic::Status> {
        let (out, rx) = tmpsc::channel(64);
        out.send(first)
            .await
            .map_err(|_| tonic::Status::internal("send"))?;
        let mut inbound = WorkersClient::with_interceptor(channel, bearer)
            .connect(ReceiverStream::new(rx))
            .await?
            .into_inner();
        match inbound.message().await? {
            Some(pb::CoordinatorMessage {
                kind: Some(Down::Welcome(welcome)),
            }) => Ok(Self {
                out,
                inbound,
                welcome,
            }),
            other => Err(tonic::Status::internal(format!(
                "expected a welcome, got {other:?}"
            ))),
        }
    }

    /// Sends one message.
    pub async fn send(&self, kind: Up) {
        self.out
            .send(pb::WorkerMessage { kind: Some(kind) })
            .await
            .unwrap_or_else(|_| panic!("fake worker stream closed"));
    }

    /// Sends a sample.
    pub async fn sample(&self, cpu: f64, running: u32) {
        self.send(Up::Sample(pb::ResourceSample {
            cpu,
            memory_used_bytes: 100 << 20,
            memory_limit_bytes: 2048 << 20,
            running_tasks: running,
            ..Default::default()
        }))
        .await;
    }

    /// Reports one task as done with `output`.
    pub async fn finish(&self, task: &pb::TaskAssignment, output: &str) {
        self.send(Up::Results(pb::TaskResults {
            results: vec![pb::WorkerTaskResult {
                task_id: task.task_id,
                attempt: task.attempt,
                outcome: Some(pb::worker_task_result::Outcome::Output(
                    output.as_bytes().to_vec().into(),
                )),
                started_unix_ms: 1,
                finished_unix_ms: 2,
                duration_us: 1000,
            }],
        }))
        .await;
    }

    /// The next message from the coordinator within `within`, or `None` if none came.
    pub async fn next_within(&mut self, within: Duration) -> Option<Down> {
        match tokio::time::timeout(within, self.inbound.message()).await {
            Ok(Ok(Some(m))) => m.kind,
            Ok(Ok(None)) => None,
            Ok(Err(status)) => panic!("coordinator ended the worker stream: {status}"),
            Err(_) => None,
        }
    }

    /// Waits for the coordinator to end this stream with an error status, skipping any
    /// messages before it.
    pub async fn next_status(&mut self) -> tonic::Status {
        loop {
            match tokio::time::timeout(WAIT, self.inbound.message()).await {
                Ok(Err(status)) => return status,
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => panic!("the stream ended without an error status"),
                Err(_) => panic!("no error status within {WAIT:?}"),
            }
        }
    }

    /// The next message, which must come within [`WAIT`].
    pub async fn next(&mut self) -> Down {
        self.next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("no message from the coordinator within {WAIT:?}"))
    }

    /// The next message, which must be an assignment; returns its tasks.
    pub async fn expect_assign(&mut self) -> Vec<pb::TaskAssignment> {
        match self.next().await {
            Down::Assign(a) => a.tasks,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }
}
