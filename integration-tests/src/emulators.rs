//! Emulators of AWS services that tests run for real: moto in server mode (S3, Lambda).
//! Installed by `./scripts/test` and named by `CARPOOL_MOTO_SERVER`.

use std::path::PathBuf;
use std::process::Command;

use crate::{Proc, free_port, tool};

/// moto's AWS emulator in server mode on a port it picks, recording every request to a file
/// of its own; stopped (and the recording removed) on drop.
pub struct Moto {
    _proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Where its recorder writes (the Lambda tests read it).
    pub recording: PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.recording);
    }
}

impl Moto {
    /// Starts moto and waits until it serves.
    pub fn start() -> Self {
        let mut cmd = Command::new(tool("CARPOOL_MOTO_SERVER", "moto's moto_server"));
        // moto's recorder writes to a file, by default in the working directory.
        let recording =
            std::env::temp_dir().join(format!("carpool-moto-{}-{}.rec", std::process::id(), free_port()));
        cmd.args(["-H", "127.0.0.1", "-p", "0"])
            .env("NO_COLOR", "1")
            .env("MOTO_RECORDER_FILEPATH", &recording);
        let proc = Proc::start("moto", cmd);
        proc.wait_for_log("Running on http://127.0.0.1:");
        let log = proc.log();
        let url = log
            .lines()
            .find_map(|l| l.split("Running on ").nth(1))
            .map(|u| u.trim().to_owned())
            .unwrap_or_else(|| panic!("no URL in moto's log: {log}"));
        Self {
            _proc: proc,
            url,
            recording,
        }
    }

    /// The environment an AWS SDK client needs to reach this moto: `endpoint_var`
    /// (e.g. `AWS_ENDPOINT_URL_S3`, or `AWS_ENDPOINT_URL` for every service), a region and
    /// throwaway credentials.
    pub fn aws_env(&self, endpoint_var: &'static str) -> Vec<(&'static str, String)> {
        vec![
            (endpoint_var, self.url.clone()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
    }
}
