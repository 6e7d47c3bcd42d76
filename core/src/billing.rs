//! DESIGN.md's cost model: Lambda x86 pricing of worker lifetimes.

use std::time::Duration;

/// USD per GB-second of x86 Lambda.
pub const PRICE_PER_GB_SECOND: f64 = 0.0000166667;
/// USD per invocation.
pub const PRICE_PER_REQUEST: f64 = 0.20 / 1_000_000.0;

/// Billed GB-milliseconds of one invocation: duration rounded up to the millisecond, times GB.
pub fn billed_gb_ms(alive: Duration, memory_mb: u32) -> f64 {
    let ms = alive.as_nanos().div_ceil(1_000_000) as f64;
    ms * f64::from(memory_mb) / 1024.0
}

/// The bill in USD for `gb_ms` of compute over `invocations` requests.
pub fn cost_usd(gb_ms: f64, invocations: u64) -> f64 {
    gb_ms / 1000.0 * PRICE_PER_GB_SECOND + invocations as f64 * PRICE_PER_REQUEST
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_gb_for_one_ms_costs_what_design_md_says() {
        let gb_ms = billed_gb_ms(Duration::from_micros(1), 2048);
        assert_eq!(gb_ms, 2.0, "a partial millisecond is billed as a whole one");
        let per_ms = cost_usd(gb_ms, 0);
        // DESIGN.md rounds it to 0.0000000333.
        assert!((per_ms / 0.0000000333 - 1.0).abs() < 2e-3, "{per_ms}");
    }

    #[test]
    fn request_fee_is_added_per_invocation() {
        let c = cost_usd(0.0, 1_000_000);
        assert!((c - 0.20).abs() < 1e-12, "{c}");
    }
}
