//! The in-place sketch decoded in memory: what it rebuilds is the new version, and it
//! takes about 1.4 symbols a changed piece.

use super::*;
use crate::chunks::rebuild;
use crate::chunks::tests::{file_of, text};

/// Runs the needing side against `new` as the exchange does: the sample, then asks
/// until the full stream decodes. Returns the rebuilt bytes (if it decoded) and the
/// symbols sent in all.
fn exchange(old: &[u8], new: &[u8]) -> (Option<Vec<u8>>, u32) {
    let (old_f, new_f) = (file_of(old), file_of(new));
    let len = new.len() as u64;
    let mut sample = Decoder::new(len, Stream::Sample);
    let theirs = symbols(&new_f, len, Stream::Sample, 0, SAMPLE_SYMBOLS).unwrap();
    sample.add(&old_f, &theirs).unwrap();
    let mut sent = SAMPLE_SYMBOLS;
    let Some(mut ask) = sample.first_ask() else {
        return (None, sent);
    };
    let mut full = Decoder::new(len, Stream::Full);
    loop {
        let from = full.received();
        let theirs = symbols(&new_f, len, Stream::Full, from, from + ask).unwrap();
        sent += ask;
        full.add(&old_f, &theirs).unwrap();
        if full.is_done() {
            break;
        }
        match full.next_ask() {
            Some(n) => ask = n,
            None => return (None, sent),
        }
    }
    let mut out = Vec::new();
    rebuild(&full.into_pieces(&old_f).unwrap(), &old_f, &mut out).unwrap();
    (Some(out), sent)
}

fn scattered(old: &[u8], n: usize, seed: u64) -> Vec<u8> {
    let mut new = old.to_vec();
    let mut x = seed | 1;
    for _ in 0..n {
        x = mix(x);
        let at = (x % (new.len() as u64 - 3)) as usize;
        new[at] = new[at].wrapping_add(1 + (x >> 40) as u8 % 200);
    }
    new
}

#[test]
fn positions_are_a_bijection() {
    for i in [0, 1, 2, 1 << 20, (1 << 61) - 3] {
        assert!(position(i) < Q, "{i}");
        assert_eq!(piece_at(position(i)), i);
    }
    assert_ne!(position(1), position(2) - position(1) + position(0));
}

#[test]
fn field_inverse() {
    for a in [1, 2, 3, 12345, Q - 1, 1 << 60] {
        assert_eq!(mul(a, inverse(a)), 1, "{a}");
    }
    assert_eq!(sub(0, 1), Q - 1);
    assert_eq!(add(Q - 1, 1), 0);
}

#[test]
fn each_piece_is_in_symbol_zero_then_fewer_and_fewer() {
    let n = 100_000u64;
    let mut count = [0u32; 64];
    for p in 0..n {
        let mut last = None;
        for j in indices(p, Stream::Full, 64) {
            assert!(last.is_none_or(|l| j > l), "strictly increasing");
            last = Some(j);
            count[j as usize] += 1;
        }
    }
    assert_eq!(count[0] as u64, n);
    for k in [1usize, 6, 30, 62] {
        let expect = n as f64 * 2.0 / (k as f64 + 2.0);
        let got = f64::from(count[k]);
        assert!(
            (got - expect).abs() < expect * 0.05,
            "symbol {k}: {got} vs {expect}"
        );
    }
}

#[test]
fn scattered_changes_decode_to_the_new_version() {
    let old = text((1 << 20) + 3, 7); // not a whole number of pieces
    for changes in [1, 40, 900] {
        let mut new = scattered(&old, changes, changes as u64);
        let end = new.len() - 1;
        new[end] ^= 0x55; // the last, short piece
        let (rebuilt, sent) = exchange(&old, &new);
        assert!(rebuilt.as_deref() == Some(&new[..]), "{changes} changes");
        assert!(
            sent <= SAMPLE_SYMBOLS + 256 + changes as u32 * 2,
            "{changes}: {sent}"
        );
    }
}

#[test]
fn the_same_version_decodes_at_once() {
    let old = text(1 << 20, 3);
    let (rebuilt, sent) = exchange(&old, &old);
    assert_eq!(rebuilt.as_deref(), Some(&old[..]));
    assert_eq!(sent, SAMPLE_SYMBOLS + MIN_ASK);
}

#[test]
fn too_many_changes_give_up_after_the_sample() {
    let old = text(1 << 20, 5);
    let new = text(1 << 20, 6);
    assert_eq!(exchange(&old, &new), (None, SAMPLE_SYMBOLS));
}

#[test]
fn symbols_outside_the_field_or_cut_short_are_refused() {
    let good = encode(&[Symbol {
        sum: 5,
        weighted: Q - 1,
    }]);
    assert!(decode_symbols(&good).is_some());
    assert!(decode_symbols(&good[..15]).is_none());
    let bad = encode(&[Symbol {
        sum: Q,
        weighted: 0,
    }]);
    assert!(decode_symbols(&bad).is_none());
}

#[test]
fn lying_symbols_do_not_rebuild_a_wrong_file_silently() {
    let old = text(1 << 20, 9);
    let f = file_of(&old);
    let mut d = Decoder::new(old.len() as u64, Stream::Full);
    let mut x = 1;
    let lies: Vec<Symbol> = (0..512)
        .map(|_| {
            x = mix(x + 1);
            Symbol {
                sum: x % Q,
                weighted: mix(x) % Q,
            }
        })
        .collect();
    d.add(&f, &lies).unwrap();
    assert!(!d.is_done(), "random symbols are not a decoded change");
    let too_many = vec![Symbol::default(); MAX_SYMBOLS as usize];
    assert!(d.add(&f, &too_many).is_err());
}

/// `cargo test --release --lib chunks::inplace::tests::costs -- --ignored --nocapture`:
/// bench-sync.sh's f in memory (chunks::tests's rows), symbols and bytes.
#[test]
#[ignore]
fn costs() {
    let old = crate::chunks::tests::rows(60 << 20, 101);
    let mut new = old.clone();
    crate::chunks::tests::update_rows(&mut new, 1);
    let changed = old
        .chunks(PIECE as usize)
        .zip(new.chunks(PIECE as usize))
        .filter(|(a, b)| a != b)
        .count();
    let t = std::time::Instant::now();
    let (rebuilt, sent) = exchange(&old, &new);
    assert!(rebuilt.as_deref() == Some(&new[..]));
    let total = t.elapsed();
    let t = std::time::Instant::now();
    symbols(&file_of(&new), new.len() as u64, Stream::Full, 0, sent).unwrap();
    println!(
        "500 row updates in 60 MiB: {changed} pieces changed, {sent} symbols ({} B); \
         {total:?} in all, one side's pass {:?}",
        sent as usize * SYMBOL,
        t.elapsed()
    );
}
