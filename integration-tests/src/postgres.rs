//! A PostgreSQL server of a test's own: `initdb` in a temporary directory, `postgres` on a
//! loopback port the OS picked, run as a non-root user (the `postgres` account when the
//! tests run as root), stopped by its handle (fast shutdown) when the test ends.

#![allow(clippy::expect_used)] // the test harness: a failed expectation is a failed test

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Proc, WAIT, free_port};

/// One test's database server.
pub struct Postgres {
    proc: Option<Proc>,
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Whether it serves TLS (`ssl=on`, with the certificate given at start).
    tls: bool,
}

/// The directory of PostgreSQL's server programs: `CARPOOL_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout); panics saying what to install.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARPOOL_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("PostgreSQL's initdb is missing: `./scripts/test` installs Debian's postgresql package")
    })
}

/// `cmd` run as the `postgres` account when this process is root (initdb and postgres
/// refuse root), as is otherwise.
fn as_database_user(program: PathBuf) -> Command {
    if nix::unistd::geteuid().is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid",
            "postgres",
            "--regid",
            "postgres",
            "--clear-groups",
            "--",
        ])
        .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

impl Postgres {
    /// A fresh cluster (superuser `carpool`, trust on loopback), started and accepting.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// [`Postgres::start`] serving TLS with this certificate and key (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("carpool-pg-")
            .tempdir()
            .expect("temp dir");
        if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .unwrap_or_else(|| {
                    panic!("no postgres account: `./scripts/test` installs Debian's postgresql package")
                });
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).expect("chown the data directory");
        }
        let data = dir.path().join("data");
        let out = as_database_user(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "carpool", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some((cert, key)) = tls {
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(name);
                std::fs::write(&path, pem).expect("write the server's TLS files");
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .expect("chmod the server's TLS files");
                if let Ok(Some(user)) = nix::unistd::User::from_name("postgres")
                    && nix::unistd::geteuid().is_root()
                {
                    nix::unistd::chown(&path, Some(user.uid), Some(user.gid))
                        .expect("chown the server's TLS files");
                }
            }
        }
        let mut pg = Self {
            proc: None,
            bin,
            dir,
            port: free_port(),
            tls: tls.is_some(),
        };
        pg.run();
        pg
    }

    fn run(&mut self) {
        let mut cmd = as_database_user(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-p"])
            .arg(self.port.to_string());
        if self.tls {
            cmd.args(["-c", "ssl=on"]);
        }
        self.proc = Some(Proc::start("postgres", cmd));
        // Accepting connections, not only listening (it refuses while it starts up).
        let deadline = Instant::now() + WAIT;
        let ready = || {
            Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        };
        while !ready() {
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The URL a coordinator's `--state-url` takes.
    pub fn url(&self) -> String {
        format!("postgres://carpool@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown: connections are cut) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(proc) = self.proc.take() {
            proc.signal(nix::sys::signal::Signal::SIGINT);
            let mut proc = proc;
            proc.wait_exit();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Freezes the server (`SIGSTOP` to it and every process it started) or thaws it
    /// (`SIGCONT`): a database that stops answering without closing anything.
    pub fn freeze(&self, frozen: bool) {
        let Some(proc) = &self.proc else { return };
        let signal = if frozen {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        let mut pids = vec![proc.pid()];
        let mut i = 0;
        while i < pids.len() {
            let pid = pids[i];
            let children =
                std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            pids.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            i += 1;
        }
        for pid in pids {
            if let Ok(raw) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal);
            }
        }
    }

    /// A connection for the test's own queries.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the test's postgres");
        tokio::spawn(connection);
        client
    }
}
