//! The dashboard on the metrics port, in a real browser: headless Chromium (Debian's
//! `chromium` and `chromium-driver`, which `./scripts/test` installs) driven by selenium from
//! `integration-tests/browser/dashboard.py`, against a real coordinator and its local
//! workers. And what a browser does not show: the token, a slow client cut off, the cap on
//! open pages.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use carpool_integration_tests::{Coordinator, eventually, free_port, http_raw, installed, tool, totals};
use futures::StreamExt;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The browser, driven through `browser/dashboard.py`'s line protocol; closed on drop (the
/// script quits Chromium when its input ends), killed if it does not.
struct Browser {
    child: Child,
    input: Option<ChildStdin>,
    output: BufReader<ChildStdout>,
    log: PathBuf,
}

impl Browser {
    fn start() -> Self {
        let python = tool("CARPOOL_PYTHON", "the test venv's python (with selenium)");
        let driver = installed("chromedriver", "chromium-driver");
        let chromium = installed("chromium", "chromium");
        let log = std::env::temp_dir().join(format!("carpool-browser-{}.log", std::process::id()));
        let err = std::fs::File::create(&log).expect("browser log");
        let mut child = Command::new(python)
            .arg(repo().join("integration-tests/browser/dashboard.py"))
            .arg(driver)
            .arg(chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start the browser driver");
        let input = child.stdin.take();
        let output = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            input,
            output,
            log,
        }
    }

