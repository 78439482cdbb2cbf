//! The exchange run in memory between two versions: the rebuilt file is the new
//! version, and what crossed (hashes, answers, leaf bytes) stays close to the change.

use super::*;
use proptest::prelude::*;

/// Text-like bytes (lowercase letters, xorshift).
pub(crate) fn text(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'a' + (x % 26) as u8
        })
        .collect()
}

/// Wire-size estimate of one offer: 6-byte hash, the non-zero bytes of its 4-byte
/// length (the stream's compression takes the rest and the leaf flag).
fn offer_bytes(o: &Offer) -> usize {
    6 + (64 - o.len.leading_zeros() as usize).div_ceil(8).max(1)
}

struct Run {
    rebuilt: Vec<u8>,
    /// Offers, answers (2 bits each) and zstd-compressed leaf bytes.
    cost: usize,
    /// Leaf and block bytes sent, before compression.
    sent: usize,
    /// Block hashes sent.
    hashes: usize,
    rounds: usize,
    /// Nodes offered.
    offered: usize,
    /// Blocks described by their pieces.
    fine: usize,
    /// Gaps matched against the old bytes.
    matched: usize,
}

/// `bytes` in a temporary file.
pub(crate) fn file_of(bytes: &[u8]) -> std::fs::File {
    let f = tempfile::tempfile().unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, bytes, 0).unwrap();
    f
}

/// The bytes the offering side sends for `round`, and its block hashes.
fn sent(new: &[u8], round: &Round) -> (Vec<Vec<u8>>, Vec<u64>) {
    let at = |&(o, l): &(u64, u64)| &new[o as usize..(o + l) as usize];
    let bytes = round.send.iter().map(|e| at(e).to_vec()).collect();
    let blocks = round.describe.iter().flat_map(|e| block_hashes(at(e)));
    let fine = round.fine.iter().flat_map(|e| fine_hashes(at(e)));
    (bytes, blocks.chain(fine).collect())
}

/// The ops and literal bytes the offering side sends for the gaps `round` matched.
fn matched(new: &[u8], round: &Round) -> (Vec<u8>, Vec<u8>) {
    let (mut ops, mut literal) = (Vec::new(), Vec::new());
    for (at, len, hole) in &round.matched {
        let (o, l) = matching::encode(&new[*at as usize..(at + len) as usize], hole);
        ops.extend(o);
        literal.extend(l);
    }
    (ops, literal)
}

fn run(old: &[u8], new: &[u8]) -> Run {
    let (a, b) = (Tree::from_bytes(old), Tree::from_bytes(new));
    let old_file = file_of(old);
    let mut offers = Offers::new(&b);
    let mut needs = Needs::new(&a, new.len() as u64);
    let sketch =
        (b.level(0).len() >= sketch::MIN_LEAVES).then(|| sketch::encode(&b, sketch::CELLS));
    // as the sync layer offers: the root alone with a sketch, else the top level
    let top = match sketch {
        Some(_) => vec![offers.root()],
        None => offers.top(),
    };
    let mut cost: usize = top.iter().map(offer_bytes).sum();
    cost += sketch.as_ref().map_or(0, Vec::len);
    let tops: Vec<(u64, u64)> = top.iter().map(|o| (o.hash, o.len)).collect();
    let decoded = sketch.and_then(|s| sketch::decode(&s, &a, new.len() as u64, &tops));
    let (mut picks, mut answers) = match decoded {
        Some(leaves) => {
            let p = needs.sketched(&leaves, &old_file).unwrap();
            cost += matching::encode_holes(&p.holes).len();
            (Some((p.leaves, p.holes)), p.answers)
        }
        None => (None, needs.first(&top).unwrap()),
    };
    let (mut rounds, mut sent_bytes, mut hashes) = (1, 0, 0);
    let (mut offered, mut fine, mut gaps) = (top.len(), 0, 0);
    while !needs.is_done() {
        cost += answers.len().div_ceil(4);
        let round = match picks.take() {
            Some((p, holes)) => {
                cost += p.len() * 3; // (gaps between picked leaves)
                offers.pick(&p, &answers, holes).unwrap()
            }
            None => offers.next(&answers).unwrap(),
        };
        let (bytes, blocks) = sent(new, &round);
        let (ops, literal) = matched(new, &round);
        gaps += round.matched.len();
        cost += ops.len();
        sent_bytes += literal.len();
        offered += round.children.iter().flatten().count();
        fine += round.fine.len();
        cost += round
            .children
            .iter()
            .flatten()
            .map(offer_bytes)
            .sum::<usize>();
        cost += blocks.len() * 6;
        hashes += blocks.len();
        sent_bytes += bytes.iter().map(Vec::len).sum::<usize>();
        let data = [bytes.concat(), literal.clone()].concat();
        if !data.is_empty() {
            cost += zstd::bulk::compress(&data, 3).unwrap().len();
        }
        answers = needs
            .next(round, bytes, &blocks, (&ops, &literal), &old_file)
            .unwrap();
        rounds += 1;
        assert!(rounds < 40, "the exchange does not end");
    }
    assert!(offers.next(&answers).unwrap() == Round::default() && offers.is_done());
    let mut rebuilt = Vec::new();
    let n = rebuild(&needs.into_pieces(), &old_file, &mut rebuilt).unwrap();
    assert_eq!(n, rebuilt.len() as u64);
    Run {
        rebuilt,
        cost,
        sent: sent_bytes,
        hashes,
        rounds,
        offered,
        fine,
        matched: gaps,
    }
}

