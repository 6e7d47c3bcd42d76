//! carpool's gRPC contract.
//!
//! - `carpool.proto` (next to this crate's `Cargo.toml`) is the source of truth.
//! - [`pb`] holds the clients and servers of package `carpool.v1`, and re-exports its
//!   messages from `carpool-messages` (which the pure core uses without any gRPC runtime).
//! - [`FILE_DESCRIPTOR_SET`] is the encoded descriptor, served through gRPC reflection.
//! - [`payload`] converts between the wire [`pb::Payload`] and plain bytes.
//! - [`codec`]: prost's codec, with undecodable bytes reported as INVALID_ARGUMENT.
//! - [`endpoint`]: how clients and workers dial (keepalive, TLS).
//! - [`bounds`]: the bounds of a worker's shape (memory, vCPUs, slots, life) and the
//!   built-in function names, shared by the coordinator's checks and the worker's.
//! - [`auth`]: the bearer-token [`Secret`] and the [`Bearer`] interceptor clients and workers use.
//! - [`lambda`]: the event a Lambda worker invocation receives from the coordinator, and
//!   Lambda's vCPU rule.
//! - `aws_https_client` (feature `aws`): the AWS SDK's HTTPS client, on ring.

#![allow(missing_docs, unreachable_pub)]

pub use carpool_messages::{Bytes, bounds, payload, split_by_size};

pub mod auth;
pub mod codec;
pub mod endpoint;
pub mod lambda;

/// The AWS SDK's HTTPS client on rustls with ring, the crypto provider the rest of carpool
/// (tonic) uses: one provider in the whole tree (the SDK's default would add aws-lc).
#[cfg(feature = "aws")]
pub fn aws_https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https()
}
pub use auth::{Bearer, Secret};

/// Sets up a binary's logs on stderr: `format` is `text` (colours only on a terminal) or
/// `json` (one object per line, with each event's fields, such as `task` and `worker`, and
/// its spans); `RUST_LOG` filters, else `default_filter`.
#[cfg(feature = "logging")]
pub fn init_logging(format: &str, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        logs.json().with_current_span(false).init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// The values `--log-format` takes.
pub const LOG_FORMATS: [&str; 2] = ["text", "json"];

/// The coordinator's one line on stdout starts with this, followed by the bound address:
/// scripts and tests read the address from it ([`listening_address`]).
pub const LISTENING_LINE: &str = "carpool-coordinator listening on ";

/// The address in the coordinator's first stdout line, if the line is that line.
pub fn listening_address(line: &str) -> Option<&str> {
    line.trim().strip_prefix(LISTENING_LINE)
}

/// Now, in milliseconds since the Unix epoch: the unit of every timestamp in the contract
/// (`*_unix_ms` fields).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
pub use endpoint::{DialError, TAKEOVER_IN_MS, TlsOptions, coordinator_urls, dial, endpoint, is_http_url};

/// Generated code of package `carpool.v1`.
pub mod pb {
    pub use carpool_messages::pb::*;
    tonic::include_proto!("carpool.v1");
}

/// The encoded `FileDescriptorSet` of `carpool.proto`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("carpool_descriptor");

/// The text of `carpool.proto` as compiled into this crate (the contract check compares it).
pub const PROTO_SOURCE: &str = include_str!("../carpool.proto");
