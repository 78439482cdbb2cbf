//! The daemon runs as root and mounts with `allow_other`: a local user must find no way
//! in through the store (pre-images, intent log, control socket, identity key), and the
//! mount is `nosuid,nodev`. The attacks run as an unprivileged uid (65534).

mod common;
use common::Node;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

const NOBODY: u32 = 65534;

/// Runs a python script as uid/gid 65534; returns its stdout.
fn as_nobody(script: &str) -> String {
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .uid(NOBODY)
        .gid(NOBODY)
        .env_clear()
        .output()
        .expect("run python3 as nobody");
    assert!(
        out.status.success(),
        "attack script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Each attempted way in, and what it did ("refused: ..." or "DONE").
const ATTACKS: &str = r#"
import os, socket, sys
store, mnt, decoy, ino = sys.argv[1:5] if len(sys.argv) > 4 else (None,)*4
def attempt(name, f):
    try:
        f()
        print(name, "DONE")
    except OSError as e:
        print(name, "refused:", e.strerror)
def sock():
    s = socket.socket(socket.AF_UNIX)
    s.connect(store + "/control.sock")
    s.sendall(b"status\n")
    s.recv(100)
attempt("list-store", lambda: os.listdir(store))
attempt("plant-preimage-symlink", lambda: os.symlink(decoy, store + "/preimages/" + ino))
attempt("append-intent-log", lambda: open(store + "/journal/intent.log", "ab").write(b"x" * 64))
attempt("read-identity-key", lambda: open(store + "/identity.key", "rb").read())
attempt("control-socket", sock)
attempt("touch-journal-db", lambda: open(store + "/journal/db/conf", "ab").write(b"x"))
# the trigger of the pre-image attack: overwrite a file of one's own in the mount
with open(mnt + "/mine", "r+b") as f:
    f.write(b"y" * 4096)
print("overwrote-own-file DONE")
"#;

#[test]
fn a_local_user_finds_no_way_in_through_the_store() {
    let mut n = Node::new();
    // the temp dir must not be what protects the store: open it to everyone
    fs::set_permissions(n.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&n.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    // a peer is configured (pre-images are kept only then); it need not answer
    common::syncfs(&[
        "add-peer",
        n.store.to_str().unwrap(),
        "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWLHaasAuaRXQ5CjTQtnTuBkU6TiUXVoVaXMjy44PFFNBF",
    ]);
    common::set_config(&n.store, "mdns", "false");
    n.mount();
    let decoy = n.tmp.path().join("decoy");
    fs::write(&decoy, b"precious").unwrap();
    fs::write(n.m("mine"), vec![b'x'; 8192]).unwrap();
    std::os::unix::fs::chown(n.m("mine"), Some(NOBODY), Some(NOBODY)).unwrap();
    let ino = fs::metadata(n.data().join("mine"))
        .unwrap()
        .ino()
        .to_string();
    let script = ATTACKS.replace(
        "sys.argv[1:5] if len(sys.argv) > 4 else (None,)*4",
        &format!(
            "{:?}, {:?}, {:?}, {:?}",
            n.store.to_str().unwrap(),
            n.mnt.to_str().unwrap(),
            decoy.to_str().unwrap(),
            ino
        ),
    );
    let out = as_nobody(&script);
    eprintln!("{out}");
    for line in out.lines().filter(|l| !l.starts_with("overwrote-own-file")) {
        assert!(line.contains("refused"), "a way in: {line}\n{out}");
    }
    assert!(out.contains("overwrote-own-file DONE"), "{out}");
    assert_eq!(
        fs::read(&decoy).unwrap(),
        b"precious",
        "a file outside the store changed"
    );
    // modes as set: store 0700, the daemon's files 0600
    let mode = |p: &std::path::Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&n.store), 0o700);
    for d in ["journal", "staging", "preimages"] {
        assert_eq!(mode(&n.store.join(d)), 0o700, "{d}");
    }
    for f in [
        "journal/intent.log",
        "control.sock",
        "identity.key",
        "config.toml",
    ] {
        assert_eq!(mode(&n.store.join(f)) & 0o077, 0, "{f} is open to others");
    }
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == n.mnt.to_str())
        .expect("mounted");
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
    n.unmount();
}
