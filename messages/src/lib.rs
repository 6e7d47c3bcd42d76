//! carpool's wire messages, apart from the gRPC services that carry them.
//!
//! - [`pb`]: the messages of package `carpool.v1`, generated from `proto/carpool.proto`
//!   (`carpool-proto` adds the clients and servers, and re-exports all of this).
//! - [`payload`]: conversions between the wire [`pb::Payload`] and plain bytes.
//! - [`bounds`]: the bounds of a worker's shape and the built-in function names, shared by
//!   the coordinator's checks and the worker's; Lambda's vCPU rule.
//!
//! No gRPC runtime, no async runtime: the pure core (`carpool-core`) depends on this crate.

#![allow(missing_docs, unreachable_pub)]

pub use bytes::Bytes;

pub mod bounds;

/// The messages of package `carpool.v1`.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/carpool.v1.rs"));
}

/// `items` cut into runs in order, each adding up to at most `max` by `size` (one item at
/// least, whatever its size; `max` 0: one run): how a worker splits its results and a client
/// its Map submissions into messages within the message limit.
pub fn split_by_size<T>(
    items: impl IntoIterator<Item = T>,
    max: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut total = 0usize;
    for item in items {
        let n = size(&item);
        match out.last_mut() {
            Some(run) if max == 0 || total + n <= max => {
                total += n;
                run.push(item);
            }
            _ => {
                total = n;
                out.push(vec![item]);
            }
        }
    }
    out
}

/// One answer of a batched Map response as the single answer of a `MapResponse` (what a call
/// that never sends a batch gets, and what a client hands on one result at a time).
impl From<pb::MapResult> for pb::MapResponse {
    fn from(r: pb::MapResult) -> Self {
        Self {
            seq: r.seq,
            result: r.result,
            rejected: r.rejected,
            rejected_code: r.rejected_code,
            results: Vec::new(),
        }
    }
}

/// Conversions between [`pb::Payload`] and bytes.
pub mod payload {
    use super::pb::{Payload, payload::Data};
    use bytes::Bytes;

    /// The bytes a payload carries (text as UTF-8); an unset payload is empty.
    pub fn into_bytes(p: Option<Payload>) -> Bytes {
        match p.and_then(|p| p.data) {
            Some(Data::Text(t)) => Bytes::from(t),
            Some(Data::Binary(b)) => b,
            None => Bytes::new(),
        }
    }

    /// How many bytes a payload carries, without copying it.
    pub fn len(p: Option<&Payload>) -> usize {
        match p.and_then(|p| p.data.as_ref()) {
            Some(Data::Text(t)) => t.len(),
            Some(Data::Binary(b)) => b.len(),
            None => 0,
        }
    }

    /// A payload for output bytes: text when they are valid UTF-8 (so grpcurl
    /// users read JSON as JSON), binary otherwise.
    pub fn from_bytes(bytes: Bytes) -> Payload {
        let data = match std::str::from_utf8(&bytes) {
            Ok(text) => Data::Text(text.to_owned()),
            Err(_) => Data::Binary(bytes),
        };
        Payload { data: Some(data) }
    }

    /// A text payload.
    pub fn text(s: impl Into<String>) -> Payload {
        Payload {
            data: Some(Data::Text(s.into())),
        }
    }
}
