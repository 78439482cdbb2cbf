//! Both sides change while the link is down (cut by counting proxies outside the
//! program), then it comes back: nothing is lost, both trees end equal, the loser of a
//! concurrent edit is kept as a conflict copy on both sides, an edit beats a delete, and
//! the daemons go quiet afterwards.

mod common;
use common::{peer_id, wait_until, Pair};
use std::fs;
use std::path::Path;
use std::time::Duration;

/// Names and contents of every file below `root` (sorted).
fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

fn cut(p: &Pair) {
    p.proxies.iter().for_each(|x| x.cut());
}

fn heal(p: &Pair) {
    p.proxies.iter().for_each(|x| x.heal());
}

/// Waits until both mounts show the same files, and returns them.
fn converged(p: &Pair, what: &str) -> Vec<(String, Vec<u8>)> {
    let ok = wait_until(60, || files(&p.a.mnt) == files(&p.b.mnt));
    let (a, b) = (files(&p.a.mnt), files(&p.b.mnt));
    assert!(
        ok,
        "{what}: trees differ\nA: {:?}\nB: {:?}\nA log: {}\nB log: {}",
        names(&a),
        names(&b),
        common::tail(&p.a.log(), 60),
        common::tail(&p.b.log(), 60)
    );
    a
}

fn names(f: &[(String, Vec<u8>)]) -> Vec<String> {
    f.iter()
        .map(|(n, d)| format!("{n}={}", String::from_utf8_lossy(d)))
        .collect()
}

/// Both sides hold `base`, then the link goes down.
fn partitioned(names: &[&str]) -> Pair {
    let p = Pair::mounted(true);
    for n in names {
        fs::write(p.a.m(n), b"base version\n").unwrap();
    }
    assert!(
        wait_until(30, || names
            .iter()
            .all(
                |n| fs::read(p.b.m(n)).ok().as_deref() == Some(&b"base version\n"[..])
            )),
        "the base reaches B"
    );
    std::thread::sleep(Duration::from_millis(500));
    cut(&p);
    std::thread::sleep(Duration::from_millis(300));
    p
}

/// Waits (at most 10 s) until no byte crossed for half a second: B's ack of what it
/// applied has reached A (B acks after it applies, and may index the file first).
fn settled(p: &Pair) {
    let count = || p.proxies.iter().map(|x| x.count()).sum::<u64>();
    let mut last = count();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let now = count();
        if now == last {
            return;
        }
        last = now;
    }
}

/// The daemons send nothing more than keepalives once they have converged.
fn assert_quiet(p: &Pair) {
    std::thread::sleep(Duration::from_secs(3));
    let before: u64 = p.proxies.iter().map(|x| x.count()).sum();
    std::thread::sleep(Duration::from_secs(12));
    let after: u64 = p.proxies.iter().map(|x| x.count()).sum();
    assert!(
        after - before < 2_000,
        "{} bytes in 12 s after convergence: the daemons did not settle",
        after - before
    );
}

#[test]
fn concurrent_edits_keep_both_versions_on_both_sides() {
    let mut p = partitioned(&["notes.txt"]);
    fs::write(p.a.m("notes.txt"), b"edited on A\n").unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // B's edit is the newer one
    fs::write(p.b.m("notes.txt"), b"edited on B, later\n").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // A's version goes aside as B's takes its name, in one step
    let reader = common::Reader::start(p.a.m("notes.txt"));
    heal(&p);
    let all = converged(&p, "after the partition");
    let (reads, failed) = reader.stop();
    assert!(
        reads > 0 && failed.is_empty(),
        "{reads} reads; failed: {failed:?}"
    );
    let short: String = peer_id(&p.a.store).chars().take(7).collect();
    let conflict = all.iter().find(|(n, _)| {
        n.starts_with("notes.sync-conflict-") && n.ends_with(&format!("-{short}.txt"))
    });
    assert!(
        conflict.is_some(),
        "A's losing version is kept: {:?}",
        names(&all)
    );
    assert_eq!(conflict.unwrap().1, b"edited on A\n");
    let main = all.iter().find(|(n, _)| n == "notes.txt").unwrap();
    assert_eq!(
        main.1, b"edited on B, later\n",
        "the newer edit wins on both"
    );
    assert_eq!(all.len(), 2, "{:?}", names(&all));
    for n in [&p.a, &p.b] {
        let status = common::syncfs(&["status", n.store.to_str().unwrap()]);
        assert!(
            status.contains("conflicts:   1 ")
                && status.contains(&format!("conflict:    {}", conflict.unwrap().0)),
            "status lists the conflict on both sides:\n{status}"
        );
    }
    assert_quiet(&p);
    p.a.unmount();
    p.b.unmount();
}

