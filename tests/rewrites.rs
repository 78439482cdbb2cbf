//! Files rewritten from scratch cost about what changed, not the whole file: the bytes a
//! truncate cuts are kept as pre-images, and the new content goes as a delta against
//! them (issue 10). Each test rewrites a file of incompressible data through A's mount
//! and bounds the bytes both proxies carried until B holds the new content.

mod common;
use common::{hash_of, random_bytes, wait_until, Pair};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

/// Wire bytes (both directions) so far.
fn wire(p: &Pair) -> u64 {
    p.proxies.iter().map(|x| x.count()).sum()
}

/// Writes `old` to A as `name`, waits for B to hold it and the link to go quiet.
fn synced(p: &Pair, name: &str, old: &[u8]) {
    fs::write(p.a.m(name), old).unwrap();
    let want = *blake3::hash(old).as_bytes();
    assert!(
        wait_until(120, || hash_of(&p.b.m(name)) == Some(want)),
        "{name} reaches B"
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
}

/// Waits for B to hold `new` as `name`; returns the wire bytes since `before`.
fn cost_until(p: &Pair, name: &str, new: &[u8], before: u64) -> u64 {
    let want = *blake3::hash(new).as_bytes();
    let ok = wait_until(120, || hash_of(&p.b.m(name)) == Some(want));
    assert!(
        ok,
        "{name}'s new content reaches B\nA:\n{}",
        common::tail(&p.a.log(), 60)
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    wire(p) - before
}

/// Waits for B to hold `new` as `name`, prints what `what` cost on the wire since
/// `before`, and checks it stayed under [`BUDGET`].
fn within_budget(p: &Pair, name: &str, new: &[u8], before: u64, what: &str) {
    let cost = cost_until(p, name, new, before);
    eprintln!("{what}: {cost} bytes on the wire");
    assert!(cost < BUDGET, "{what} cost {cost} bytes, budget {BUDGET}");
}

/// The old content with `ins` inserted at `at`.
fn inserted(old: &[u8], at: usize, ins: &[u8]) -> Vec<u8> {
    [&old[..at], ins, &old[at..]].concat()
}

/// Budget for a rewrite whose real change is a few hundred bytes: far below the 8 MiB
/// of incompressible data a whole-file resend costs.
const BUDGET: u64 = 64 << 10;

#[test]
fn an_insert_at_the_top_rewritten_with_o_trunc_costs_what_changed() {
    let p = Pair::mounted(true);
    let old = random_bytes(8 << 20, 1);
    synced(&p, "big.bin", &old);
    let new = inserted(&old, 0, &[b'!'; 100]);
    let before = wire(&p);
    fs::write(p.a.m("big.bin"), &new).unwrap(); // open(O_TRUNC) + write
    within_budget(
        &p,
        "big.bin",
        &new,
        before,
        "100 B inserted at the top of 8 MiB, O_TRUNC rewrite",
    );
}

/// Writes 20 small files of random bytes to A, then (in a new session, so that the
/// stream's compressor no longer holds the bytes it sent) saves each with a line
/// inserted by `save(path, new content)`; returns the wire bytes until B has them all.
fn small_saves(save: impl Fn(&std::path::Path, &[u8])) -> u64 {
    let mut p = Pair::mounted(true);
    let olds: Vec<Vec<u8>> = (0..20).map(|i| random_bytes(3000, 1000 + 2 * i)).collect();
    for (i, old) in olds.iter().enumerate() {
        fs::write(p.a.m(&format!("s{i}.rs")), old).unwrap();
    }
    fs::set_permissions(p.a.m("s0.rs"), fs::Permissions::from_mode(0o600)).unwrap();
    synced(&p, "s19.rs", &olds[19]);
    p.a.unmount();
    p.a.mount();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let before = wire(&p);
    let add = |o: &Vec<u8>| inserted(o, 1500, b"// a new line\n");
    let news: Vec<Vec<u8>> = olds.iter().map(add).collect();
    for (i, new) in news.iter().enumerate() {
        save(&p.a.m(&format!("s{i}.rs")), new);
    }
    for (i, new) in news.iter().enumerate() {
        cost_until(&p, &format!("s{i}.rs"), new, before);
    }
    let cost = wire(&p) - before;
    // both sides alike: owner and mode of each file, and no backup left on B
    use std::os::unix::fs::MetadataExt;
    let meta = |m: fs::Metadata| (m.uid(), m.gid(), m.mode());
    for i in 0..20 {
        let f = format!("s{i}.rs");
        let (a, b) = (
            fs::metadata(p.a.m(&f)).unwrap(),
            fs::metadata(p.b.m(&f)).unwrap(),
        );
        assert_eq!(meta(a), meta(b), "{f}: owner and mode on A and B");
    }
    let names = |d: std::path::PathBuf| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(p.a.m("")),
        names(p.b.m("")),
        "the same names on A and B"
    );
    cost
}

#[test]
fn small_files_rewritten_longer_cost_what_changed() {
    // an editor's save of a source file that gained a line: the old file is shorter
    // than the new one, and all of it is kept, so each goes as a delta
    let cost = small_saves(|f, new| fs::write(f, new).unwrap()); // open(O_TRUNC) + write
    eprintln!("20 files of 3,000 random bytes, a line inserted in each: {cost} bytes on the wire");
    // whole, they are 60,000 incompressible bytes
    assert!(cost < 20_000, "20 small rewrites cost {cost} bytes");
}

#[test]
fn a_save_that_renames_the_original_away_costs_what_changed() {
    // vim's and emacs's backup: rename f f~, write a new f, unlink f~
    let cost = small_saves(|f, new| {
        let bak = f.with_extension("rs~");
        fs::rename(f, &bak).unwrap();
        fs::write(f, new).unwrap();
        fs::remove_file(&bak).unwrap();
    });
    eprintln!("20 backup-rename saves of 3,000 random bytes: {cost} bytes on the wire");
    assert!(cost < 20_000, "20 backup-rename saves cost {cost} bytes");
}

#[test]
fn a_truncate_to_zero_then_rewrite_with_a_change_in_the_middle_costs_what_changed() {
    let p = Pair::mounted(true);
    let old = random_bytes(8 << 20, 2);
    synced(&p, "doc.bin", &old);
    let mut new = old.clone();
    new[4 << 20..(4 << 20) + 20].copy_from_slice(&[0x55; 20]);
    let before = wire(&p);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(p.a.m("doc.bin"))
        .unwrap();
    f.set_len(0).unwrap(); // ftruncate: a Truncate op the update then carries
    f.write_all(&new).unwrap();
    drop(f);
    within_budget(
        &p,
        "doc.bin",
        &new,
        before,
        "20 B changed in 8 MiB, ftruncate(0) + rewrite",
    );
}

#[test]
fn an_edit_after_a_restart_costs_what_changed() {
    let mut p = Pair::mounted(true);
    let old = random_bytes(8 << 20, 3);
    synced(&p, "img.bin", &old);
    p.a.unmount();
    p.a.mount(); // a new session: the sender has no memory of what the peer holds
    let mut new = old.clone();
    new[(2 << 20) + 100..(2 << 20) + 4196].copy_from_slice(&random_bytes(4096, 4));
    let before = wire(&p);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(p.a.m("img.bin"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(
        &f,
        &new[(2 << 20) + 100..(2 << 20) + 4196],
        (2 << 20) + 100,
    )
    .unwrap();
    drop(f);
    within_budget(
        &p,
        "img.bin",
        &new,
        before,
        "4 KiB edit in 8 MiB after a restart",
    );
}

/// Saves 20 B changed in 8 MiB as editors do: a temp file beside the original, written
/// `pause` after it is created, fsynced, renamed over the original.
fn temp_file_and_rename_save(pause: std::time::Duration, what: &str) {
    let p = Pair::mounted(true);
    let old = random_bytes(8 << 20, 5);
    synced(&p, "report.odt", &old);
    let mut new = old.clone();
    new[(5 << 20)..(5 << 20) + 20].copy_from_slice(&[0xAA; 20]);
    let before = wire(&p);
    let tmp = p.a.m(".report.odt.tmp");
    let mut f = fs::File::create(&tmp).unwrap();
    std::thread::sleep(pause);
    f.write_all(&new).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::rename(&tmp, p.a.m("report.odt")).unwrap();
    within_budget(&p, "report.odt", &new, before, what);
    assert!(
        !p.b.m(".report.odt.tmp").exists(),
        "the temp name never shows on B"
    );
}

#[test]
fn a_temp_file_and_rename_save_costs_what_changed() {
    let what = "20 B changed in 8 MiB, temp file + rename save";
    temp_file_and_rename_save(std::time::Duration::ZERO, what);
}

/// `cat new > tmp && mv tmp f`: the shell creates the temp file, then cat reads its
/// input before the first write; a big save takes seconds to write. The create must
/// not go alone meanwhile (it did after 40 ms, and then after 2 s), or the rename goes
/// as an op and the content whole.
#[test]
fn a_temp_file_written_seconds_after_its_create_still_costs_what_changed() {
    let what = "20 B changed in 8 MiB, temp file written 3 s after its create";
    temp_file_and_rename_save(std::time::Duration::from_secs(3), what);
}

#[test]
fn a_temp_file_renamed_over_a_symlink_replaces_it_on_the_peer() {
    // as `sed -i` does to a symlink: the link becomes a regular file
    let p = Pair::mounted(true);
    synced(&p, "target", b"the target\n");
    std::os::unix::fs::symlink("target", p.a.m("link")).unwrap();
    assert!(
        wait_until(60, || fs::symlink_metadata(p.b.m("link")).is_ok()),
        "the symlink reaches B"
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    fs::write(p.a.m(".link.tmp"), b"now a file\n").unwrap();
    fs::rename(p.a.m(".link.tmp"), p.a.m("link")).unwrap();
    let ok = wait_until(60, || {
        fs::symlink_metadata(p.b.m("link")).is_ok_and(|m| m.is_file())
            && fs::read(p.b.m("link")).is_ok_and(|b| b == b"now a file\n")
    });
    assert!(
        ok,
        "B still has the symlink\nB:\n{}",
        common::tail(&p.b.log(), 40)
    );
    assert_eq!(fs::read(p.b.m("target")).unwrap(), b"the target\n");
}

#[test]
fn a_copy_of_a_large_file_is_made_from_the_peers_own_copy() {
    let p = Pair::mounted(true);
    let old = random_bytes(8 << 20, 6);
    synced(&p, "image.bin", &old);
    let before = wire(&p);
    fs::copy(p.a.m("image.bin"), p.a.m("image copy.bin")).unwrap();
    within_budget(
        &p,
        "image copy.bin",
        &old,
        before,
        "a copy of an 8 MiB file",
    );
    assert_eq!(
        hash_of(&p.b.m("image.bin")),
        Some(*blake3::hash(&old).as_bytes())
    );
}

#[test]
fn a_copy_of_a_small_file_elsewhere_is_made_from_the_peers_own_copy() {
    // under 64 KiB too: A's index holds a file with the copy's content, so the copy is
    // offered by its chunks and B makes it from its own (48 KiB of random bytes would
    // cost about 49 KB whole)
    let mut p = Pair::mounted(true);
    let old = random_bytes(48 << 10, 9);
    synced(&p, "notes.bin", &old);
    fs::create_dir(p.a.m("elsewhere")).unwrap();
    // a new session, so that the file is not in the stream compressor's window
    p.a.unmount();
    p.a.mount();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let before = wire(&p);
    // written, not `copy_file_range` (which the mount records as a copy)
    fs::write(p.a.m("elsewhere/notes.bin"), &old).unwrap();
    let cost = cost_until(&p, "elsewhere/notes.bin", &old, before);
    eprintln!("a copy of a 48 KiB file in another directory: {cost} bytes on the wire");
    assert!(cost < 8 << 10, "the copy cost {cost} bytes");
}

#[test]
fn an_edited_copy_saved_under_a_new_name_costs_what_changed() {
    // "save as": B has no file at the new name and none with its content; it rebuilds
    // the new file from the similar one beside it (same directory and extension)
    let p = Pair::mounted(true);
    let old = random_bytes(8 << 20, 7);
    synced(&p, "report.bin", &old);
    let mut new = old.clone();
    new[3 << 20..(3 << 20) + 4096].copy_from_slice(&random_bytes(4096, 8));
    let before = wire(&p);
    fs::write(p.a.m("report v2.bin"), &new).unwrap();
    within_budget(
        &p,
        "report v2.bin",
        &new,
        before,
        "an 8 MiB file saved under a new name with 4 KiB changed",
    );
    assert_eq!(
        hash_of(&p.b.m("report.bin")),
        Some(*blake3::hash(&old).as_bytes()),
        "the similar file is only read"
    );
}

#[test]
fn copied_content_edited_before_it_syncs_is_rebuilt_from_the_peers_original() {
    // the store's chunk index names the file a new one shares most of its content
    // with; the peer rebuilds from its own copy of that file. Another directory and
    // name, so no similar file stands in (whole, each would cost about 8 MiB)
    let p = Pair::mounted(true);
    let old = random_bytes(8 << 20, 21);
    synced(&p, "disk.img", &old);
    // A's sender indexed what it sent: a copy edited in the middle
    let mut copy = old.clone();
    copy[4 << 20..(4 << 20) + 4096].copy_from_slice(&random_bytes(4096, 22));
    fs::create_dir(p.a.m("backup")).unwrap();
    let before = wire(&p);
    fs::write(p.a.m("backup/disk-copy.dat"), &copy).unwrap();
    let what = "an 8 MiB copy in another directory, 4 KiB changed, made on A";
    within_budget(&p, "backup/disk-copy.dat", &copy, before, what);
    // B indexed what it received: its content behind a new header, made on B
    let moved = inserted(&old, 0, b"a header of a new kind of file\n");
    let before = wire(&p);
    fs::write(p.b.m("moved.bin"), &moved).unwrap();
    let want = *blake3::hash(&moved).as_bytes();
    assert!(wait_until(120, || hash_of(&p.a.m("moved.bin")) == Some(want)));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let cost = wire(&p) - before;
    eprintln!("8 MiB of B's content moved into a new file after a header: {cost} bytes");
    assert!(
        cost < BUDGET,
        "moved content cost {cost} bytes, budget {BUDGET}"
    );
}

#[test]
fn data_of_two_files_joined_into_a_new_one_is_rebuilt_from_both() {
    // a new file made of two synced files' content (an archive, a repacked pack) names
    // both; the peer rebuilds from them joined (whole, it would cost about 8 MiB)
    let p = Pair::mounted(true);
    let (one, two) = (random_bytes(4 << 20, 31), random_bytes(4 << 20, 32));
    synced(&p, "one.pack", &one);
    synced(&p, "two.pack", &two);
    let joined = [&b"PACK header"[..], &two, &one].concat();
    fs::create_dir(p.a.m("archive")).unwrap();
    let before = wire(&p);
    fs::write(p.a.m("archive/all.bundle"), &joined).unwrap();
    let what = "two 4 MiB files' data joined into a new file";
    within_budget(&p, "archive/all.bundle", &joined, before, what);
}

#[test]
fn a_moved_directory_costs_a_rename() {
    let p = Pair::mounted(true);
    fs::create_dir_all(p.a.m("project/src")).unwrap();
    let files: Vec<Vec<u8>> = (0..8).map(|i| random_bytes(1 << 20, 10 + i)).collect();
    for (i, f) in files.iter().enumerate() {
        fs::write(p.a.m(&format!("project/src/f{i}.bin")), f).unwrap();
    }
    synced(&p, "project/marker", b"all written\n");
    let last = format!("project/src/f{}.bin", files.len() - 1);
    let want = *blake3::hash(&files[files.len() - 1]).as_bytes();
    assert!(wait_until(120, || hash_of(&p.b.m(&last)) == Some(want)));
    std::thread::sleep(std::time::Duration::from_secs(1));
    let before = wire(&p);
    fs::create_dir(p.a.m("archive")).unwrap();
    fs::rename(p.a.m("project"), p.a.m("archive/project")).unwrap();
    let moved = format!("archive/{last}");
    within_budget(
        &p,
        &moved,
        &files[files.len() - 1],
        before,
        "a move of a directory of 8 MiB",
    );
    for (i, f) in files.iter().enumerate() {
        let path = p.b.m(&format!("archive/project/src/f{i}.bin"));
        assert_eq!(hash_of(&path), Some(*blake3::hash(f).as_bytes()), "{i}");
    }
    assert!(!p.b.m("project").exists(), "the old name is gone on B");
}
