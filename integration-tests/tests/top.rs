//! `carpool top` driven once for real: in a tmux session (Debian's `tmux`, which
//! `./scripts/test` installs), against a coordinator that is killed and restarted on the
//! same address while the view runs.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::process::Command;

use carpool_integration_tests::{Coordinator, Proc, bin, eventually};

/// A tmux server of this test's own (its own socket), killed with everything in it on drop.
struct Tmux {
    tmux: std::path::PathBuf,
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Self {
        let tmux = carpool_integration_tests::installed("tmux", "tmux");
        let socket = format!("carpool-top-{}", std::process::id());
        let me = Self { tmux, socket };
        let ok = me
            .cmd(&["new-session", "-d", "-s", "top", "-x", "150", "-y", "40", command])
            .status()
            .expect("tmux new-session")
            .success();
        assert!(ok, "tmux new-session failed");
        me
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.tmux);
        c.args(["-L", &self.socket])
            .args(args)
            .env("TERM", "xterm-256color");
        c
    }

    /// The screen as text.
    fn screen(&self) -> String {
        let out = self
            .cmd(&["capture-pane", "-p", "-t", "top"])
            .output()
            .expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- the view ----\n{}", self.screen());
        }
        let _ = self.cmd(&["kill-server"]).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn top_shows_the_fleet_and_keeps_going_across_a_coordinator_restart() {
    let coord = Coordinator::start(&["--spawner", "external", "--keep-alive", "1h"]);
    let client = coord.client().await;
    let _worker = Proc::worker(&[
        "--coordinator",
        &coord.url,
        "--function",
        "echo",
        "--id",
        "top-worker",
    ]);
    for i in 0..5 {
        client.run("echo", format!("{i}")).await.expect("run");
    }
    let view = Tmux::start(&format!(
        "{} --coordinator {} top",
        bin("carpool").display(),
        coord.url
    ));
    eventually("the view to show the function and the worker", || async {
        let s = view.screen();
        (s.contains("FUNCTION") && s.contains("echo") && s.contains("top-worker") && s.contains("WORKER"))
            .then_some(())
    })
    .await;

    // The coordinator goes away: the view says so and keeps its last figures.
    let addr = coord.addr().to_owned();
    coord.kill9();
    eventually("the view to say it is reconnecting", || async {
        let s = view.screen();
        (s.contains("reconnecting") && s.contains("top-worker")).then_some(())
    })
    .await;

    // Back on the same address: the view picks it up again.
    let _again = Coordinator::start_at(&addr, &["--spawner", "external", "--keep-alive", "1h"], &[]);
    eventually("the view to reconnect", || async {
        let s = view.screen();
        (!s.contains("reconnecting") && s.contains("up ")).then_some(())
    })
    .await;

    // q quits.
    view.cmd(&["send-keys", "-t", "top", "q"])
        .status()
        .expect("send-keys");
    eventually("the view to end", || async {
        let alive = view.cmd(&["has-session", "-t", "top"]).status().ok()?.success();
        (!alive).then_some(())
    })
    .await;
}