#[test]
fn an_insert_at_the_top_of_a_big_text_costs_about_one_leaf() {
    let old = text(32 << 20, 1);
    let mut new = old.clone();
    new.splice(0..0, text(100, 2));
    let r = run(&old, &new);
    assert!(r.rebuilt == new);
    eprintln!(
        "100 B inserted at the top of 32 MiB: {} B in {} rounds",
        r.cost, r.rounds
    );
    assert!(r.cost < 3000, "{} bytes", r.cost);
    // the sketch decodes: the pick matches the gap, whose bytes come next
    assert_eq!((r.rounds, r.matched), (2, 1));
    assert!(r.sent <= 200, "{} bytes sent", r.sent);
}

#[test]
fn a_small_edit_in_the_middle_costs_about_one_leaf() {
    let old = text(16 << 20, 3);
    let mut new = old.clone();
    new[8 << 20..(8 << 20) + 20].copy_from_slice(&text(20, 4));
    let r = run(&old, &new);
    assert!(r.rebuilt == new);
    eprintln!(
        "20 B changed in 16 MiB: {} B in {} rounds",
        r.cost, r.rounds
    );
    assert!(r.cost < 2500, "{} bytes", r.cost);
}

/// With a sketch the root alone is offered: changes too many for the sketch expand
/// it to the top level, and the exchange goes down the tree from there.
#[test]
fn a_sketch_that_does_not_decode_expands_the_root() {
    let old = text(2 << 20, 11);
    let mut new = old.clone();
    for k in 0..40 {
        new[k * 50_000..k * 50_000 + 8].copy_from_slice(b"CHANGED!");
    }
    let (a, b) = (Tree::from_bytes(&old), Tree::from_bytes(&new));
    assert!(b.level(0).len() >= sketch::MIN_LEAVES && b.top().len() > 1);
    let root = [(b.root().hash, new.len() as u64)];
    let s = sketch::encode(&b, sketch::CELLS);
    assert_eq!(sketch::decode(&s, &a, new.len() as u64, &root), None);
    let mut needs = Needs::new(&a, new.len() as u64);
    assert_eq!(needs.first(&[b.root()]).unwrap().len(), 1);
    let mut offers = Offers::new(&b);
    offers.root();
    let round = offers.next(&[Answer::Expand]).unwrap();
    let leaf = b.depth() == 1;
    let top: Vec<Offer> = (b.top().iter())
        .map(|n| Offer {
            hash: n.hash,
            len: n.len,
            leaf,
        })
        .collect();
    assert_eq!(round.children, vec![top]);
    let r = run(&old, &new);
    assert!(r.rebuilt == new);
    assert!(r.offered > 1 + b.top().len(), "{} offered", r.offered);
}

#[test]
fn unrelated_versions_and_empty_ones_rebuild_too() {
    for (old, new) in [
        (text(300_000, 5), text(200_000, 6)),
        (Vec::new(), text(50_000, 7)),
        (text(50_000, 8), Vec::new()),
        (vec![0; 1 << 20], vec![0; 3 << 20]),
    ] {
        let r = run(&old, &new);
        assert!(r.rebuilt == new, "{} -> {} bytes", old.len(), new.len());
    }
}

