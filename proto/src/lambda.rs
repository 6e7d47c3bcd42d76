//! The event the coordinator's Lambda spawner sends to each worker invocation: what the
//! worker needs to dial back. JSON, so that a worker can also be invoked by hand
//! (`aws lambda invoke --payload '{"coordinator_url": …}'`).

use serde::{Deserialize, Serialize};

/// One worker invocation's event.
///
/// Unknown fields are ignored, so a newer coordinator can add fields that older workers
/// do not read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerEvent {
    /// The URL the worker dials, e.g. `https://carpool.example.com:50051` (the
    /// coordinator's `--advertise-url`).
    pub coordinator_url: String,
    /// The id the coordinator expects in the worker's hello.
    pub worker_id: String,
    /// The function the worker serves.
    pub function: String,
    /// The coordinator's worker token, if it requires one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Tasks to run at once; absent: the coordinator decides from the vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// The name to verify the coordinator's certificate against, if not the URL's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_domain: Option<String>,
    /// A Lambda runtime command to serve the function with, e.g. `python3 -m awslambdaric
    /// app.handler` (the coordinator's `--runtime NAME=COMMAND`); absent: the worker's own
    /// `--runtime` (`CARPOOL_RUNTIME` on the function), else its built-in handlers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

/// The longest runtime command an event may carry.
pub const MAX_RUNTIME_COMMAND: usize = 4096;

pub use carpool_messages::bounds::{vcpu_allotment, vcpus_for_memory};

impl WorkerEvent {
    /// Parses and checks an event: the three names must be present and non-empty, and the
    /// URL must be `http://` or `https://`. The error says which field is wrong.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let event: Self =
            serde_json::from_slice(json).map_err(|e| format!("malformed carpool worker event: {e}"))?;
        for (name, value) in [
            ("coordinator_url", &event.coordinator_url),
            ("worker_id", &event.worker_id),
            ("function", &event.function),
        ] {
            if value.trim().is_empty() {
                return Err(format!("malformed carpool worker event: `{name}` is empty"));
            }
        }
        if !crate::is_http_url(&event.coordinator_url) {
            return Err(format!(
                "malformed carpool worker event: `coordinator_url` {:?} is not an http:// or https:// URL",
                event.coordinator_url
            ));
        }
        if let Some(runtime) = &event.runtime
            && (runtime.trim().is_empty() || runtime.len() > MAX_RUNTIME_COMMAND)
        {
            return Err(format!(
                "malformed carpool worker event: `runtime` must be a command of 1 to {MAX_RUNTIME_COMMAND} bytes"
            ));
        }
        if event.slots == Some(0) {
            return Err("malformed carpool worker event: `slots` is 0".to_owned());
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_event_round_trips() {
        let e = WorkerEvent {
            coordinator_url: "https://c.example:50051".into(),
            worker_id: "w1-echo".into(),
            function: "echo".into(),
            token: Some("t".into()),
            slots: Some(2),
            tls_domain: None,
            runtime: Some("python3 -m awslambdaric app.handler".into()),
        };
        let json = serde_json::to_vec(&e).unwrap_or_default();
        assert_eq!(WorkerEvent::parse(&json), Ok(e));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let json = br#"{"coordinator_url":"http://a:1","worker_id":"w","function":"f","later":1}"#;
        assert!(WorkerEvent::parse(json).is_ok());
    }

    #[test]
    fn each_problem_is_named() {
        let cases: [(&[u8], &str); 5] = [
            (b"not json", "malformed carpool worker event: expected"),
            (
                br#"{"worker_id":"w","function":"f"}"#,
                "missing field `coordinator_url`",
            ),
            (
                br#"{"coordinator_url":"http://a:1","worker_id":"","function":"f"}"#,
                "`worker_id` is empty",
            ),
            (
                br#"{"coordinator_url":"a:1","worker_id":"w","function":"f"}"#,
                "is not an http:// or https:// URL",
            ),
            (
                br#"{"coordinator_url":"http://a:1","worker_id":"w","function":"f","slots":0}"#,
                "`slots` is 0",
            ),
        ];
        for (json, want) in cases {
            let got = WorkerEvent::parse(json).err().unwrap_or_default();
            assert!(got.contains(want), "{got:?} should contain {want:?}");
        }
    }
}