#[test]
fn an_edit_beats_a_concurrent_delete() {
    let mut p = partitioned(&["doc.txt", "gone.txt"]);
    fs::remove_file(p.a.m("doc.txt")).unwrap();
    fs::write(p.b.m("doc.txt"), b"edited on B while A deleted it\n").unwrap();
    fs::remove_file(p.b.m("gone.txt")).unwrap(); // a plain delete still goes through
    std::thread::sleep(Duration::from_secs(1));
    heal(&p);
    let all = converged(&p, "after delete vs edit");
    assert_eq!(
        names(&all),
        ["doc.txt=edited on B while A deleted it\n"],
        "the edit survives on both, the unopposed delete too"
    );
    // the version A deleted is in A's archive? A deleted it itself: nothing to keep.
    // B's gone.txt was deleted by B; A archived its copy when the delete arrived.
    let kept = common::syncfs(&["versions", p.a.store.to_str().unwrap()]);
    assert!(
        kept.contains("gone.txt"),
        "A keeps what B's delete removed:\n{kept}"
    );
    assert_quiet(&p);
    p.a.unmount();
    p.b.unmount();
}

/// Sets a file's mtime to `secs` after the epoch.
fn set_mtime(p: &Path, secs: u64) {
    let f = fs::File::options().write(true).open(p).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

/// A source-like tree of `n` files in a few directories.
fn make_tree(root: &Path, n: usize) {
    for i in 0..n {
        let d = root.join(format!("dir{}", i % 7));
        fs::create_dir_all(&d).unwrap();
        let body = format!(
            "// file {i}\n{}",
            "fn main() { println!(\"hello\"); }\n".repeat(40 + i % 13)
        );
        fs::write(d.join(format!("f{i}.rs")), body).unwrap();
        set_mtime(&d.join(format!("f{i}.rs")), 1_700_000_000);
    }
    std::os::unix::fs::symlink("dir0/f0.rs", root.join("link")).unwrap();
}

#[test]
fn adopted_folders_pair_moving_only_the_differences() {
    let t = tempfile::tempdir().unwrap();
    let (x, y) = (t.path().join("x"), t.path().join("y"));
    make_tree(&x, 300);
    make_tree(&y, 300);
    fs::write(x.join("only-on-a.txt"), b"A alone\n").unwrap();
    fs::create_dir(y.join("only-on-b")).unwrap();
    fs::write(y.join("only-on-b/file.txt"), b"B alone\n").unwrap();
    // differing content: the newer mtime wins, the other goes to the archive
    fs::write(x.join("dir1/f1.rs"), b"A's newer version\n").unwrap();
    set_mtime(&x.join("dir1/f1.rs"), 1_800_000_000);
    fs::write(y.join("dir2/f2.rs"), b"B's newer version\n").unwrap();
    set_mtime(&y.join("dir2/f2.rs"), 1_800_000_000);
    let mut p = Pair::adopting(&x, &y, true);
    assert_eq!(
        fs::read_link(p.a.store.join("data")).unwrap(),
        x.canonicalize().unwrap()
    );
    p.a.mount();
    p.b.mount();
    let all = converged(&p, "after first pairing");
    let get = |n: &str| all.iter().find(|(p, _)| p == n).map(|(_, d)| d.clone());
    assert_eq!(get("only-on-a.txt").as_deref(), Some(&b"A alone\n"[..]));
    assert_eq!(
        get("only-on-b/file.txt").as_deref(),
        Some(&b"B alone\n"[..])
    );
    assert_eq!(
        get("dir1/f1.rs").as_deref(),
        Some(&b"A's newer version\n"[..])
    );
    assert_eq!(
        get("dir2/f2.rs").as_deref(),
        Some(&b"B's newer version\n"[..])
    );
    assert_eq!(
        fs::read_link(p.b.m("link")).unwrap(),
        Path::new("dir0/f0.rs")
    );
    // nothing was copied or moved out of the adopted folders
    assert_eq!(
        fs::read(y.join("dir1/f1.rs")).unwrap(),
        b"A's newer version\n"
    );
    let kept_b = common::syncfs(&["versions", p.b.store.to_str().unwrap()]);
    assert!(
        kept_b.contains("dir1/f1.rs"),
        "B archived its older f1:\n{kept_b}"
    );
    let kept_a = common::syncfs(&["versions", p.a.store.to_str().unwrap()]);
    assert!(
        kept_a.contains("dir2/f2.rs"),
        "A archived its older f2:\n{kept_a}"
    );
    // 300 unchanged files (about 1.3 MB) never crossed: only the index and the four
    // differing files did
    let wire: u64 = p.proxies.iter().map(|x| x.count()).sum();
    println!("first pairing of 300 mostly-same files: {wire} bytes on the wire");
    assert!(
        wire < 60_000,
        "{wire} bytes on the wire for four small differences"
    );
    assert_quiet(&p);
    p.a.unmount();
    p.b.unmount();
}

#[test]
fn edits_made_while_unmounted_reach_the_peer() {
    let mut p = Pair::mounted(true);
    for n in ["keep.txt", "edit.txt", "drop.txt"] {
        fs::write(p.a.m(n), format!("{n} base\n")).unwrap();
    }
    assert!(wait_until(30, || fs::read(p.b.m("drop.txt")).is_ok()));
    std::thread::sleep(Duration::from_millis(500));
    p.b.unmount();
    // behind syncfs's back, in B's backing folder
    fs::write(
        p.b.data().join("edit.txt"),
        b"edited while B was unmounted\n",
    )
    .unwrap();
    fs::remove_file(p.b.data().join("drop.txt")).unwrap();
    fs::write(p.b.data().join("new.txt"), b"made while unmounted\n").unwrap();
    p.b.mount();
    let all = converged(&p, "after B's offline edits");
    assert_eq!(
        names(&all),
        [
            "edit.txt=edited while B was unmounted\n",
            "keep.txt=keep.txt base\n",
            "new.txt=made while unmounted\n"
        ]
    );
    // A's next edit builds on B's, it does not overwrite it unseen; B's copy takes A's
    // version in one step (a reader never finds it missing)
    let reader = common::Reader::start(p.b.m("edit.txt"));
    fs::write(p.a.m("edit.txt"), b"A edits after\n").unwrap();
    assert!(wait_until(30, || fs::read(p.b.m("edit.txt")).unwrap()
        == b"A edits after\n"));
    let (reads, failed) = reader.stop();
    assert!(
        reads > 0 && failed.is_empty(),
        "{reads} reads; failed: {failed:?}"
    );
    assert_quiet(&p);
    p.a.unmount();
    p.b.unmount();
}

#[test]
fn ten_thousand_unchanged_files_cost_little_at_first_contact_and_less_at_reconnect() {
    const N: usize = 10_000;
    let t = tempfile::tempdir().unwrap();
    let (x, y) = (t.path().join("x"), t.path().join("y"));
    for root in [&x, &y] {
        for i in 0..N {
            let d = root.join(format!("d{:03}", i % 400));
            fs::create_dir_all(&d).unwrap();
            fs::write(
                d.join(format!("file{i:05}.txt")),
                format!("content of file {i}\n"),
            )
            .unwrap();
        }
    }
    let mut p = Pair::adopting(&x, &y, true);
    p.a.mount();
    p.b.mount();
    fs::write(p.a.m("marker"), b"done\n").unwrap();
    assert!(
        wait_until(120, || fs::read(p.b.m("marker")).is_ok()),
        "the marker crosses"
    );
    std::thread::sleep(Duration::from_secs(2));
    let first: u64 = p.proxies.iter().map(|x| x.count()).sum();
    p.a.unmount();
    p.b.unmount();
    p.a.mount();
    p.b.mount();
    fs::write(p.a.m("marker"), b"again\n").unwrap();
    assert!(wait_until(60, || fs::read(p.b.m("marker")).ok().as_deref()
        == Some(&b"again\n"[..])));
    std::thread::sleep(Duration::from_secs(2));
    let second: u64 = p.proxies.iter().map(|x| x.count()).sum::<u64>() - first;
    println!(
        "{N} unchanged files: first contact {first} bytes ({} B/file), reconnect {second} bytes ({:.2} B/file)",
        first / N as u64,
        second as f64 / N as f64
    );
    assert!(
        first < 10 * N as u64,
        "first contact: {first} bytes for {N} files"
    );
    assert!(
        second < 20_000,
        "reconnect: {second} bytes for {N} unchanged files"
    );
    p.a.unmount();
    p.b.unmount();
}

#[test]
fn a_rename_and_a_concurrent_edit_keep_both_names() {
    let mut p = partitioned(&["draft.txt"]);
    fs::rename(p.a.m("draft.txt"), p.a.m("final.txt")).unwrap();
    fs::write(p.b.m("draft.txt"), b"edited on B meanwhile\n").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    heal(&p);
    let all = converged(&p, "after rename vs edit");
    // The rename is a delete of draft.txt and a new final.txt; B's edit beats the
    // delete, so both names survive, on both sides.
    assert_eq!(
        names(&all),
        [
            "draft.txt=edited on B meanwhile\n",
            "final.txt=base version\n"
        ]
    );
    assert_quiet(&p);
    p.a.unmount();
    p.b.unmount();
}

#[test]
fn the_first_scan_of_an_adopted_folder_shows_in_status() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("folder");
    make_tree(&data, 20_000);
    let mut n = common::Node::with_init(&["--data", data.to_str().unwrap()]);
    let store = n.store.clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poll = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            // (before the daemon's control socket is up, status opens the journal)
            let sock = store.join("control.sock");
            while !sock.exists() && !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(2));
            }
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let out = std::process::Command::new(common::bin())
                    .args(["status", store.to_str().unwrap()])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if let Some(l) = text.lines().find(|l| l.starts_with("scanning:")) {
                    seen.push(l.to_string());
                }
            }
            seen
        })
    };
    n.mount();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let lines = poll.join().unwrap();
    let after = common::syncfs(&["status", n.store.to_str().unwrap()]);
    n.unmount();
    assert!(
        !lines.is_empty(),
        "status never showed the scan while it ran"
    );
    let counts: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert!(
        counts.iter().any(|&c| c > 0),
        "no progress shown: {lines:?}"
    );
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "progress went back: {lines:?}"
    );
    assert!(
        !after.contains("scanning:"),
        "still scanning once mounted: {after}"
    );
}

