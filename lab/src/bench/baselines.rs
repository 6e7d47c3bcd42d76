//! Baselines measured in the same run as carpool, so that ratios hold on a noisy machine:
//! the transport's own limits (a raw tonic unary round trip and a raw bidirectional echo),
//! and the paper's design (workers polling the coordinator over HTTP at an interval).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use carpool_proto::Bytes;
use carpool_proto::pb::{
    self,
    workers_server::{Workers, WorkersServer},
};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use super::stats::Samples;

/// Serves grpc.health (unary) and an echoing Workers stream on a free loopback port.
pub(crate) async fn raw_server() -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(health)
            .add_service(WorkersServer::new(Echo))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok(format!("http://{addr}"))
}

/// Answers every worker message with one coordinator message: the transport alone.
struct Echo;

#[tonic::async_trait]
impl Workers for Echo {
    type ConnectStream = ReceiverStream<Result<pb::CoordinatorMessage, Status>>;

    async fn connect(
        &self,
        req: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            while let Ok(Some(_)) = inbound.message().await {
                let reply = pb::CoordinatorMessage {
                    kind: Some(pb::coordinator_message::Kind::Assign(pb::Assign::default())),
                };
                if tx.send(Ok(reply)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Unary round trips, one at a time.
pub(crate) async fn unary_rtt(url: &str, n: usize) -> Result<Samples, String> {
    let channel = super::fake::channel(url).await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut s = Samples::default();
    for _ in 0..n {
        let t = Instant::now();
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|e| e.to_string())?;
        s.push(t.elapsed());
    }
    Ok(s)
}

/// Opens an echo stream on the raw server: its sender (with room for `buffer` messages)
/// and the replies.
async fn open_echo(
    url: &str,
    buffer: usize,
) -> Result<(mpsc::Sender<pb::WorkerMessage>, Streaming<pb::CoordinatorMessage>), String> {
    let channel = super::fake::channel(url).await?;
    let (tx, rx) = mpsc::channel(buffer);
    let inbound = pb::workers_client::WorkersClient::new(channel)
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    Ok((tx, inbound))
}

/// Round trips on one open bidirectional stream, one message at a time: the least any
/// exchange over a stream (a Map submission, a worker's assignment) can take here.
pub(crate) async fn bidi_rtt(url: &str, n: usize) -> Result<Samples, String> {
    let (tx, mut inbound) = open_echo(url, 1).await?;
    let mut s = Samples::default();
    for _ in 0..n {
        let t = Instant::now();
        let msg = pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Sample(pb::ResourceSample::default())),
        };
        tx.send(msg).await.map_err(|_| "echo stream closed")?;
        match inbound.message().await {
            Ok(Some(_)) => s.push(t.elapsed()),
            Ok(None) => return Err("echo stream ended".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(s)
}

/// Messages per second through one pipelined bidirectional stream.
pub(crate) async fn bidi_echo(url: &str, n: usize) -> Result<f64, String> {
    let (tx, mut inbound) = open_echo(url, 1024).await?;
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        for i in 0..n {
            let msg = pb::WorkerMessage {
                kind: Some(pb::worker_message::Kind::Sample(pb::ResourceSample {
                    running_tasks: i as u32,
                    ..Default::default()
                })),
            };
            if tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut got = 0;
    while got < n {
        match inbound.message().await {
            Ok(Some(_)) => got += 1,
            _ => break,
        }
    }
    let _ = sender.await;
    Ok(got as f64 / start.elapsed().as_secs_f64())
}

/// The paper's prototype: a coordinator with an HTTP task queue that workers poll every
/// `interval`; a client submits a task and waits for its result. Returns submit-to-result
/// latencies of `n` tasks, one at a time, with `workers` pollers. Served by axum, requested
/// over keep-alive hyper connections.
pub(crate) async fn polling(interval: Duration, workers: usize, n: usize) -> Result<Samples, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = axum::Router::new()
        .route("/run", axum::routing::post(run_task))
        .route("/poll", axum::routing::get(poll))
        .route("/result/{id}", axum::routing::post(result))
        .with_state(Arc::new(PollQueue::default()));
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut pollers = Vec::new();
    for _ in 0..workers {
        pollers.push(tokio::spawn(poller(addr, interval)));
    }
    let mut client = Http::connect(addr).await?;
    let mut s = Samples::default();
    for _ in 0..n {
        let t = Instant::now();
        client.request(Method::POST, "/run").await?;
        s.push(t.elapsed());
    }
    for p in pollers {
        p.abort();
    }
    server.abort();
    Ok(s)
}

/// The polling coordinator's state: the last id, the queue, and who waits for each task.
#[derive(Default)]
struct Queue {
    last: u64,
    waiting: VecDeque<u64>,
    done: HashMap<u64, oneshot::Sender<()>>,
}

#[derive(Default)]
struct PollQueue {
    inner: Mutex<Queue>,
}

impl PollQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A client's task: queued, answered once a poller has reported it done.
async fn run_task(State(q): State<Arc<PollQueue>>) -> &'static str {
    let (tx, rx) = oneshot::channel();
    {
        let mut g = q.lock();
        g.last += 1;
        let id = g.last;
        g.waiting.push_back(id);
        g.done.insert(id, tx);
    }
    let _ = rx.await;
    "done"
}

/// A poller asks for work: a task id, or 204 when there is none.
async fn poll(State(q): State<Arc<PollQueue>>) -> Result<String, StatusCode> {
    let next = q.lock().waiting.pop_front();
    next.map(|id| id.to_string()).ok_or(StatusCode::NO_CONTENT)
}

/// A poller reports task `id` done.
async fn result(State(q): State<Arc<PollQueue>>, Path(id): Path<u64>) -> StatusCode {
    if let Some(tx) = q.lock().done.remove(&id) {
        let _ = tx.send(());
    }
    StatusCode::OK
}

async fn poller(addr: std::net::SocketAddr, interval: Duration) -> Result<(), String> {
    let mut http = Http::connect(addr).await?;
    loop {
        let (status, body) = http.request(Method::GET, "/poll").await?;
        if status == StatusCode::OK {
            http.request(Method::POST, &format!("/result/{body}")).await?;
        } else {
            tokio::time::sleep(interval).await;
        }
    }
}

/// A keep-alive HTTP/1.1 client connection.
struct Http {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Http {
    async fn connect(addr: std::net::SocketAddr) -> Result<Self, String> {
        let sock = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        sock.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(sock))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(Self { sender })
    }

    async fn request(&mut self, method: Method, path: &str) -> Result<(StatusCode, String), String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "bench")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}