    /// Sends one command and reads its answer (panics with the driver's log on a failure).
    fn ask(&mut self, command: &str) -> Value {
        let input = self.input.as_mut().expect("stdin");
        writeln!(input, "{command}").expect("write to the browser driver");
        input.flush().expect("flush");
        let mut line = String::new();
        self.output.read_line(&mut line).expect("read the browser driver");
        let answer: Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            panic!(
                "the browser driver answered {line:?}; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        });
        assert_eq!(answer["ok"], true, "{command}: {answer}");
        answer
    }
}

/// Asks the shared browser (from async code: the driver's answers block).
fn ask(browser: &Arc<Mutex<Browser>>, command: &str) -> Value {
    tokio::task::block_in_place(|| browser.lock().unwrap().ask(command))
}

impl Drop for Browser {
    fn drop(&mut self) {
        drop(self.input.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A count as the page writes it (`3,000`).
fn int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Dollars as the page writes them.
fn usd(x: f64) -> String {
    if x >= 100.0 {
        format!("${x:.2}")
    } else if x >= 1.0 {
        format!("${x:.3}")
    } else {
        format!("${x:.6}")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_a_batch_live_in_a_real_browser_and_agrees_with_stats() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let coord = Coordinator::start(&[
        "--metrics-listen",
        &metrics,
        "--metrics-token",
        "s3cret",
        "--keep-alive",
        "1s",
    ]);
    let client = coord.client().await;
    let browser = Arc::new(Mutex::new(tokio::task::block_in_place(Browser::start)));
    // Signing in with the token: the answer sets the session cookie and sends the browser
    // back to `/`, which then streams.
    let opened = ask(&browser, &format!("open http://{metrics}/?token=s3cret"));
    assert_eq!(opened["url"], format!("http://{metrics}/"), "{opened}");
    assert_eq!(opened["title"], "carpool");

    // A batch that waits (sleeps), with failures among it, and one that computes (spins).
    let sleeps = futures::stream::iter((0..600).map(|i| {
        Bytes::from(if i % 60 == 0 {
            "\"not a number\"".to_owned()
        } else {
            "2000".to_owned()
        })
    }));
    let spins = futures::stream::iter((0..40).map(|_| Bytes::from("100")));
    let batch = tokio::spawn({
        let client = client.clone();
        async move {
            let (a, b) = tokio::join!(
                async {
                    client
                        .map("sleep", sleeps)
                        .await
                        .expect("map")
                        .collect::<Vec<_>>()
                        .await
                },
                async {
                    client
                        .map("spin", spins)
                        .await
                        .expect("map")
                        .collect::<Vec<_>>()
                        .await
                },
            );
            a.len() + b.len()
        }
    });
    // The page follows it live: tasks running, workers listed.
    let live = eventually("the page to show the batch running", || {
        let browser = browser.clone();
        async move {
            let f = ask(&browser, "figures")["figures"].clone();
            let running: u64 = f["total-running"].as_str()?.replace(',', "").parse().ok()?;
            (running > 0 && f["workers"].as_u64()? > 0).then_some(f)
        }
    })
    .await;
    assert_eq!(live["role"], "active");
    // Numbers change, the layout does not: the panels stay where they were an update ago.
    let next = ask(&browser, "figures")["figures"].clone();
    assert_eq!(
        next["layout"], live["layout"],
        "the page moved between two updates"
    );
    // The keyboard reaches the skip link first, then the tables' scrolling regions.
    let stops = ask(&browser, "keyboard 4")["stops"].clone();
    assert_eq!(stops[0], "Skip to the figures", "{stops}");
    assert!(
        stops.as_array().unwrap().iter().any(|s| s == "h-functions"),
        "{stops}"
    );
    // The picture the README shows, taken while the batch runs (a laptop's width; and a
    // phone's, which must fit without a horizontal scroll of the page itself).
    let shots = repo().join("target/dashboard");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let laptop = shots.join("dashboard.png");
    let phone = shots.join("dashboard-phone.png");
    ask(&browser, &format!("screenshot {} 1280 800", laptop.display()));
    ask(&browser, &format!("screenshot {} 390 844", phone.display()));
    // On a phone's width the tables scroll within their own regions, never the page.
    let narrow = ask(&browser, "figures")["figures"].clone();
    assert_eq!(narrow["scrolls_sideways"], false, "{narrow}");
    for shot in [&laptop, &phone] {
        let png = std::fs::read(shot).expect("screenshot");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{}",
            shot.display()
        );
    }
    assert_eq!(batch.await.expect("batch"), 640);

    // Once the fleet has left the bill stops moving: the page must then show what Stats says.
    let stats = eventually("the fleet to leave", || async {
        let t = totals(&client).await;
        (t.workers_live == 0 && t.workers_starting == 0).then_some(())
    })
    .await;
    let () = stats;
    let agreed = eventually("the page to agree with Stats", || {
        let (browser, client) = (browser.clone(), client.clone());
        async move {
            let t = totals(&client).await;
            let f = ask(&browser, "figures")["figures"].clone();
            let lambda = carpool_coordinator::billing::cost_usd(t.request_billed_gb_ms, t.requests);
            let expected = [
                ("total-pending", int(t.pending)),
                ("total-running", int(t.running)),
                ("total-succeeded", int(t.succeeded)),
                ("total-failed", int(t.failed)),
                ("total-workers", int(u64::from(t.workers_live))),
                ("bill-invocations", int(t.workers_started)),
                ("bill-requests", int(t.requests)),
                ("bill-cost", usd(t.cost_usd)),
                ("bill-lambda", usd(lambda)),
            ];
            expected
                .iter()
                .all(|(id, want)| f[*id].as_str() == Some(want.as_str()))
                .then_some((f, t))
        }
    })
    .await;
    let (figures, t) = agreed;
    assert_eq!(t.succeeded, 630, "{figures}");
    assert_eq!(t.failed, 10);
    // Per function too, and the failures with their cause.
    let sleep = &figures["functions"]["sleep"];
    assert_eq!(sleep["succeeded"], "590", "{figures}");
    assert_eq!(sleep["failed"], "10");
    assert!(sleep["execution"].as_str().unwrap().contains(" s"), "{sleep}");
    assert_eq!(figures["functions"]["spin"]["succeeded"], "40", "{figures}");
    let failures = figures["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 10, "{figures}");
    assert!(
        failures
            .iter()
            .all(|f| f.as_str().unwrap().contains("payload must be a number")),
        "{failures:?}"
    );
    // The saving against Lambda as it bills is shown, and positive for waiting work.
    assert!(
        figures["bill-saving"].as_str().unwrap().ends_with('%'),
        "{figures}"
    );
    // No script error and nothing the page's policy refused.
    assert_eq!(figures["console"], serde_json::json!([]), "{figures}");
    drop(browser);
}

fn get(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: carpool\r\nConnection: close\r\n{headers}\r\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_asks_for_its_token_caps_open_pages_and_cuts_off_a_client_that_stops_reading() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let coord = Coordinator::start(&[
        "--metrics-listen",
        &metrics,
        "--metrics-token",
        "s3cret",
        "--handshake-timeout",
        "1s",
        "--spawner",
        "external",
    ]);
    eventually("the metrics port to listen", || async {
        std::net::TcpStream::connect(&metrics).ok()
    })
    .await;
    // Without the token: the page asks for it, the figures and the stream are refused.
    let (status, page) = http_raw(&metrics, &get("/", ""));
    assert_eq!(status, 401, "{page}");
    for path in ["/events", "/dashboard.json"] {
        assert_eq!(http_raw(&metrics, &get(path, "")).0, 401, "{path}");
        assert_eq!(
            http_raw(&metrics, &get(path, "Authorization: Bearer wrong\r\n")).0,
            401,
            "{path}"
        );
        assert_eq!(
            http_raw(&metrics, &get(path, "Cookie: carpool_session=forged\r\n")).0,
            401,
            "{path}"
        );
    }
    assert_eq!(http_raw(&metrics, &get("/?token=wrong", "")).0, 401);
    // The script and style are not secret; the page's policy allows nothing else.
    let (status, script) = http_raw(&metrics, &get("/dashboard.js", ""));
    assert_eq!(status, 200, "{script}");
    assert!(
        script
            .to_lowercase()
            .contains("content-security-policy: default-src 'none'"),
        "{script}"
    );
    // With it: a bearer header, or the cookie the sign-in sets (which is not the token).
    let (status, json) = http_raw(
        &metrics,
        &get("/dashboard.json", "Authorization: Bearer s3cret\r\n"),
    );
    assert_eq!(status, 200, "{json}");
    let (status, signed) = http_raw(&metrics, &get("/?token=s3cret", ""));
    assert_eq!(status, 303, "{signed}");
    let cookie = signed
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(!cookie.contains("s3cret"), "{cookie}");
    assert!(signed.to_lowercase().contains("httponly"), "{signed}");
    let (status, stream) = http_raw(&metrics, &get("/events", &format!("Cookie: {cookie}\r\n")));
    assert_eq!(status, 200, "{stream}");
    assert!(stream.contains("text/event-stream"), "{stream}");

    // At most 64 pages at once: the next is told to come back later.
    let open: Vec<std::net::TcpStream> = (0..64)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(&metrics).expect("connect");
            c.write_all(get("/events", "Authorization: Bearer s3cret\r\n").as_bytes())
                .expect("write");
            c.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut head = [0u8; 12];
            c.read_exact(&mut head).expect("an answer");
            assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
            c
        })
        .collect();
    let refused = eventually("the 65th page to be refused", || async {
        let (status, text) = http_raw(&metrics, &get("/events", "Authorization: Bearer s3cret\r\n"));
        (status == 503).then_some(text)
    })
    .await;
    assert!(refused.contains("64 dashboards are open already"), "{refused}");
    drop(open);
    eventually("a place for a page once they close", || async {
        (http_raw(&metrics, &get("/events", "Authorization: Bearer s3cret\r\n")).0 == 200).then_some(())
    })
    .await;

    // A client that asks for the stream and never reads it is cut off once what is queued for
    // it stops moving for --handshake-timeout, instead of holding its place and its bytes.
    // Work waiting for 200 functions makes each update large, so that its buffers fill soon.
    let client = coord.client().await;
    for f in 0..200 {
        client.submit(&format!("f{f:03}"), "1").await.expect("submit");
    }
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(1024).expect("a small receive buffer");
    let mut silent = socket.connect(metrics.parse().unwrap()).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut silent,
        get("/events", "Authorization: Bearer s3cret\r\n")
            .replace("Connection: close\r\n", "")
            .as_bytes(),
    )
    .await
    .expect("write");
    // Its buffers fill (a few updates), then nothing moves for the timeout.
    let started = Instant::now();
    while !coord.log().contains("cut off a metrics client") {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "a client that read nothing for {:?} was still being sent updates",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // What was queued drains, then the stream ends, where a live page's never does.
    let mut sink = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match tokio::io::AsyncReadExt::read(&mut silent, &mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the cut-off stream did not end");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standbys_page_says_it_is_one_names_the_active_coordinator_and_turns_active_on_takeover() {
    let pg = carpool_integration_tests::postgres::Postgres::start();
    let url = pg.url();
    let args = |metrics: &str| {
        [
            "--spawner",
            "external",
            "--state-url",
            &url,
            "--metrics-listen",
            metrics,
        ]
        .map(str::to_owned)
    };
    let (a_metrics, b_metrics) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let a_args = args(&a_metrics);
    let a = Coordinator::start(&a_args.iter().map(String::as_str).collect::<Vec<_>>());
    a.client()
        .await
        .submit("job", "x")
        .await
        .expect("the active one accepts");
    let b_args = args(&b_metrics);
    let b = Coordinator::start(&b_args.iter().map(String::as_str).collect::<Vec<_>>());
    // The standby's listener answers at once: /metrics is not its to give...
    let (status, text) = eventually("the standby's metrics port to name the active one", || async {
        let (status, text) = carpool_integration_tests::http_get(&b_metrics, "/metrics", None)
            .await
            .ok()?;
        text.contains(&a.url).then_some((status, text))
    })
    .await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("standby") && text.contains(&a.url), "{text}");
    // ...and its page says it is a standby, naming the active coordinator.
    let browser = Arc::new(Mutex::new(tokio::task::block_in_place(Browser::start)));
    ask(&browser, &format!("open http://{b_metrics}/"));
    let f = eventually("the page to name the active coordinator", || {
        let browser = browser.clone();
        async move {
            let f = ask(&browser, "figures")["figures"].clone();
            (!f["active_url"].as_str()?.is_empty()).then_some(f)
        }
    })
    .await;
    assert_eq!(f["role"], "standby", "{f}");
    assert_eq!(f["standby"], true, "{f}");
    assert_eq!(f["active_url"], a.url.as_str(), "{f}");
    assert_eq!(f["console"], serde_json::json!([]), "{f}");
    // The active one goes; the standby takes over, and the open page turns with it.
    a.kill9();
    let f = eventually("the page to show the new active coordinator", || {
        let browser = browser.clone();
        async move {
            let f = ask(&browser, "figures")["figures"].clone();
            (f["role"] == "active").then_some(f)
        }
    })
    .await;
    assert_eq!(f["standby"], false, "{f}");
    assert_eq!(f["total-pending"], "1", "{f}");
    let (status, _) = carpool_integration_tests::http_get(&b_metrics, "/metrics", None)
        .await
        .expect("metrics");
    assert_eq!(status, 200);
    drop(browser);
    drop(b);
}