/// Writes `data` to A as big.bin, waits for B to hold it, then unmounts A.
fn big_file_synced_then_a_unmounted(p: &mut Pair, data: &[u8]) {
    fs::write(p.a.m("big.bin"), data).unwrap();
    assert!(
        wait_until(60, || fs::read(p.b.m("big.bin")).ok().as_deref()
            == Some(data)),
        "the file reaches B"
    );
    std::thread::sleep(Duration::from_secs(1));
    p.a.unmount();
}

#[test]
fn a_file_renamed_while_unmounted_moves_no_data() {
    let mut p = Pair::mounted(true);
    let data = common::random_bytes(4 << 20, 0x2545_F491_4F6C_DD1D);
    big_file_synced_then_a_unmounted(&mut p, &data);
    fs::create_dir(p.a.data().join("moved")).unwrap();
    fs::rename(p.a.data().join("big.bin"), p.a.data().join("moved/big.bin")).unwrap();
    let before: u64 = p.proxies.iter().map(|x| x.count()).sum();
    p.a.mount();
    assert!(
        wait_until(60, || !p.b.m("big.bin").exists()
            && fs::read(p.b.m("moved/big.bin")).ok().as_deref()
                == Some(&data[..])),
        "the rename reaches B:\nA: {}\nB: {}",
        common::tail(&p.a.log(), 400),
        common::tail(&p.b.log(), 400)
    );
    let bytes = p.proxies.iter().map(|x| x.count()).sum::<u64>() - before;
    p.a.unmount();
    p.b.unmount();
    assert!(
        bytes < 256 << 10,
        "{bytes} bytes crossed for a rename of a 4 MiB file made while unmounted"
    );
}

