//! The fuzz targets' driver (tests only): proptest over arbitrary or mutated input,
//! `FUZZ_CASES` cases (default 256, what CI runs), or as many as fit in `FUZZ_SECS`
//! seconds when that is set (a long run by hand). Prints how many ran.

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::time::{Duration, Instant};

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs `test` on values of `strategy` until the case count or time budget is spent;
/// panics with the (shrunk) failing input.
pub fn fuzz<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let secs = env("FUZZ_SECS").map(Duration::from_secs);
    let batch = env("FUZZ_CASES").unwrap_or(256) as u32;
    let (start, mut total) = (Instant::now(), 0u64);
    loop {
        let cfg = Config {
            cases: batch,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(
            cfg,
            proptest::test_runner::TestRng::from_seed(
                proptest::test_runner::RngAlgorithm::ChaCha,
                &seed(total),
            ),
        );
        if let Err(e) = runner.run(&strategy, &test) {
            panic!("{name}: {e}");
        }
        total += u64::from(batch);
        if secs.is_none_or(|s| start.elapsed() >= s) {
            break;
        }
    }
    eprintln!("{name}: {total} cases in {:.1?}", start.elapsed());
}

/// A different seed per batch (the batch's first case number), so that long runs
/// explore and short ones repeat.
fn seed(n: u64) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&n.to_le_bytes());
    s[8..16].copy_from_slice(&0x5f_7e_11_7a_u64.to_le_bytes());
    s
}
