//! `.syncfsignore` through two real mounts: ignored paths (a file, a directory pattern,
//! a glob) never reach the peer while others do; renames into and out of the ignored
//! set delete and send; un-ignoring a path (editing the file) sends it.

mod common;

use common::{wait_until, Pair};
use std::path::Path;
use std::time::Duration;

fn write(p: &Path, text: &str) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, text).unwrap();
}

/// Waits until B holds `rel` with A's content.
fn arrives(p: &Pair, rel: &str) {
    let ok = wait_until(20, || {
        std::fs::read(p.b.m(rel)).ok() == std::fs::read(p.a.m(rel)).ok()
    });
    assert!(
        ok,
        "{rel} did not reach B: {}",
        common::tail(&p.a.log(), 20)
    );
}

fn absent_on_b(p: &Pair, rels: &[&str]) {
    for rel in rels {
        assert!(
            !p.b.m(rel).exists(),
            "{rel} reached B: {}",
            common::tail(&p.a.log(), 20)
        );
    }
}

#[test]
fn ignored_paths_stay_local_until_unignored() {
    let p = Pair::mounted(false);
    write(
        &p.a.m(".syncfsignore"),
        "# local only\nsecret.txt\ntarget/\n*.o\n",
    );
    arrives(&p, ".syncfsignore");

    write(&p.a.m("secret.txt"), "mine");
    write(&p.a.m("target/debug/out.bin"), "build output");
    write(&p.a.m("src/a.o"), "object a");
    write(&p.a.m("src/x.o"), "object x");
    write(&p.a.m("src/a.c"), "int main;");
    write(&p.a.m("notes.txt"), "synced");
    arrives(&p, "src/a.c");
    arrives(&p, "notes.txt");
    // B's own ignored files do not reach A either.
    write(&p.b.m("target/from-b"), "b's build");
    write(&p.b.m("b.txt"), "from b");
    assert!(
        wait_until(20, || p.a.m("b.txt").exists()),
        "b.txt did not reach A"
    );
    std::thread::sleep(Duration::from_millis(1500));
    absent_on_b(&p, &["secret.txt", "target/debug", "src/a.o", "src/x.o"]);
    assert!(
        !p.a.m("target/from-b").exists(),
        "B's ignored file reached A"
    );

    // Renamed to an ignored name: the peer sees a delete; out of one: it is sent.
    std::fs::rename(p.a.m("notes.txt"), p.a.m("notes.o")).unwrap();
    assert!(
        wait_until(20, || !p.b.m("notes.txt").exists()),
        "notes.txt not deleted on B"
    );
    std::fs::rename(p.a.m("src/a.o"), p.a.m("src/a2.c")).unwrap();
    arrives(&p, "src/a2.c");
    absent_on_b(&p, &["notes.o"]);

    // Un-ignoring: what the rules no longer match is sent at once.
    write(&p.a.m(".syncfsignore"), "target/\n");
    arrives(&p, ".syncfsignore");
    arrives(&p, "secret.txt");
    arrives(&p, "src/x.o");
    arrives(&p, "notes.o");
    std::thread::sleep(Duration::from_millis(1000));
    absent_on_b(&p, &["target/debug/out.bin"]);
    assert!(
        !p.a.m("target/from-b").exists(),
        "B's ignored file reached A"
    );
}