#[test]
fn adopted_folders_holding_a_file_under_different_names_copy_it_locally() {
    let t = tempfile::tempdir().unwrap();
    let (x, y) = (t.path().join("x"), t.path().join("y"));
    let data = common::random_bytes(4 << 20, 0x9E37_79B9_7F4A_7C15);
    fs::create_dir_all(x.join("new")).unwrap();
    fs::create_dir_all(y.join("old")).unwrap();
    fs::write(x.join("new/name.bin"), &data).unwrap();
    fs::write(y.join("old/name.bin"), &data).unwrap();
    let mut p = Pair::adopting(&x, &y, true);
    p.a.mount();
    p.b.mount();
    let all = converged(&p, "after first pairing");
    let bytes: u64 = p.proxies.iter().map(|x| x.count()).sum();
    p.a.unmount();
    p.b.unmount();
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["new/name.bin", "old/name.bin"]);
    assert!(
        bytes < 256 << 10,
        "{bytes} bytes crossed for a 4 MiB file both sides held under two names"
    );
}

/// Folders under `t` holding `name` as `new` (A's, the newer) and `old` (B's), adopted
/// and mounted until they agree: the tree, the bytes on the wire, A's log, and the pair
/// (unmounted).
fn pair_one_file(
    t: &Path,
    name: &str,
    new: &[u8],
    old: &[u8],
) -> (Vec<(String, Vec<u8>)>, u64, String, Pair) {
    let (x, y) = (t.join("x"), t.join("y"));
    fs::create_dir_all(&x).unwrap();
    fs::create_dir_all(&y).unwrap();
    fs::write(x.join(name), new).unwrap();
    set_mtime(&x.join(name), 1_800_000_000); // A's is newer: B takes it
    fs::write(y.join(name), old).unwrap();
    let mut p = Pair::adopting(&x, &y, true);
    p.a.mount();
    p.b.mount();
    let all = converged(&p, "after first pairing");
    settled(&p);
    let bytes: u64 = p.proxies.iter().map(|x| x.count()).sum();
    let log = p.a.log();
    p.a.unmount();
    p.b.unmount();
    (all, bytes, log, p)
}

