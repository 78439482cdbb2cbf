//! Paths longer than `PATH_MAX` once the store's own path is added: attribute and
//! namespace operations through the mount still work and are journaled with their
//! store-relative paths (the daemon cannot read them back from `/proc/self/fd`).

mod common;
use common::{journal_snapshot, Node};
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use syncfs::journal::MetaOp;

/// Directory components (240 bytes each) below the mount root.
const DEPTH: usize = 16;

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn check(rc: libc::c_int, what: &str) -> libc::c_int {
    assert!(rc >= 0, "{what}: {}", std::io::Error::last_os_error());
    rc
}

/// Makes `name` in `dir` (through the mount) and opens it as a directory.
fn mkdir_open(dir: &OwnedFd, name: &str) -> OwnedFd {
    let n = c(name);
    check(
        unsafe { libc::mkdirat(dir.as_raw_fd(), n.as_ptr(), 0o755) },
        "mkdirat",
    );
    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
    let fd = check(
        unsafe { libc::openat(dir.as_raw_fd(), n.as_ptr(), flags) },
        "openat dir",
    );
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn open_at(dir: &OwnedFd, name: &str, flags: libc::c_int) -> File {
    let fd = check(
        unsafe { libc::openat(dir.as_raw_fd(), c(name).as_ptr(), flags, 0o644) },
        &format!("openat {flags:o}"),
    );
    unsafe { File::from_raw_fd(fd) }
}

/// Finds the op `want` matches in the journal, by its paths.
fn has(ops: &[MetaOp], want: impl Fn(&MetaOp) -> bool) -> bool {
    ops.iter().any(want)
}

#[test]
fn ops_on_paths_past_path_max_work_and_are_journaled() {
    let long_store_dir = format!("{}/{}", "s".repeat(120), "t".repeat(120));
    let mut n = Node::with_store_under(&long_store_dir);
    assert!(n.data().canonicalize().unwrap().as_os_str().len() > 200);
    n.mount();
    let root = File::open(n.m("")).unwrap();
    let mut dir: OwnedFd = root.into();
    let mut parent = None;
    let mut rel = String::new();
    let comps: Vec<String> = (0..DEPTH).map(|i| format!("{i:x}").repeat(240)).collect();
    for comp in &comps {
        let next = mkdir_open(&dir, comp);
        parent = Some(std::mem::replace(&mut dir, next));
        rel.push_str(comp);
        rel.push('/');
    }
    let (f, g, h) = ("f".repeat(150), "g".repeat(150), "h".repeat(150));
    let file = format!("{rel}{f}");
    assert!(file.len() >= 4000, "{}", file.len());
    let abs = n.data().canonicalize().unwrap().as_os_str().len();
    assert!(
        abs + rel.len() > 4096,
        "the deepest directory is past PATH_MAX too"
    );

    let mut w = open_at(&dir, &f, libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL);
    w.write_all(b"hello, deep world").unwrap();
    drop(w);
    let (fc, gc, hc) = (c(&f), c(&g), c(&h));
    let d = dir.as_raw_fd();
    check(unsafe { libc::fchmodat(d, fc.as_ptr(), 0o600, 0) }, "chmod");
    check(
        unsafe { libc::fchownat(d, fc.as_ptr(), 1234, 4321, 0) },
        "chown",
    );
    open_at(&dir, &f, libc::O_WRONLY)
        .set_len(5)
        .expect("truncate");
    check(
        unsafe { libc::linkat(d, fc.as_ptr(), d, gc.as_ptr(), 0) },
        "link",
    );
    check(
        unsafe { libc::renameat(d, gc.as_ptr(), d, hc.as_ptr()) },
        "rename",
    );
    let last = c(comps.last().unwrap());
    let p = parent.unwrap();
    check(
        unsafe { libc::fchmodat(p.as_raw_fd(), last.as_ptr(), 0o700, 0) },
        "chmod of the deepest directory",
    );
    // Moved to another deep directory through the mount, then changed there.
    let (e, k) = ("e".repeat(240), "k".repeat(150));
    let other = mkdir_open(&p, &e);
    drop(open_at(
        &dir,
        &k,
        libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL,
    ));
    let kc = c(&k);
    check(
        unsafe { libc::renameat(d, kc.as_ptr(), other.as_raw_fd(), kc.as_ptr()) },
        "rename across directories",
    );
    check(
        unsafe { libc::fchmodat(other.as_raw_fd(), kc.as_ptr(), 0o640, 0) },
        "chmod after the move",
    );
    drop((dir, p, other));
    n.unmount();

    let ops: Vec<MetaOp> = journal_snapshot(&n.store)
        .meta
        .into_iter()
        .map(|(_, op)| op)
        .collect();
    let at = |p: &syncfs::path::RelPath, s: &str| p.as_bytes() == s.as_bytes();
    let (gp, hp, dp) = (
        format!("{rel}{g}"),
        format!("{rel}{h}"),
        rel.trim_end_matches('/'),
    );
    let kinds: Vec<&str> = ops.iter().map(|o| o.kind()).collect();
    assert!(
        has(
            &ops,
            |o| matches!(o, MetaOp::Create { path, .. } if at(path, &file))
        ),
        "create: {kinds:?}"
    );
    assert!(has(
        &ops,
        |o| matches!(o, MetaOp::Chmod { path, mode: 0o600 } if at(path, &file))
    ));
    assert!(has(
        &ops,
        |o| matches!(o, MetaOp::Chown { path, uid: Some(1234), .. } if at(path, &file))
    ));
    assert!(has(
        &ops,
        |o| matches!(o, MetaOp::Truncate { path, size: 5, .. } if at(path, &file))
    ));
    assert!(has(
        &ops,
        |o| matches!(o, MetaOp::Link { from, to } if at(from, &file) && at(to, &gp))
    ));
    assert!(has(
        &ops,
        |o| matches!(o, MetaOp::Rename { from, to, .. } if at(from, &gp) && at(to, &hp))
    ));
    assert!(has(
        &ops,
        |o| matches!(o, MetaOp::Chmod { path, mode: 0o700 } if at(path, dp))
    ));
    let moved = format!("{}{e}/{k}", &rel[..rel.len() - 241]);
    assert!(has(
        &ops,
        |o| matches!(o, MetaOp::Chmod { path, mode: 0o640 } if at(path, &moved))
    ));
}