#[test]
fn a_peer_that_breaks_the_rounds_is_refused() {
    let (old, new) = (text(200_000, 1), text(200_000, 2));
    let (a, b) = (Tree::from_bytes(&old), Tree::from_bytes(&new));
    let mut offers = Offers::new(&b);
    let top = offers.top();
    // a top level that does not cover the size
    assert!(Needs::new(&a, 5).first(&top).is_err());
    let mut needs = Needs::new(&a, new.len() as u64);
    let answers = needs.first(&top).unwrap();
    // answers that do not match the offers
    assert!(Offers::new(&b).next(&answers).is_err());
    let round = offers.next(&answers).unwrap();
    // children that do not add up to their parent
    let mut bad = round.clone();
    bad.children[0][0].len += 1;
    let mut n2 = Needs::new(&a, new.len() as u64);
    n2.first(&top).unwrap();
    let old_file = file_of(&old);
    assert!(n2.next(bad, vec![], &[], (&[], &[]), &old_file).is_err());
    // leaf bytes asked for that never come (or come with the wrong length), block
    // hashes short of the described leaves' blocks, or more than were asked for
    let mut answers = needs
        .next(round, vec![], &[], (&[], &[]), &old_file)
        .unwrap();
    while !answers.contains(&Answer::Describe) {
        let round = offers.next(&answers).unwrap();
        let (bytes, blocks) = sent(&new, &round);
        answers = needs
            .next(round, bytes, &blocks, (&[], &[]), &old_file)
            .unwrap();
    }
    let round = offers.next(&answers).unwrap();
    let (bytes, blocks) = sent(&new, &round);
    assert!(!blocks.is_empty());
    let (mut n3, mut n4) = (needs.clone(), needs.clone());
    assert!(n3
        .next(
            round.clone(),
            bytes.clone(),
            &blocks[1..],
            (&[], &[]),
            &old_file
        )
        .is_err());
    let more = [&blocks[..], &[7]].concat();
    assert!(n4
        .next(round.clone(), bytes.clone(), &more, (&[], &[]), &old_file)
        .is_err());
    let mut answers = needs
        .next(round, bytes, &blocks, (&[], &[]), &old_file)
        .unwrap();
    while !answers.contains(&Answer::Send) {
        let round = offers.next(&answers).unwrap();
        let (bytes, blocks) = sent(&new, &round);
        answers = needs
            .next(round, bytes, &blocks, (&[], &[]), &old_file)
            .unwrap();
    }
    let round = offers.next(&answers).unwrap();
    assert!(!round.send.is_empty());
    let short: Vec<Vec<u8>> = round
        .send
        .iter()
        .map(|&(_, l)| vec![0; l as usize - 1])
        .collect();
    let (_, blocks) = sent(&new, &round);
    let mut n5 = needs;
    assert!(n5
        .next(round, short, &blocks, (&[], &[]), &old_file)
        .is_err());
}

#[test]
fn appended_bytes_are_sent_not_described() {
    // no old bytes lie where appended leaves go: describing them would only add hashes
    // (whether the old last leaf is found depends on where it was cut: several tries)
    for seed in 13..18 {
        let old = text((8 << 20) + seed as usize * 1001, seed);
        let new = [&old[..], &text(1 << 20, seed + 100)].concat();
        let r = run(&old, &new);
        assert!(r.rebuilt == new);
        eprintln!("1 MiB appended: {} B, {} block hashes", r.cost, r.hashes);
        let most = 2 * LEAF_MAX as usize / BLOCK as usize;
        assert!(r.hashes <= most, "{} hashes", r.hashes);
    }
}

#[test]
fn a_described_leaf_costs_its_changed_blocks() {
    // 4 KiB of new bytes written over 64 MiB: the leaves around them are described,
    // and only the blocks that changed cross (plus one each side at most)
    let old = text(64 << 20, 11);
    let mut new = old.clone();
    let noise: Vec<u8> = text(4096, 12).iter().map(|b| b.wrapping_mul(7)).collect();
    new[(40 << 20) + 77..(40 << 20) + 77 + 4096].copy_from_slice(&noise);
    let r = run(&old, &new);
    assert!(r.rebuilt == new);
    eprintln!(
        "4 KiB written into 64 MiB: {} B in {} rounds, {} B of leaves and blocks",
        r.cost, r.rounds, r.sent
    );
    assert!(r.sent <= 4096 + 2 * BLOCK as usize, "{} bytes sent", r.sent);
    assert!(r.cost < 4096 + 1500, "{} bytes", r.cost);
}

#[test]
fn scattered_small_changes_cost_their_fine_pieces() {
    // 40 changes of 3 bytes (and one of them an insert, one a delete), each in its own
    // leaf: the blocks around them are described by 32-byte pieces, and each change
    // costs a piece or two, not a 128-byte block
    let old = text(4 << 20, 21);
    let mut new = old.clone();
    for k in 0..40 {
        let at = 1000 + k * 100_003;
        new[at..at + 3].copy_from_slice(b"XYZ");
    }
    new.splice(2_000_500..2_000_500, *b"inserted");
    new.drain(3_000_700..3_000_705);
    let r = run(&old, &new);
    assert!(r.rebuilt == new);
    eprintln!(
        "42 small changes in 4 MiB: {} B in {} rounds, {} B of leaves and blocks",
        r.cost, r.rounds, r.sent
    );
    assert!(r.fine >= 40, "{} blocks described by their pieces", r.fine);
    assert!(r.sent <= 42 * 2 * FINE as usize, "{} bytes sent", r.sent);
}

