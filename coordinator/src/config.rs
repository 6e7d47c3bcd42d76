//! The coordinator's settings, in parts, built directly by tests and by the binary's clap
//! `Cli`: the core's ([`Limits`], [`Fleet`], [`Functions`], from `carpool-core`) and its
//! own ([`Listen`], [`Journal`], [`LocalWorkers`], [`LambdaTarget`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::auth::Secret;
use crate::error::Error;

pub use carpool_core::config::{
    BUILTIN_FUNCTIONS, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_PENDING_BYTES, DEFAULT_MAX_RESULT_BYTES, Fleet,
    Functions, Limits, MAX_FUNCTION_NAME, MAX_PAYLOAD_BYTES, MIN_SAMPLE_INTERVAL, Placement, ScaleOut,
    SpawnerKind, check_function_name, vcpus_for_memory,
};

/// Invoke attempts per spawn unless told otherwise (`--lambda-invoke-attempts`).
pub const DEFAULT_INVOKE_ATTEMPTS: u32 = 6;

/// Where the Lambda spawner sends its invocations.
#[derive(Clone, Debug)]
pub struct LambdaTarget {
    /// The function's name or ARN.
    pub function_name: String,
    /// An alias or version to invoke; `None`: `$LATEST`.
    pub qualifier: Option<String>,
    /// Invoke attempts per spawn (throttling and transient errors are retried, with
    /// exponential backoff and jitter; a function error or a client error is not).
    pub invoke_attempts: u32,
    /// The alias or version each memory size is invoked with (`--lambda-size SIZE=QUALIFIER`).
    pub sizes: Vec<(u32, String)>,
    /// Publish a version per size of `--memory-sizes` at start, reusing one published before
    /// for the same code and configuration (`--lambda-publish-sizes`).
    pub publish_sizes: bool,
}

impl Default for LambdaTarget {
    fn default() -> Self {
        Self {
            function_name: String::new(),
            qualifier: None,
            invoke_attempts: DEFAULT_INVOKE_ATTEMPTS,
            sizes: Vec::new(),
            publish_sizes: false,
        }
    }
}

/// Everything the coordinator needs to run, in parts.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// What the pool holds at most (the core's).
    pub limits: Limits,
    /// The workers (the core's).
    pub fleet: Fleet,
    /// Which functions are served (the core's).
    pub functions: Functions,
    /// Where and how the coordinator is reached.
    pub listen: Listen,
    /// Where accepted work is kept across restarts.
    pub journal: Journal,
    /// How the local spawner runs workers.
    pub local: LocalWorkers,
    /// The Lambda spawner's target (with `SpawnerKind::Lambda`).
    pub lambda: LambdaTarget,
}

/// Where and how the coordinator is reached: connections, TLS, tokens.
#[derive(Clone, Debug)]
pub struct Listen {
    /// Where `/metrics` is served (its own address, never the gRPC port); `None`: not
    /// served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Most connections served at once (every worker holds one; a new one past it waits).
    pub max_connections: usize,
    /// How long a new connection may take to send its first bytes (an HTTP/2 preface, a
    /// TLS hello) before it is closed.
    pub handshake_timeout: Duration,
    /// Serve TLS with this identity; `None`: plaintext.
    pub tls: Option<ServerTls>,
    /// Token workers must present on the Workers service; `None` admits any worker.
    pub worker_token: Option<Secret>,
    /// Token clients must present on Tasks and Cluster; `None` admits any client.
    pub client_token: Option<Secret>,
    /// Token a scraper must send on `/metrics` (`authorization: Bearer …`); `None`: none.
    pub metrics_token: Option<Secret>,
    /// The URL workers dial when it is not the listen address (a Lambda worker reaches the
    /// coordinator through a public name); `None`: derived from the listen address.
    pub advertise_url: Option<String>,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            metrics_listen: None,
            max_connections: 16_384,
            handshake_timeout: Duration::from_secs(10),
            tls: None,
            worker_token: None,
            client_token: None,
            metrics_token: None,
            advertise_url: None,
        }
    }
}

