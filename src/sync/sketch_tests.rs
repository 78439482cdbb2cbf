//! Big files that differ between two adopted folders (no shared history) converge
//! through the chunk exchange whatever the edits: its sketch decodes for a change or
//! two, and inserts, deletes, overwrites, moves and copied runs (which fork the walk:
//! then the tree is walked) all end in the same bytes on both sides.

use super::latency_tests::round_trips;
use crate::chunks::tests::{edited, edits, text};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn big_files_edited_apart_converge(
        seed in 1u64..1000,
        edits in edits(1..20_000, 1..4),
    ) {
        // 1.2 MB: enough leaves (2,048) for the offer to carry a sketch
        let old = text(1_200_000, seed);
        let new = edited(&old, edits, seed);
        let [old, new] = [old, new].map(|b| String::from_utf8(b).expect("text"));
        let held = [vec![(0, new)], vec![(0, old)]];
        let trips = round_trips(&held); // asserts that both hold the same tree
        prop_assert!(trips < 30.0, "{trips:.1} round trips");
    }
}