/// A big file that differs between the adopted folders by an insert at its top and a
/// small edit in its middle crosses as a chunk exchange: hashes of the chunk tree's
/// changed path and the few changed leaves, not the file (`syncfs::chunks`).
#[test]
fn adopted_folders_pair_a_mostly_same_big_file_by_its_changed_chunks() {
    let t = tempfile::tempdir().unwrap();
    let old = common::random_bytes(8 << 20, 0x2545_F491_4F6C_DD1D);
    let mut new =
        b"a hundred bytes of a new header, inserted at the very top of the file ......".to_vec();
    new.extend_from_slice(&old);
    new[5 << 20..(5 << 20) + 20].copy_from_slice(b"twenty changed bytes");
    let (all, bytes, log, p) = pair_one_file(t.path(), "big.bin", &new, &old);
    assert!(all.iter().any(|(n, d)| n == "big.bin" && *d == new));
    println!("8 MiB file, 100 B inserted and 20 B changed: {bytes} bytes on the wire");
    let plain = common::without_colours(&log);
    let line = (plain.lines())
        .find(|l| l.contains("rebuilt by the peer from its own version"))
        .unwrap_or_else(|| panic!("no chunk exchange:\n{log}"));
    println!("{line}");
    // the offer's sketch decodes (two changes): the leaves are picked at once, with no
    // walk down the tree, and their gaps are matched against our old bytes there
    // (protocol 21: 2 rounds and 2,641 B, the sketch 16 rateless cells; protocol 20:
    // 2 rounds and 2,978 B; 3 rounds and 3,139 B when the picked leaves
    // were described by their blocks; 6 rounds, 172 nodes and 4,465 B with the sketch
    // left out)
    assert!(line.contains(" rounds=2 "), "{line}");
    assert!(
        bytes < 64 << 10,
        "{bytes} bytes crossed for an 8 MiB file both sides held, with two small changes"
    );
    let kept_b = common::syncfs(&["versions", p.b.store.to_str().unwrap()]);
    assert!(
        kept_b.contains("big.bin"),
        "B archived its version:\n{kept_b}"
    );
}

