//! The version archive on the live path (two in-process nodes, paused clock): a
//! version made on a node and replaced there by a peer's in-place update is kept in
//! that node's archive, so that no version is lost when the peer's user saved over it
//! without having seen it; a version that came from the peer is not copied again.

use super::sim_tests::{connect, debug_logs, node, paused_runtime, settled, Node};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// 200 lines of text; versions differ by `tag` at byte 3,000, written in place.
fn text(tag: &str) -> String {
    let mut t = "the same line of a long document\n".repeat(200);
    t.replace_range(3_000..3_000 + tag.len(), tag);
    t
}

fn kept(n: &Node, body: &str) -> bool {
    n.archived().values().any(|v| v == body)
}

fn edit(n: &Node, tag: &str) {
    n.patch(0, 3_000, tag.as_bytes());
}

#[test]
fn a_version_made_here_is_archived_when_a_peer_update_replaces_it() {
    debug_logs();
    paused_runtime().block_on(async {
        let nodes = [node(), node()];
        let up = Arc::new(AtomicBool::new(true));
        let links: Vec<_> = [(0, 1), (1, 0)]
            .map(|(a, b)| connect(&nodes[a], &nodes[b], &up))
            .into();
        let (a, b) = (&nodes[0], &nodes[1]);
        a.write(0, &text("first"));
        assert!(settled(&nodes, 30).await, "the first version reaches b");
        edit(b, "two-b");
        assert!(settled(&nodes, 30).await, "b's version reaches a");
        assert_eq!(a.tree()["f0"], text("two-b"));
        assert!(
            kept(a, &text("first")),
            "a keeps its own version b replaced"
        );
        edit(a, "three");
        assert!(settled(&nodes, 30).await, "a's next version reaches b");
        assert!(
            kept(b, &text("two-b")),
            "b keeps its own version a replaced"
        );
        edit(a, "four!");
        assert!(settled(&nodes, 30).await, "a's last version reaches b");
        assert_eq!(b.tree()["f0"], text("four!"));
        assert!(
            !kept(b, &text("three")),
            "b does not copy a version it got from a"
        );
        for (l, t) in links {
            t.abort();
            l.cut();
        }
    });
}
