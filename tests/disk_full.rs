//! A full disk on either side.
//!
//! On the receiver: B's store sits on a small tmpfs that a filler file
//! nearly fills. A 32 MiB file from A cannot be applied there: B logs and shows the
//! error in `status`, no part of the file's data is ever visible on B (a replay
//! reserves its blocks before writing), and A keeps it queued.
//! Once the filler goes, the file arrives whole.

mod common;

use common::{folder_id, hash_of, random_bytes, tail, wait_until, Node, Pair};
use serde_json::Value;

fn status(n: &Node) -> Value {
    let out = common::syncfs(&["status", "--json", n.store.to_str().unwrap()]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn free_bytes(dir: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

#[test]
fn a_full_disk_on_the_receiver_keeps_the_update_queued_until_space_is_freed() {
    let a = Node::new();
    let b = Node::on_tmpfs(160, &["--join", &folder_id(&a.store)]);
    let mut p = Pair::of(a, b, false);
    p.a.mount();
    p.b.mount();
    std::fs::write(p.a.m("small.txt"), b"the link works\n").unwrap();
    assert!(
        wait_until(30, || p.b.m("small.txt").exists()),
        "the link does not work"
    );

    let small = p.b.small_fs.clone().unwrap();
    let filler = small.join("filler");
    let leave = 40u64 << 20;
    std::fs::write(&filler, vec![1u8; (free_bytes(&small) - leave) as usize]).unwrap();
    let body = random_bytes(32 << 20, 5);
    let want = *blake3::hash(&body).as_bytes();
    std::fs::write(p.a.m("big.bin"), &body).unwrap();

    let full = |v: &Value| v.to_string().contains("No space left on device");
    assert!(
        wait_until(60, || p.b.log().contains("No space left on device")),
        "B logs no full disk:\n{}",
        tail(&p.b.log(), 20)
    );
    assert!(
        full(&status(&p.b)),
        "B's status shows no full disk: {}",
        status(&p.b)
    );
    let queued = |v: &Value| v["stats"]["queued"].as_u64().unwrap_or(0);
    assert!(
        queued(&status(&p.a)) >= 1,
        "A dropped the update: {}",
        status(&p.a)
    );
    for _ in 0..20 {
        let seen = std::fs::metadata(p.b.data().join("big.bin")).map(|m| m.len());
        // (the empty file its create op made may be there: that op was applied whole)
        assert!(
            seen.is_err() || seen.as_ref().is_ok_and(|n| *n == 0),
            "part of big.bin is visible on B: {seen:?}\n{}",
            tail(&p.b.log(), 30)
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }

    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_until(90, || hash_of(&p.b.m("big.bin")) == Some(want)),
        "big.bin did not arrive once space was freed\nA: {}\nB: {}",
        tail(&p.a.log(), 15),
        tail(&p.b.log(), 15)
    );
    assert!(
        wait_until(30, || queued(&status(&p.a)) == 0),
        "A still queues: {}",
        status(&p.a)
    );
    p.a.unmount();
    p.b.unmount();
}

/// Every regular file under `dir` with its BLAKE3.
fn tree(dir: &std::path::Path) -> Vec<(String, Option<[u8; 32]>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                hash_of(&p),
            )
        })
        .collect();
    out.sort();
    out
}

/// Fills the filesystem holding `dir` with one file; returns its path.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 1 << 20];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&chunk[..4096]).is_ok() {}
    let _ = f.sync_all();
    path
}

/// On the sender: A's store sits on a small tmpfs that a file written beside it fills
/// to the last block. New data through the mount fails with ENOSPC, but metadata
/// changes and deletes are still recorded (the intent log keeps room allocated ahead),
/// nothing recorded is lost, and the journal opens again after a restart.
#[test]
fn a_full_disk_on_the_sender_loses_no_journal() {
    use std::os::unix::fs::PermissionsExt;
    let a = Node::on_tmpfs(64, &[]);
    let b = Node::with_init(&["--join", &folder_id(&a.store)]);
    let mut p = Pair::of(a, b, false);
    p.a.mount();
    p.b.mount();
    for i in 0..20 {
        std::fs::write(p.a.m(&format!("f{i}")), random_bytes(1 << 20, i)).unwrap();
    }
    let (da, db) = (p.a.data(), p.b.data());
    let same = || tree(&da) == tree(&db);
    assert!(wait_until(60, same), "the first files did not sync");
    let filler = fill(p.a.small_fs.as_ref().unwrap());
    // New data is refused with a clear ENOSPC ...
    let r = std::fs::File::create(p.a.m("new.bin")).and_then(|mut f| {
        use std::io::Write;
        f.write_all(&random_bytes(1 << 20, 99))?;
        f.sync_all() // a write-back error shows here (close would drop it)
    });
    let e = r.expect_err("a write on a full disk succeeded");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENOSPC),
        "{e}\n{}",
        tail(&p.a.log(), 10)
    );
    // ... but metadata changes and deletes are still recorded (the log has room).
    for round in 0..50u32 {
        for i in 0..20 {
            let mode = if round % 2 == 0 { 0o600 } else { 0o644 };
            let perm = std::fs::Permissions::from_mode(mode);
            std::fs::set_permissions(p.a.m(&format!("f{i}")), perm).unwrap_or_else(|e| {
                panic!(
                    "chmod {round}/{i} on a full disk: {e}\n{}",
                    tail(&p.a.log(), 10)
                )
            });
        }
    }
    for i in 0..10 {
        std::fs::remove_file(p.a.m(&format!("f{i}")))
            .unwrap_or_else(|e| panic!("rm f{i} on a full disk: {e}"));
    }
    assert!(
        !p.a.has_exited(),
        "A's daemon died:\n{}",
        tail(&p.a.log(), 20)
    );
    std::fs::remove_file(&filler).unwrap();
    // What A holds reaches B: at once, or, when A's journal database hit the full
    // disk (sled keeps a write error until it is reopened; the intent log kept every
    // record), after A restarts. Either way nothing recorded is lost.
    if !wait_until(30, same) {
        let db_failed = p.a.log().contains("journal database");
        assert!(db_failed, "B differs from A\nA: {}", tail(&p.a.log(), 20));
        eprintln!("A's journal database failed on the full disk: restarting A");
        p.a.unmount();
        p.a.mount();
        assert!(
            wait_until(120, same),
            "B differs from A after a restart\nA: {}\nB: {}",
            tail(&p.a.log(), 20),
            tail(&p.b.log(), 20)
        );
    }
    // The journal survives a restart, and keeps working.
    p.a.unmount();
    p.a.mount();
    std::fs::write(p.a.m("after.txt"), b"after the full disk\n").unwrap();
    let after = || std::fs::read(p.b.m("after.txt")).is_ok_and(|b| b == b"after the full disk\n");
    assert!(
        wait_until(60, after),
        "no sync after the restart:\n{}",
        tail(&p.a.log(), 20)
    );
    assert!(same(), "B differs from A after the restart");
    p.a.unmount();
    p.b.unmount();
}