/// Adopted folders holding unrelated content under one name: the chunk exchange finds
/// nothing, is declined early, and the newer version crosses once, whole (not first as
/// ranges against a base the peer never held, refused, then again whole).
#[test]
fn adopted_folders_holding_unrelated_content_send_it_once() {
    let t = tempfile::tempdir().unwrap();
    let new = common::random_bytes(4 << 20, 7);
    let old = common::random_bytes(4 << 20, 8);
    let (all, bytes, _, _) = pair_one_file(t.path(), "other.bin", &new, &old);
    assert!(all.iter().any(|(n, d)| n == "other.bin" && *d == new));
    println!("4 MiB of unrelated random bytes: {bytes} bytes on the wire");
    assert!(
        bytes < (4 << 20) + (256 << 10),
        "{bytes} bytes crossed for a 4 MiB file: more than once"
    );
}

/// Adopted folders holding small files that differ by a line each: the receiver
/// describes its versions by their leaves in its index ack (and the pieces of the
/// leaves the sender lacks, when asked), and each file crosses as a delta against the
/// leaves and pieces both hold, not whole.
#[test]
fn adopted_folders_pair_small_edited_files_by_their_leaves() {
    let t = tempfile::tempdir().unwrap();
    let (x, y) = (t.path().join("x"), t.path().join("y"));
    // code-like lines of made-up names: little shared between files, as in a real tree
    let word = |x: u64| -> String {
        (0..6)
            .map(|k| (b'a' + ((x >> (5 * k)) % 26) as u8) as char)
            .collect()
    };
    let line = |f: usize, i: usize| {
        let x = (f as u64 * 1000 + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let (a, b, c) = (word(x), word(x >> 30), word(x >> 11));
        format!("    let {a} = {b}.{c}({});\n", x % 9973)
    };
    let mut whole = 0;
    for f in 0..40 {
        let old: String = (0..200).map(|i| line(f, i)).collect();
        let mut new = old.clone();
        new.insert_str(old.len() / 2, "    // a line added on one side\n");
        whole += zstd::encode_all(new.as_bytes(), 3).unwrap().len();
        for (root, body) in [(&x, &new), (&y, &old)] {
            fs::create_dir_all(root.join("src")).unwrap();
            fs::write(root.join(format!("src/m{f}.rs")), body).unwrap();
        }
        set_mtime(&x.join(format!("src/m{f}.rs")), 1_800_000_000); // A's is newer
    }
    let mut p = Pair::adopting(&x, &y, true);
    p.a.mount();
    p.b.mount();
    converged(&p, "after first pairing");
    settled(&p);
    let bytes: u64 = p.proxies.iter().map(|x| x.count()).sum();
    let log = p.a.log();
    p.a.unmount();
    p.b.unmount();
    println!(
        "40 small files, a line added to each: {bytes} bytes (zstd of the new files: {whole})"
    );
    assert!(
        log.matches("rebuilt by the peer from its own version")
            .count()
            == 40,
        "not every file went as a leaf delta:\n{}",
        common::tail(&log, 40)
    );
    // each file's changed leaf goes as its edit and the pieces around it, not as
    // literals: 14,619 B here (protocol 22: leaf patches, 2-byte leaf hashes), 17,566 B
    // at protocol 21, 25,320 B before the receiver was asked for the pieces of the
    // leaves the sender lacks (protocol 16)
    assert!(
        bytes < whole as u64 / 8,
        "{bytes} bytes crossed; the new files compressed are {whole}"
    );
}

/// The same tree in `x` and `y`: `dirs` directories `dN` of `files` files `fM.txt`.
fn twin_trees(
    x: &Path,
    y: &Path,
    dirs: usize,
    files: usize,
    body: impl Fn(usize, usize) -> String,
) {
    for d in 0..dirs {
        for f in 0..files {
            for root in [x, y] {
                fs::create_dir_all(root.join(format!("d{d}"))).unwrap();
                fs::write(root.join(format!("d{d}/f{f}.txt")), body(d, f)).unwrap();
            }
        }
    }
}

/// `file` rewritten with `text` and a later mtime than its twin's (its side wins).
fn newer_on_one_side(file: &Path, text: &str) {
    fs::write(file, text).unwrap();
    set_mtime(file, 1_800_000_000);
}

/// Adopts `x` and `y`, mounts both until they converge, and returns the bytes that
/// crossed the link.
fn first_pairing_bytes(x: &Path, y: &Path) -> u64 {
    let mut p = Pair::adopting(x, y, true);
    p.a.mount();
    p.b.mount();
    converged(&p, "after first pairing");
    let bytes: u64 = p.proxies.iter().map(|x| x.count()).sum();
    p.a.unmount();
    p.b.unmount();
    bytes
}

/// Adopted folders whose directories each differ by one file: at first contact only
/// the entries that differ cross, not every entry of every directory that differs (the
/// receiver sends a sketch of the digests of what it holds there: 7,244 bytes in all,
/// 16,664 with the digests listed, 6 bytes each).
#[test]
fn adopted_folders_send_only_the_index_entries_that_differ() {
    let t = tempfile::tempdir().unwrap();
    let (x, y) = (t.path().join("x"), t.path().join("y"));
    twin_trees(&x, &y, 20, 50, |d, f| {
        format!("directory {d}, file {f}\n").repeat(8)
    });
    for d in 0..20 {
        let text = format!("changed on one side {d}\n").repeat(8);
        newer_on_one_side(&x.join(format!("d{d}/f0.txt")), &text);
    }
    let bytes = first_pairing_bytes(&x, &y);
    println!("20 directories of 50 files, one changed in each: {bytes} bytes");
    assert!(
        bytes < 12_000,
        "{bytes} bytes: more than the 20 changed entries, files and a sketch"
    );
}

/// Adopted folders of 3,000 directories of which one differs: at first contact each
/// side's directory summary goes as one sketch of 516 cells (27,000 bytes listed):
/// 15,479 bytes in all, 56,148 with the summaries listed.
#[test]
fn adopted_folders_of_many_directories_pair_by_a_directory_sketch() {
    let t = tempfile::tempdir().unwrap();
    let (x, y) = (t.path().join("x"), t.path().join("y"));
    twin_trees(&x, &y, 3_000, 1, |d, _| format!("{d}\n"));
    newer_on_one_side(&x.join("d1234/f0.txt"), "changed on one side\n");
    let bytes = first_pairing_bytes(&x, &y);
    println!("3,000 directories, one changed: {bytes} bytes");
    assert!(
        bytes < 30_000,
        "{bytes} bytes: the two summaries listed would cost 54,000"
    );
}

#[test]
fn a_copy_edited_while_unmounted_is_rebuilt_from_the_peers_original() {
    // A's chunk index learned big.bin when A sent it; the copy, made behind syncfs's
    // back in another directory under another name, is offered naming it
    let mut p = Pair::mounted(true);
    let data = common::random_bytes(4 << 20, 0x9E37_79B9);
    big_file_synced_then_a_unmounted(&mut p, &data);
    let mut copy = data.clone();
    copy[2 << 20..(2 << 20) + 4096].copy_from_slice(&common::random_bytes(4096, 7));
    fs::create_dir(p.a.data().join("elsewhere")).unwrap();
    fs::write(p.a.data().join("elsewhere/copy.dat"), &copy).unwrap();
    let before: u64 = p.proxies.iter().map(|x| x.count()).sum();
    p.a.mount();
    assert!(
        wait_until(60, || fs::read(p.b.m("elsewhere/copy.dat")).ok().as_deref()
            == Some(&copy[..])),
        "the copy reaches B:\nA: {}",
        common::tail(&p.a.log(), 100)
    );
    std::thread::sleep(Duration::from_millis(500));
    let bytes = p.proxies.iter().map(|x| x.count()).sum::<u64>() - before;
    p.a.unmount();
    p.b.unmount();
    eprintln!("a 4 MiB copy with 4 KiB changed, made while unmounted: {bytes} bytes");
    assert!(
        bytes < 64 << 10,
        "{bytes} bytes crossed for an edited copy of a 4 MiB file"
    );
}