/// Where accepted work is kept across restarts.
#[derive(Clone, Debug, clap::Args)]
pub struct Journal {
    /// Keep accepted tasks and results here, so they survive a crash and restart [default:
    /// memory only]. A task is acknowledged only once it is on disk.
    #[arg(long, env = "CARPOOL_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Keep them in PostgreSQL instead, e.g. `postgres://carpool@db.internal/carpool`: the
    /// coordinator creates and migrates its tables; several coordinators may share the
    /// database, one active (it holds the lease), the others standing by to take over.
    #[arg(
        long,
        env = "CARPOOL_STATE_URL",
        hide_env_values = true,
        conflicts_with = "state_dir"
    )]
    pub state_url: Option<String>,
    /// With --state-url and `sslmode=require` in it: the PEM of the CA that signed the
    /// database's certificate [default: the system's roots].
    #[arg(long, env = "CARPOOL_STATE_CA")]
    pub state_ca: Option<PathBuf>,
    /// With --state-url: how long the active coordinator's lease lasts unrenewed (renewed
    /// every third of it); a standby takes over this long after the active one died at most.
    #[arg(long, env = "CARPOOL_LEASE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
}

impl Default for Journal {
    fn default() -> Self {
        Self {
            state_dir: None,
            state_url: None,
            state_ca: None,
            lease: Duration::from_secs(2),
        }
    }
}

/// How the local spawner runs `carpool-worker` processes.
#[derive(Clone, Debug, Default)]
pub struct LocalWorkers {
    /// The `carpool-worker` binary the local spawner starts; `None` looks next to the
    /// running executable.
    pub worker_bin: Option<PathBuf>,
    /// `RUST_LOG` for local workers; `None` passes the coordinator's environment through.
    pub worker_log: Option<String>,
    /// `--log-format` for local workers (`text` or `json`), so that their lines, which share
    /// the coordinator's stderr, have its format; `None`: their own default.
    pub worker_log_format: Option<String>,
    /// The only local directory local workers' `thumbnail` reads and writes (`--data-dir`
    /// of each worker); `None`: only `s3://` objects.
    pub worker_data_dir: Option<PathBuf>,
}

/// The coordinator's TLS identity, and what local workers need to verify it.
#[derive(Clone)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert_pem: Vec<u8>,
    /// PEM private key.
    pub key_pem: Vec<u8>,
    /// The CA file local workers verify the certificate with (the certificate itself when
    /// it is self-signed).
    pub worker_ca: PathBuf,
    /// The name in the certificate that local workers verify (they dial 127.0.0.1).
    pub worker_domain: String,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("worker_ca", &self.worker_ca)
            .field("worker_domain", &self.worker_domain)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// What the core decides with: its three parts, and whether a journal is kept.
    pub fn core(&self) -> carpool_core::Config {
        carpool_core::Config {
            limits: self.limits.clone(),
            fleet: self.fleet.clone(),
            functions: self.functions.clone(),
            journaled: self.journal.state_dir.is_some() || self.journal.state_url.is_some(),
        }
    }

    /// Whether tasks of `function` can be run by the workers this coordinator spawns.
    pub fn serves(&self, function: &str) -> bool {
        self.functions.serves(self.fleet.spawner, function)
    }

    /// Checks every setting against its range, for the binary's flags and for library
    /// users who build a `Config` themselves alike (messages name each setting by its flag).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::Config(msg));
        self.core().validate().map_err(Error::Config)?;
        if self.listen.max_connections == 0 {
            return bad("--max-connections must be at least 1".into());
        }
        if self.listen.handshake_timeout.is_zero() {
            return bad("--handshake-timeout must be more than 0".into());
        }
        if self.journal.state_dir.is_some() && self.journal.state_url.is_some() {
            return bad("--state-dir and --state-url are alternatives: give one".into());
        }
        if let Some(url) = &self.journal.state_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return bad("--state-url must be a postgres:// (or postgresql://) URL".into());
        }
        if self.journal.lease < Duration::from_millis(300) || self.journal.lease > Duration::from_secs(600) {
            return bad("--lease must be from 300ms to 10m".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_out_of_range_is_refused_with_the_setting_named() {
        assert!(Config::default().validate().is_ok());
        let mut cases: Vec<(Config, &str)> = Vec::new();
        let mut c = Config::default();
        c.fleet.max_workers = 0;
        cases.push((c, "--max-workers"));
        let mut c = Config::default();
        c.listen.max_connections = 0;
        cases.push((c, "--max-connections"));
        let mut c = Config::default();
        c.journal.state_dir = Some("a".into());
        c.journal.state_url = Some("postgres://b".into());
        cases.push((c, "--state-dir"));
        let mut c = Config::default();
        c.journal.lease = Duration::from_millis(1);
        cases.push((c, "--lease"));
        for (c, flag) in cases {
            let err = c.validate().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(flag), "{err:?} should name {flag}");
        }
    }
}
