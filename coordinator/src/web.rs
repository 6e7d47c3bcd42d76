//! The coordinator's web listener (`--metrics-listen`, its own port, never the gRPC one),
//! under the coordinator's one budget of connections and the optional bearer token:
//! - `/metrics`, in the two exposition formats (OpenMetrics for Prometheus, the classic text
//!   for `curl` and `promtool`);
//! - the dashboard: the page at `/` (its script and style at `/dashboard.js` and
//!   `/dashboard.css`, built into the binary), its live updates at `/events` (server-sent
//!   events, [`UPDATE_EVERY`]) and one frame at `/dashboard.json`.
//!
//! Every open page reads the same frame: one reading of the state per update whatever the
//! number of pages, none while no page is open beyond the history's one per update. A page
//! holds the latest frame only (one that falls behind skips to the newest), at most
//! [`MAX_PAGES`] are open at once, and a connection that takes no byte of what it is sent for
//! `--handshake-timeout` is closed.
//!
//! With a token, a browser signs in once at `/?token=…`: the answer sets a cookie holding a
//! digest of the token (never the token), sent back by the page and its event stream.

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State as Extract};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{Stream, StreamExt};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::Secret;
use crate::dashboard::{Board, Frame, Reading, Recorder, standby_frame};
use crate::driver::Driver;
use crate::metrics::{Metrics, classic};

/// The content type of the OpenMetrics exposition (what Prometheus asks for first).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic text format (what `curl` and `promtool` get).
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// How often the dashboard's figures are read and sent to every open page.
pub(crate) const UPDATE_EVERY: Duration = Duration::from_millis(500);
/// Pages open at once (event streams); one more is refused with 503.
pub(crate) const MAX_PAGES: usize = 64;
/// The cookie a signed-in browser sends.
const SESSION_COOKIE: &str = "carpool_session";

/// The page, its script and its style, built into the binary.
const PAGE: &str = include_str!("dashboard/page.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");
/// No script, style, image or connection from anywhere but this listener.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// What an active coordinator's listener serves from.
#[derive(Clone)]
pub(crate) struct Scrapes {
    pub driver: Driver,
    pub metrics: Arc<Metrics>,
    pub recorder: Arc<Recorder>,
}

/// What this coordinator is, as the listener shows it.
#[derive(Clone)]
pub(crate) enum Role {
    /// Standing by (or waiting for its database): the active coordinator's URL, empty while
    /// unknown.
    Standby(String),
    /// Active: its figures.
    Active(Scrapes),
}

/// The routes' shared state.
#[derive(Clone)]
struct App {
    role: watch::Receiver<Role>,
    token: Option<Secret>,
    /// The digest a signed-in browser's cookie holds (with a token).
    session: Option<String>,
    /// The history, shared by the updater and a page's first frame.
    board: Arc<Mutex<Board>>,
    /// The latest update, for every open page.
    frames: watch::Sender<Arc<Frame>>,
    /// Places for open pages.
    pages: Arc<Semaphore>,
}

impl App {
    fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// A frame of the figures now, with the whole history (a standby's: who is active).
    fn full_frame(&self) -> String {
        match self.role() {
            Role::Active(scrapes) => {
                let reading = reading(&scrapes);
                let board = self.board.lock().unwrap_or_else(PoisonError::into_inner);
                board.frame(&reading, &scrapes.recorder, true)
            }
            Role::Standby(active) => standby_frame(&active),
        }
    }

    /// Whether the request carries the token: as a bearer header, or as the session cookie
    /// of a browser that signed in with it.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(session) = &self.session else {
            return true;
        };
        let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if bearer.is_some() {
            return crate::auth::admits(self.token.as_ref(), bearer);
        }
        cookie(headers, SESSION_COOKIE).is_some_and(|c| bool::from(c.as_bytes().ct_eq(session.as_bytes())))
    }
}

/// Reads the state once (a Stats and a ListWorkers snapshot).
fn reading(scrapes: &Scrapes) -> Reading {
    scrapes.driver.read(|s, now| Reading {
        stats: s.stats(now),
        workers: s.list_workers("", now),
        targets: s.limit_targets(),
    })
}

