//! What the state keeps across a restart: the records the journal stores and gives back.
//! The state defines them, the journal only writes and reads them.

use carpool_messages::Bytes;
use carpool_messages::pb;
use prost::Message;

use crate::scheduler::Learned;

/// A task as stored: what is needed to run it again, and its result once known.
#[derive(Clone, PartialEq, Message)]
pub struct StoredTask {
    /// The function it was submitted to.
    #[prost(string, tag = "1")]
    pub function: String,
    /// Its input (emptied once it has a result).
    #[prost(bytes = "bytes", tag = "2")]
    pub payload: Bytes,
    /// Per-attempt timeout in ms (0: the default).
    #[prost(uint64, tag = "3")]
    pub timeout_ms: u64,
    /// Idempotency key (empty: none).
    #[prost(string, tag = "4")]
    pub key: String,
    /// When it was accepted, Unix ms.
    #[prost(uint64, tag = "5")]
    pub submitted_unix_ms: u64,
    /// Its final result, once it has one.
    #[prost(message, optional, tag = "6")]
    pub result: Option<pb::TaskResult>,
    /// What its idempotency key stands for (see `Submission::fingerprint`).
    #[prost(uint64, tag = "7")]
    pub fingerprint: u64,
    /// When its deadline passes, Unix ms (0: none): a restart keeps hurrying its function.
    #[prost(uint64, tag = "8")]
    pub deadline_unix_ms: u64,
}

/// What a journal held when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every stored task by id, in id order, with the last attempt started of an
    /// unfinished one (0: it never started).
    pub tasks: Vec<(u64, StoredTask, u32)>,
    /// The first id never handed out.
    pub next_id: u64,
    /// Ids below this are reserved for this coordinator (reserved in the journal as it was
    /// opened); 0: no reservation (ids are not limited).
    pub reserved_until: u64,
    /// The concurrency level learned per (function, memory size in MB).
    pub learned: Vec<((String, u32), Learned)>,
    /// What each (function, memory size in MB) has cost.
    pub costs: Vec<((String, u32), crate::scheduler::SizeCost)>,
    /// The wall clock when it is restored, Unix ms (the deadlines still ahead are reckoned
    /// from it; 0: none is).
    pub unix_ms: u64,
}