#[test]
fn piece_hashes_that_do_not_fit_are_refused() {
    let old = text(1 << 20, 25);
    let mut new = old.clone();
    for k in 0..20 {
        new[700 + k * 50_000] ^= 1;
    }
    let (a, b) = (Tree::from_bytes(&old), Tree::from_bytes(&new));
    let old_file = file_of(&old);
    let mut offers = Offers::new(&b);
    let mut needs = Needs::new(&a, new.len() as u64);
    let mut answers = needs.first(&offers.top()).unwrap();
    loop {
        let round = offers.next(&answers).unwrap();
        let (bytes, hashes) = sent(&new, &round);
        if !round.fine.is_empty() {
            let short = hashes[..hashes.len() - 1].to_vec();
            let long = [hashes.clone(), vec![7]].concat();
            for wrong in [short, long] {
                let (mut n, r) = (needs.clone(), round.clone());
                assert!(n
                    .next(r, bytes.clone(), &wrong, (&[], &[]), &old_file)
                    .is_err());
            }
            answers = needs
                .next(round, bytes, &hashes, (&[], &[]), &old_file)
                .unwrap();
            break;
        }
        answers = needs
            .next(round, bytes, &hashes, (&[], &[]), &old_file)
            .unwrap();
        assert!(
            !needs.is_done(),
            "the exchange ended before any block was described"
        );
    }
    assert!(
        answers.contains(&Answer::Send),
        "the changed pieces are asked for"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn many_small_edits_rebuild_the_new_version(
        seed in 1u64..1000,
        edits in proptest::collection::vec((0f64..1.0, 0usize..3, 1usize..40), 8..40),
    ) {
        // enough changes for the blocks around them to be described finely; inserts
        // and deletes inside a block shift its pieces
        let old = text(600_000, seed);
        let mut new = old.clone();
        for (at, kind, n) in edits {
            let at = (at * (new.len() - 64) as f64) as usize;
            let end = (at + n).min(new.len());
            match kind {
                0 => { new.splice(at..at, text(n, seed + 1)); }
                1 => { new.drain(at..end); }
                _ => new[at..end].copy_from_slice(&text(end - at, seed + 2)),
            }
        }
        prop_assert!(run(&old, &new).rebuilt == new);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_edits_rebuild_the_new_version(
        seed in 1u64..1000,
        len in 0usize..300_000,
        edits in edits(0..5000, 0..6),
    ) {
        // inserts, deletes, overwrites, moves (a run cut and put back elsewhere) and
        // duplicated blocks (a run copied elsewhere)
        let old = text(len, seed);
        let new = edited(&old, edits, seed);
        prop_assert!(run(&old, &new).rebuilt == new);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    /// Files big enough for a sketch: a few edits decode, and their gaps are matched
    /// against the old bytes ([`matching`]).
    #[test]
    fn any_few_edits_of_a_sketched_file_rebuild_the_new_version(
        seed in 1u64..1000,
        edits in edits(0..3000, 1..3),
    ) {
        let old = text(2 << 20, seed);
        let new = edited(&old, edits, seed);
        prop_assert!(Tree::from_bytes(&new).level(0).len() >= sketch::MIN_LEAVES);
        let r = run(&old, &new);
        prop_assert!(r.rebuilt == new);
        prop_assert!(r.matched > 0 || r.rounds > 2, "a sketch that decodes matches");
    }
}

/// One edit of [`edit`]: where (a fraction), kind, about how many bytes, whither.
pub(crate) type Edit = (f64, usize, usize, f64);

/// `count` edits of any kind, each of `run` bytes or so.
pub(crate) fn edits(
    run: std::ops::Range<usize>,
    count: std::ops::Range<usize>,
) -> impl Strategy<Value = Vec<Edit>> {
    proptest::collection::vec((0f64..1.0, 0usize..5, run, 0f64..1.0), count)
}

/// `old` with `edits` made to it in turn.
pub(crate) fn edited(old: &[u8], edits: Vec<Edit>, seed: u64) -> Vec<u8> {
    let mut new = old.to_vec();
    for e in edits {
        edit(&mut new, e, seed);
    }
    new
}

/// One edit of `new` at `at` (a fraction of its length) of about `n` bytes: 0 an
/// insert, 1 a delete, 2 an overwrite, 3 a move (the run cut and put back at `to`),
/// otherwise a duplicate (the run copied to `to`).
pub(crate) fn edit(new: &mut Vec<u8>, (at, kind, n, to): Edit, seed: u64) {
    let at = (at * new.len() as f64) as usize;
    let end = (at + n).min(new.len());
    let to_of = |len: usize| (to * len as f64) as usize;
    match kind {
        0 => drop(new.splice(at..at, text(n, seed + 1))),
        1 => drop(new.drain(at..end)),
        2 => new[at..end].copy_from_slice(&text(end - at, seed + 2)),
        3 => {
            let run: Vec<u8> = new.drain(at..end).collect();
            let to = to_of(new.len());
            new.splice(to..to, run);
        }
        _ => {
            let run = new[at..end].to_vec();
            let to = to_of(new.len());
            new.splice(to..to, run);
        }
    }
}

/// SQLite-like rows (bench-sync.sh's f): 600 hex characters, then random bytes, 1,365
/// bytes a row; an update changes a row's first byte and 10 characters at 590.
pub(crate) fn rows(n: usize, seed: u64) -> Vec<u8> {
    let t = text(n, seed);
    (0..n)
        .map(|i| match i % 1365 {
            0..600 => b"0123456789abcdef"[(t[i] % 16) as usize],
            _ => t[i].wrapping_mul(t[(i * 7) % n]),
        })
        .collect()
}

/// 500 row updates of [`rows`]: each row's first byte and 10 characters at 590.
#[allow(clippy::ptr_arg)] // (the type of `costs`'s edits)
pub(crate) fn update_rows(v: &mut Vec<u8>, s: u64) {
    let rows = v.len() / 1365;
    let mut x = (s * 0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..500 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = (x as usize % rows) * 1365;
        v[at] = v[at].wrapping_add(1);
        v[at + 590..at + 600].copy_from_slice(&text(10, x));
    }
}

/// Leaf sizes and fanout by benchmark:
/// `cargo test --release --lib chunks::tests::costs -- --ignored --nocapture` prints the
/// mean cost of each workload over five seeds (`COSTS_ONLY=<part of a name>`: only
/// those workloads).
#[test]
#[ignore]
fn costs() {
    type Edit = fn(&mut Vec<u8>, u64);
    type Make = fn(usize, u64) -> Vec<u8>;
    let work: [(&str, usize, Make, Edit); 5] = [
        (
            "500 SQLite-like row updates in 60 MiB",
            60 << 20,
            rows,
            update_rows,
        ),
        (
            "100 B inserted at the top of 32 MiB",
            32 << 20,
            text,
            |v, s| {
                v.splice(0..0, text(100, s));
            },
        ),
        (
            "20 B changed in the middle of 16 MiB",
            16 << 20,
            text,
            |v, s| {
                let at = v.len() / 2 + s as usize * 977;
                v[at..at + 20].copy_from_slice(&text(20, s));
            },
        ),
        (
            "4 KiB of random bytes written into 64 MiB",
            64 << 20,
            text,
            |v, s| {
                let at = (s as usize * 7_777_777) % (v.len() - 4096);
                let noise: Vec<u8> = text(4096, s).iter().map(|b| b.wrapping_mul(7)).collect();
                v[at..at + 4096].copy_from_slice(&noise);
            },
        ),
        ("1 MiB of text appended to 8 MiB", 8 << 20, text, |v, s| {
            v.extend(text(1 << 20, s));
        }),
    ];
    for (what, len, make, edit) in work {
        if !what.contains(&std::env::var("COSTS_ONLY").unwrap_or_default()) {
            continue;
        }
        let runs: Vec<Run> = (1..=5)
            .map(|s| {
                let old = make(len, 100 + s);
                let mut new = old.clone();
                edit(&mut new, s);
                run(&old, &new)
            })
            .collect();
        let mean = runs.iter().map(|r| r.cost).sum::<usize>() / runs.len();
        let rounds = runs.iter().map(|r| r.rounds).max().unwrap_or(0);
        let sent = runs.iter().map(|r| r.sent).sum::<usize>() / runs.len();
        let hashes = runs.iter().map(|r| r.hashes).sum::<usize>() / runs.len();
        let offered = runs.iter().map(|r| r.offered).sum::<usize>() / runs.len();
        println!(
            "{what}: {mean} B (mean of 5), at most {rounds} rounds; \
             {sent} B of leaves and blocks, {hashes} block hashes, {offered} nodes offered"
        );
    }
}