/// The value of cookie `name` in the request's `cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// The session cookie's value for `token`: a digest, so the browser never holds the token.
fn session_of(token: &Secret) -> String {
    let digest = Sha256::new()
        .chain_update(b"carpool dashboard session\0")
        .chain_update(token.expose().as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves `/metrics` and the dashboard on `listener` until `stop`: each connection holds one
/// of `permits` (the coordinator's one budget of connections) while it lives, must send each
/// request head within `timeout` and is closed once it has taken nothing of what it is sent
/// for as long (a silent or slow client).
pub(crate) async fn serve(
    listener: TcpListener,
    role: watch::Receiver<Role>,
    token: Option<Secret>,
    permits: Arc<Semaphore>,
    timeout: Duration,
    stop: CancellationToken,
) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let (frames, _) = watch::channel(Arc::new(Frame::default()));
    let app = App {
        session: token.as_ref().map(session_of),
        role,
        token,
        board: Arc::default(),
        frames,
        pages: Arc::new(Semaphore::new(MAX_PAGES)),
    };
    tokio::spawn(update(app.clone(), stop.clone()));
    let router = Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(page))
        .route(
            "/dashboard.js",
            get(|| asset(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .route("/dashboard.css", get(|| asset(STYLE, "text/css; charset=utf-8")))
        .route("/dashboard.json", get(snapshot))
        .route("/events", get(events))
        .with_state(app);
    if let Some(addr) = addr {
        info!(%addr, "metrics on /metrics, the dashboard on /");
    }
    // Past the budget the connection waits for a place, as on the gRPC port.
    while let Some((stream, peer, permit)) = crate::listener::accept(&listener, &permits, &stop).await {
        let service = TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = WriteDeadline::new(stream, peer, timeout);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = connection => {
                    if let Err(e) = r {
                        debug!(%peer, error = %e, "a metrics connection ended");
                    }
                }
                () = stop.cancelled() => {}
            }
        });
    }
}

/// Every [`UPDATE_EVERY`] until `stop`: one reading of the state into the history and, while
/// a page is open, one frame for every open page (a standby's says who is active).
async fn update(app: App, stop: CancellationToken) {
    let mut every = tokio::time::interval(UPDATE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => return,
        }
        let frame = match app.role() {
            Role::Active(scrapes) => {
                let reading = reading(&scrapes);
                let mut board = app.board.lock().unwrap_or_else(PoisonError::into_inner);
                board.record(&reading);
                (app.frames.receiver_count() > 0).then(|| board.frame(&reading, &scrapes.recorder, false))
            }
            Role::Standby(active) => (app.frames.receiver_count() > 0).then(|| standby_frame(&active)),
        };
        if let Some(frame) = frame {
            app.frames.send_replace(Arc::new(frame));
        }
    }
}

fn refused(what: &str) -> Response {
    warn!(what, "refused a request without the metrics token");
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        format!("{what} needs `authorization: Bearer <token>` or a signed-in browser (--metrics-token)\n"),
    )
        .into_response()
}

async fn scrape(Extract(app): Extract<App>, headers: HeaderMap) -> Response {
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !crate::auth::admits(app.token.as_ref(), presented) {
        warn!("refused a scrape without the metrics token");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "/metrics needs `authorization: Bearer <token>` (--metrics-token)\n",
        )
            .into_response();
    }
    let scrapes = match app.role() {
        Role::Active(scrapes) => scrapes,
        Role::Standby(active) => {
            let active = if active.is_empty() {
                "unknown yet"
            } else {
                active.as_str()
            };
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("this coordinator is a standby; the active coordinator is {active}\n"),
            )
                .into_response();
        }
    };
    let (stats, held) = scrapes.driver.read(|s, now| (s.stats(now), s.held_bytes()));
    let open = scrapes.metrics.render(&stats, held);
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if wants_openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], open).into_response()
    } else {
        ([(header::CONTENT_TYPE, TEXT_FORMAT)], classic(&open)).into_response()
    }
}

/// Headers of every page and frame: never cached, never framed, no referrer.
fn page_headers(content_type: &'static str) -> [(header::HeaderName, HeaderValue); 5] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ]
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (page_headers(content_type), body).into_response()
}

