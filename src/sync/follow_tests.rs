//! First contact led by one side (`follow`): whichever node leads, each node's own
//! entries (files in shared directories, directories of its own, empty ones, its
//! version of a file both changed) reach the other, and only the follower follows.

use super::sim_tests::{connect, node_with, paused_runtime, settled};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A tree `dirs` directories wide that both nodes share, with `name`'s own entries.
fn own_tree(name: &'static str, dirs: usize) -> impl Fn(&Path) {
    move |data: &Path| {
        for d in 0..dirs {
            std::fs::create_dir(data.join(format!("d{d}"))).unwrap();
            std::fs::write(data.join(format!("d{d}/same")), format!("same {d}\n")).unwrap();
        }
        std::fs::write(data.join(format!("d0/{name}-only")), name).unwrap();
        std::fs::create_dir_all(data.join(format!("{name}dir/sub"))).unwrap();
        std::fs::write(data.join(format!("{name}dir/sub/f")), name).unwrap();
        std::fs::create_dir(data.join(format!("d1/{name}-empty"))).unwrap();
        std::fs::write(data.join("d1/edited"), format!("{name} edit")).unwrap();
    }
}

fn pair_with_own_entries(dirs: usize) {
    paused_runtime().block_on(async {
        let nodes = [
            node_with(&own_tree("x", dirs)),
            node_with(&own_tree("y", dirs)),
        ];
        let up = Arc::new(AtomicBool::new(true));
        let links: Vec<_> = [(0, 1), (1, 0)]
            .map(|(a, b)| connect(&nodes[a], &nodes[b], &up))
            .into();
        assert!(settled(&nodes, 120).await, "the pair converges");
        let tree = nodes[0].tree();
        for name in ["x", "y"] {
            assert_eq!(
                tree.get(&format!("d0/{name}-only")),
                Some(&name.to_string())
            );
            assert_eq!(
                tree.get(&format!("{name}dir/sub/f")),
                Some(&name.to_string())
            );
            for n in &nodes {
                assert!(
                    n.data.join(format!("d1/{name}-empty")).is_dir(),
                    "{name}-empty"
                );
            }
        }
        for d in 0..dirs {
            assert_eq!(
                tree.get(&format!("d{d}/same")),
                Some(&format!("same {d}\n"))
            );
        }
        assert_eq!(tree.len(), dirs + 5, "nothing more, nothing less: {tree:?}");
        let kept: Vec<String> = nodes.iter().flat_map(|n| n.everything()).collect();
        for edit in ["x edit", "y edit"] {
            assert!(kept.iter().any(|k| k == edit), "{edit} is kept somewhere");
        }
        let followed: Vec<u64> = nodes
            .iter()
            .map(|n| n.receiver.handoffs.followed.load(Ordering::Relaxed))
            .collect();
        assert_eq!(
            followed.iter().sum::<u64>(),
            1,
            "one follower: {followed:?}"
        );
        for (l, t) in links {
            t.abort();
            l.cut();
        }
    });
}

#[test]
fn the_follower_sends_its_own_entries_by_the_leaders_ask() {
    pair_with_own_entries(8);
}

#[test]
fn the_follower_sends_its_own_entries_under_a_directory_sketch() {
    // over `digests::SKETCH_MIN_DIRS` directories: the leader's summary is one sketch
    pair_with_own_entries(1_100);
}
