//! The bounds a worker's shape must keep, in one table: the coordinator checks its own
//! flags for the workers it spawns against it at start, checks every Hello against it, and
//! the worker checks its flags against it, so that no setting is accepted on one side and
//! refused on the other.

use std::ops::RangeInclusive;
use std::time::Duration;

/// A worker's memory size in MB: Lambda's smallest size to a large VM's (256 GiB).
pub const MEMORY_MB: RangeInclusive<u32> = 128..=262_144;
/// The most vCPUs a worker may say it has.
pub const MAX_VCPUS: u32 = 512;
/// The most slots (pinned or as a cap) a worker may have.
pub const MAX_SLOTS: u32 = 65_536;
/// The longest life a worker may be given (a week).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The functions every worker binary serves itself (`carpool-worker`'s built-ins): a
/// function of the same name given as `--exec` or `--runtime` would silently replace one.
pub const BUILTINS: [&str; 6] = ["echo", "sleep", "spin", "hold", "mixed", "thumbnail"];

/// Checks a worker's shape against the bounds; `Err` names the first value out of them,
/// as `what` calls it (a flag, or a Hello field).
pub fn check_shape(
    memory_mb: u32,
    vcpus: Option<u32>,
    slots: Option<u32>,
    timeout: Duration,
    what: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    if !MEMORY_MB.contains(&memory_mb) {
        return Err(format!(
            "{} {memory_mb} is not in {}..={} (128 MB to 256 GiB)",
            what("memory_mb"),
            MEMORY_MB.start(),
            MEMORY_MB.end()
        ));
    }
    if let Some(v) = vcpus
        && (v == 0 || v > MAX_VCPUS)
    {
        return Err(format!("{} {v} is not in 1..={MAX_VCPUS}", what("vcpus")));
    }
    if let Some(s) = slots
        && s > MAX_SLOTS
    {
        return Err(format!("{} {s} is over {MAX_SLOTS}", what("slots")));
    }
    if timeout > MAX_TIMEOUT {
        return Err(format!(
            "{} of {} s is over a week",
            what("timeout"),
            timeout.as_secs()
        ));
    }
    Ok(())
}

/// Lambda's vCPU allocation, rounded up to whole vCPUs: 1769 MB buys one, at most 6.
pub fn vcpus_for_memory(memory_mb: u32) -> u32 {
    memory_mb.div_ceil(1769).clamp(1, 6)
}

/// Lambda's vCPU allotment as a share of CPU time: 1769 MB buys one vCPU (1024 MB buys
/// 0.58), at most 6. What a worker's CPU figure is a fraction of.
pub fn vcpu_allotment(memory_mb: u32) -> f64 {
    (f64::from(memory_mb) / 1769.0).clamp(0.05, 6.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(name: &str) -> String {
        format!("--{}", name.replace('_', "-"))
    }

    #[test]
    fn every_bound_is_named_with_the_callers_word_for_it() {
        let day = Duration::from_secs(86_400);
        assert!(check_shape(2048, Some(2), Some(64), day, &flag).is_ok());
        let e = check_shape(300_000, None, None, day, &flag).unwrap_err();
        assert!(e.starts_with("--memory-mb 300000"), "{e}");
        let e = check_shape(2048, Some(600), None, day, &flag).unwrap_err();
        assert!(e.starts_with("--vcpus 600"), "{e}");
        let e = check_shape(2048, None, Some(70_000), day, &flag).unwrap_err();
        assert!(e.starts_with("--slots 70000"), "{e}");
        let e = check_shape(2048, None, None, day * 8, &flag).unwrap_err();
        assert!(e.starts_with("--timeout of 691200 s"), "{e}");
    }
}