/// What `/` may carry: the token, once, to sign a browser in.
#[derive(serde::Deserialize)]
struct SignIn {
    token: Option<String>,
}

async fn page(Extract(app): Extract<App>, Query(sign_in): Query<SignIn>, headers: HeaderMap) -> Response {
    if let (Some(given), Some(token), Some(session)) = (&sign_in.token, &app.token, &app.session) {
        if bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
            let cookie = format!("{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/");
            let Ok(cookie) = HeaderValue::from_str(&cookie) else {
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            };
            // Back to `/` without the token in the address bar.
            return (
                StatusCode::SEE_OTHER,
                [
                    (header::SET_COOKIE, cookie),
                    (header::LOCATION, HeaderValue::from_static("/")),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                    (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
                ],
            )
                .into_response();
        }
        warn!("refused a dashboard sign-in with a wrong token");
        return (
            StatusCode::UNAUTHORIZED,
            page_headers("text/html; charset=utf-8"),
            sign_in_page(true),
        )
            .into_response();
    }
    if !app.admits(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            page_headers("text/html; charset=utf-8"),
            sign_in_page(false),
        )
            .into_response();
    }
    (page_headers("text/html; charset=utf-8"), PAGE).into_response()
}

/// The page that asks for the token.
fn sign_in_page(wrong: bool) -> String {
    let note = if wrong {
        r#"<p class="error" role="alert">That token is not this coordinator's.</p>"#
    } else {
        ""
    };
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>carpool: sign in</title><link rel="stylesheet" href="/dashboard.css"></head><body><main class="sign-in"><h1>carpool</h1><p>This dashboard needs the coordinator's metrics token (<code>--metrics-token</code>).</p>{note}<form method="get" action="/"><label for="token">Token</label> <input id="token" name="token" type="password" autocomplete="current-password" required autofocus> <button type="submit">Sign in</button></form></main></body></html>"#
    )
}

async fn snapshot(Extract(app): Extract<App>, headers: HeaderMap) -> Response {
    if !app.admits(&headers) {
        return refused("/dashboard.json");
    }
    (page_headers("application/json"), app.full_frame()).into_response()
}

async fn events(Extract(app): Extract<App>, headers: HeaderMap) -> Response {
    if !app.admits(&headers) {
        return refused("/events");
    }
    let Ok(place) = app.pages.clone().try_acquire_owned() else {
        warn!(open = MAX_PAGES, "refused a dashboard: too many open");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            format!("{MAX_PAGES} dashboards are open already\n"),
        )
            .into_response();
    };
    let mut updates = app.frames.subscribe();
    updates.mark_unchanged();
    let first = Event::default().event("full").data(app.full_frame());
    let rest = futures::stream::unfold((updates, place), |(mut updates, place)| async move {
        updates.changed().await.ok()?;
        let frame = updates.borrow_and_update().clone();
        Some((
            Event::default().event("update").data(frame.as_str()),
            (updates, place),
        ))
    });
    let stream: Pin<Box<dyn Stream<Item = Result<Event, std::convert::Infallible>> + Send>> =
        Box::pin(futures::stream::once(async move { first }).chain(rest).map(Ok));
    (
        [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        Sse::new(stream),
    )
        .into_response()
}

/// A connection whose writes fail once it has taken nothing for `limit`: a client that stops
/// reading (or reads too slowly to take an update) is cut off instead of holding its place
/// and the bytes queued for it.
struct WriteDeadline {
    inner: TcpStream,
    peer: SocketAddr,
    limit: Duration,
    /// Running while a write waits for the client to take bytes.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl WriteDeadline {
    fn new(inner: TcpStream, peer: SocketAddr, limit: Duration) -> Self {
        Self {
            inner,
            peer,
            limit,
            stalled: None,
        }
    }

    /// `Pending` while the wait has lasted less than the limit, an error after.
    fn waiting(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                warn!(peer = %self.peer, ?limit, "cut off a metrics client that took nothing it was sent for --handshake-timeout");
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client took nothing within --handshake-timeout",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.waiting(cx).map(|r| r.map(|()| 0)),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.waiting(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
