//! First contact led by one side (`follow`): whichever node leads, each node's own
//! entries (files in shared directories, directories of its own, empty ones, its
//! version of a file both changed) reach the other, and only the follower follows.

use super::sim_tests::{connect, node_with, paused_runtime, settled, MemLink, Node};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::task::JoinHandle;

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

type Links = Vec<(Arc<MemLink>, JoinHandle<()>)>;

/// Connects both ways and waits until the pair has converged.
async fn converged(nodes: &[Arc<Node>; 2]) -> Links {
    let up = Arc::new(AtomicBool::new(true));
    let links: Links = [(0, 1), (1, 0)]
        .map(|(a, b)| connect(&nodes[a], &nodes[b], &up))
        .into();
    assert!(settled(nodes, 120).await, "the pair converges");
    links
}

/// Stops the senders and cuts the links.
fn unlink(links: Links) {
    for (l, t) in links {
        t.abort();
        l.cut();
    }
}

fn pair_with_own_entries(dirs: usize) {
    paused_runtime().block_on(async {
        let nodes = [
            node_with(&own_tree("x", dirs)),
            node_with(&own_tree("y", dirs)),
        ];
        let links = converged(&nodes).await;
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
        unlink(links);
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

/// 256 KiB of lines naming `who`, its mtime `secs` after the epoch.
fn big_file(who: &'static str, secs: u64) -> impl Fn(&Path) {
    move |data: &Path| {
        let text: String = (0..8192).map(|i| format!("{who} line {i:>20}\n")).collect();
        let path = data.join("big");
        std::fs::write(&path, text).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
            .unwrap();
    }
}

/// Two adopted copies of a big file, the newer on the node that leads or follows as
/// `newer_leads` says: the newer reaches the other, which archives its own.
fn pair_big_copies(newer_leads: bool) {
    let nodes = loop {
        let nodes = [
            node_with(&big_file("old", 1_600_000_000)),
            node_with(&big_file("new", 1_700_000_000)),
        ];
        let (old, new) = (nodes[0].id.to_string(), nodes[1].id.to_string());
        if crate::sync::follow::leads(&new, &old) == newer_leads {
            break nodes;
        }
    };
    paused_runtime().block_on(async {
        let links = converged(&nodes).await;
        let tree = nodes[0].tree();
        assert!(tree["big"].starts_with("new line"), "the newer copy wins");
        let archived: Vec<String> = nodes[0].archived().into_values().collect();
        assert!(
            archived.iter().any(|a| a.starts_with("old line")),
            "the older copy is archived where it was"
        );
        unlink(links);
    });
}

#[test]
fn a_big_adopted_copy_that_wins_reaches_the_peer_whichever_leads() {
    pair_big_copies(true);
    pair_big_copies(false);
}

/// Ten small files in `d`, `who`'s version of each with mtime `secs` after the epoch,
/// and (the older node's) one of its own as old.
fn small_files(who: &'static str, secs: u64) -> impl Fn(&Path) {
    move |data: &Path| {
        std::fs::create_dir(data.join("d")).unwrap();
        let mut names: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
        if who == "old" {
            names.push("own".into());
        }
        for name in names {
            let path = data.join("d").join(&name);
            let text: String = (0..40)
                .map(|l| format!("{who} {name} line {l}\n"))
                .collect();
            std::fs::write(&path, text).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .unwrap();
        }
    }
}

/// Adopted copies of ten files, the newer on the node that leads or follows as
/// `newer_leads` says, and one file only the older holds: the newer copies and that
/// file reach the other node; a leader with the older copies holds their entries back
/// until it has read the follower's index, and then does not send them.
fn pair_small_copies(newer_leads: bool) {
    let nodes = loop {
        let nodes = [
            node_with(&small_files("old", 1_600_000_000)),
            node_with(&small_files("new", 1_700_000_000)),
        ];
        let (old, new) = (nodes[0].id.to_string(), nodes[1].id.to_string());
        if crate::sync::follow::leads(&new, &old) == newer_leads {
            break nodes;
        }
    };
    paused_runtime().block_on(async {
        let links = converged(&nodes).await;
        let tree = nodes[0].tree();
        for i in 0..10 {
            let text = &tree[&format!("d/f{i}")];
            assert!(text.starts_with(&format!("new f{i} line 0")), "{text}");
        }
        assert!(
            tree["d/own"].starts_with("old own"),
            "the older node's own file"
        );
        assert_eq!(tree.len(), 11, "{tree:?}");
        let spared: Vec<u64> = nodes
            .iter()
            .map(|n| n.receiver.handoffs.spared.load(Ordering::Relaxed))
            .collect();
        let expected = if newer_leads { [0, 0] } else { [10, 0] };
        assert_eq!(spared, expected, "entries held back and not sent");
        unlink(links);
    });
}

#[test]
fn a_leader_does_not_send_the_entries_the_followers_newer_copies_replace() {
    pair_small_copies(false);
    pair_small_copies(true);
}
