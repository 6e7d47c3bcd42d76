//! Baselines measured in the same run as carpool, so that ratios hold on a noisy machine:
//! the transport's own limits (a raw tonic unary round trip and a raw bidirectional echo),
//! and the paper's design (workers polling the coordinator over HTTP at an interval).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use carpool_proto::pb::{
    self,
    workers_server::{Workers, WorkersServer},
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
/// latencies of `n` tasks, one at a time, with `workers` pollers.
pub(crate) async fn polling(interval: Duration, workers: usize, n: usize) -> Result<Samples, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let queue = Arc::new(PollQueue::default());
    let server_queue = queue.clone();
    let server = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            let q = server_queue.clone();
            tokio::spawn(serve_http(sock, q));
        }
    });
    let mut pollers = Vec::new();
    for _ in 0..workers {
        pollers.push(tokio::spawn(poller(addr, interval)));
    }
    let mut client = Http::connect(addr).await?;
    let mut s = Samples::default();
    for _ in 0..n {
        let t = Instant::now();
        client.request("POST", "/run", b"noop").await?;
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

async fn serve_http(sock: TcpStream, q: Arc<PollQueue>) {
    let mut conn = BufReader::new(sock);
    while let Ok(Some((method, path, _body))) = read_request(&mut conn).await {
        let (status, body): (&str, Vec<u8>) = match (method.as_str(), path.as_str()) {
            ("POST", "/run") => {
                let (tx, rx) = oneshot::channel();
                {
                    let mut g = q.inner.lock().unwrap_or_else(PoisonError::into_inner);
                    g.last += 1;
                    let id = g.last;
                    g.waiting.push_back(id);
                    g.done.insert(id, tx);
                }
                let _ = rx.await;
                ("200 OK", b"done".to_vec())
            }
            ("GET", "/poll") => {
                let next = q
                    .inner
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .waiting
                    .pop_front();
                match next {
                    Some(id) => ("200 OK", id.to_string().into_bytes()),
                    None => ("204 No Content", Vec::new()),
                }
            }
            ("POST", p) if p.starts_with("/result/") => {
                let id: u64 = p["/result/".len()..].parse().unwrap_or(0);
                if let Some(tx) = q
                    .inner
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .done
                    .remove(&id)
                {
                    let _ = tx.send(());
                }
                ("200 OK", Vec::new())
            }
            _ => ("404 Not Found", Vec::new()),
        };
        let mut response =
            format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        response.extend_from_slice(&body);
        if conn.get_mut().write_all(&response).await.is_err() {
            break;
        }
    }
}

async fn poller(addr: std::net::SocketAddr, interval: Duration) -> Result<(), String> {
    let mut http = Http::connect(addr).await?;
    loop {
        let (status, body) = http.request("GET", "/poll", b"").await?;
        if status == 200 {
            let id = String::from_utf8_lossy(&body).into_owned();
            http.request("POST", &format!("/result/{id}"), b"").await?;
        } else {
            tokio::time::sleep(interval).await;
        }
    }
}

/// A keep-alive HTTP/1.1 client connection.
struct Http {
    conn: BufReader<TcpStream>,
}

impl Http {
    async fn connect(addr: std::net::SocketAddr) -> Result<Self, String> {
        let sock = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        sock.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Self {
            conn: BufReader::new(sock),
        })
    }

    async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.conn
            .get_mut()
            .write_all(&request)
            .await
            .map_err(|e| e.to_string())?;
        let (status, _, body) = read_request(&mut self.conn)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("connection closed")?;
        let code = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((code, body))
    }
}

/// Reads one HTTP/1.1 message: (first word and second word of the start line joined as
/// method/status line, path, body).
async fn read_request(conn: &mut BufReader<TcpStream>) -> std::io::Result<Option<(String, String, Vec<u8>)>> {
    let mut start = String::new();
    if conn.read_line(&mut start).await? == 0 {
        return Ok(None);
    }
    let mut parts = start.split_whitespace();
    let (a, b) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).await?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("Content-Length: ") {
            length = v.parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await?;
    // For a response, `a` is the protocol and `b` the status code: report "HTTP/1.1 200".
    if a.starts_with("HTTP/") {
        return Ok(Some((format!("{a} {b}"), String::new(), body)));
    }
    Ok(Some((a, b, body)))
}
