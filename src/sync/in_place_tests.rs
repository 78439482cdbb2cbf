//! A big file changed in many scattered places while apart, of the same size on both
//! sides (a database's pages): after the leaf sketch, too small for so many changes,
//! the in-place sketch rebuilds it from about a symbol and a half per changed 7-byte
//! piece, not a walk down the chunk tree.

use super::latency_tests::converge;
use super::sim_tests::MemLink;
use crate::chunks::tests::text;
use std::sync::atomic::Ordering;

/// Bytes the senders of two nodes holding `held` write until they converge.
fn bytes_to_converge(held: &[Vec<(usize, String)>; 2]) -> u64 {
    const BUDGET: u64 = 1 << 40;
    let budget = |l: &MemLink| l.cut_after.store(BUDGET, Ordering::SeqCst);
    let left = |l: &MemLink| l.cut_after.load(Ordering::SeqCst);
    let (_, left) = converge(held, budget, left);
    left.iter().map(|l| BUDGET - l).sum()
}

/// `n` bytes of `old` changed, spread evenly, each to another letter.
fn scattered(old: &str, n: usize) -> String {
    let mut b = old.as_bytes().to_vec();
    let step = b.len() / (n + 1);
    for i in 1..=n {
        b[i * step] = if b[i * step] == b'z' { b'a' } else { b'z' };
    }
    String::from_utf8(b).expect("letters")
}

#[test]
fn many_scattered_changes_cost_their_pieces_not_a_walk_of_the_tree() {
    // 2 MiB, 300 bytes changed 7 KB apart: 300 leaves of about 512 bytes differ, far
    // more than the leaf sketch's 40 cells decode
    let old = String::from_utf8(text(2 << 20, 11)).expect("letters");
    let new = scattered(&old, 300);
    let held = [vec![(0, new)], vec![(0, old)]];
    let bytes = bytes_to_converge(&held);
    println!("300 scattered changes in 2 MiB: {bytes} bytes written");
    // the sample (1.5 KB) and about 450 symbols of 16 bytes: 9 KB; down the tree each
    // changed leaf costs its siblings at every level, about 60 KB
    assert!(bytes < 20_000, "{bytes} bytes");
}

#[test]
fn a_change_too_big_for_the_offered_cells_asks_for_more_of_them() {
    // 2 MiB, 4 KiB of other letters written in the middle: about twenty differing
    // edges, more than the offer's 16 cells decode mostly; 32 more cells (448 B)
    // then do, and only the changed bytes follow
    let old = String::from_utf8(text(2 << 20, 13)).expect("letters");
    let mut new = old.clone().into_bytes();
    let other = text(4096, 14);
    new[1 << 20..(1 << 20) + 4096].copy_from_slice(&other);
    let new = String::from_utf8(new).expect("letters");
    let held = [vec![(0, new)], vec![(0, old)]];
    let bytes = bytes_to_converge(&held);
    println!("4 KiB written into 2 MiB: {bytes} bytes written");
    // down the tree from the root, the walk's sibling hashes come to about 4 KB more
    assert!(bytes < 6_500, "{bytes} bytes");
}
