//! Real programs through two real mounts on loopback: git, vim, SQLite in WAL mode,
//! rsync, `cp -a` and a package-manager-style untar + rename. After each scenario both
//! trees are byte-identical (contents, modes, symlinks, hard links, and mtimes where the
//! client set them), the client's own integrity check passes on the peer, and both
//! daemons are idle with nothing queued. Each scenario prints its time to converge and
//! the bytes it cost on the wire (counted by proxies outside the program).

mod common;
use common::{wait_until, Node, Pair};
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a scenario may take to converge.
const CONVERGE_SECS: u64 = 120;

/// Runs `prog args` in `cwd`, panicking with its output on failure; returns stdout.
fn run(cwd: &Path, prog: &str, args: &[&str]) -> String {
    let home = std::env::temp_dir();
    let out = Command::new(prog)
        .args(args)
        .current_dir(cwd)
        .env("HOME", &home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "syncfs test")
        .env("GIT_AUTHOR_EMAIL", "test@syncfs.invalid")
        .env("GIT_COMMITTER_NAME", "syncfs test")
        .env("GIT_COMMITTER_EMAIL", "test@syncfs.invalid")
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?} in {} failed: {}\n{}",
        cwd.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every name below `root` with what must match on the peer: kind, mode, size, content
/// hash, symlink target, link count, and the mtime when `mtimes` is set.
fn tree(root: &Path, mtimes: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut inodes = HashMap::new();
    walk(root, root, mtimes, &mut inodes, &mut out);
    out.sort();
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    mtimes: bool,
    inodes: &mut HashMap<u64, String>,
    out: &mut Vec<(String, String)>,
) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        let mode = md.mode() & 0o7777;
        let desc = if md.is_dir() {
            walk(root, &p, mtimes, inodes, out);
            format!("dir {mode:o}")
        } else if md.file_type().is_symlink() {
            format!(
                "link {}",
                fs::read_link(&p)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default()
            )
        } else {
            let hash = fs::read(&p).map(|d| blake3::hash(&d).to_hex()[..16].to_string());
            // hard links: every name after the first names the first (names sort alike)
            let first = inodes
                .entry(md.ino())
                .or_insert_with(|| rel.clone())
                .clone();
            let time = if mtimes {
                format!(" mtime {}.{:09}", md.mtime(), md.mtime_nsec())
            } else {
                String::new()
            };
            format!(
                "file {mode:o} {} {} nlink {} {}{time}",
                md.len(),
                hash.unwrap_or_default(),
                md.nlink(),
                if first == rel {
                    String::new()
                } else {
                    format!("= {first}")
                }
            )
        };
        out.push((rel, desc));
    }
}

/// True when `n`'s daemon reports nothing queued, nothing in flight and nothing stuck.
fn idle(n: &Node) -> bool {
    syncfs::control::query(&n.store.join("control.sock"))
        .is_some_and(|s| s.stats.queued == 0 && s.stats.in_flight == 0 && s.stats.stuck.is_empty())
}

/// Waits until `sub` is the same below both mounts and both daemons are idle; panics
/// with both trees and logs otherwise. Prints the time it took (from this call: the
/// client has finished) and the wire bytes since `bytes0` (taken before the client ran).
fn converge(p: &Pair, sub: &str, mtimes: bool, what: &str, bytes0: u64) {
    let t0 = Instant::now();
    let (a, b) = (p.a.m(sub), p.b.m(sub));
    // the cheap check first: trees are walked (and hashed) only once both are idle
    let ok = wait_until(CONVERGE_SECS, || {
        idle(&p.a) && idle(&p.b) && tree(&a, mtimes) == tree(&b, mtimes)
    });
    if !ok {
        let (ta, tb) = (tree(&a, mtimes), tree(&b, mtimes));
        let diff: Vec<_> = ta.iter().filter(|e| !tb.contains(e)).take(20).collect();
        let diff_b: Vec<_> = tb.iter().filter(|e| !ta.contains(e)).take(20).collect();
        let backing_b = tree(&p.b.data().join(sub), mtimes);
        let diff_bb: Vec<_> = backing_b
            .iter()
            .filter(|e| !ta.contains(e))
            .take(20)
            .collect();
        panic!(
            "{what}: not converged after {CONVERGE_SECS} s (idle A {}, B {})\nonly in A: {diff:#?}\n\
             only in B: {diff_b:#?}\nonly in B's backing dir: {diff_bb:#?}\nA status: {:?}\n\
             A log: {}\nB log: {}",
            idle(&p.a),
            idle(&p.b),
            syncfs::control::query(&p.a.store.join("control.sock")),
            common::tail(&p.a.log(), 30),
            common::tail(&p.b.log(), 30)
        );
    }
    assert!(!tree(&a, mtimes).is_empty(), "{what}: empty tree");
    eprintln!(
        "{what}: converged {:.2} s after the client finished, {} bytes on the wire",
        t0.elapsed().as_secs_f64(),
        wire(p) - bytes0
    );
}

/// Bytes both proxies forwarded so far.
fn wire(p: &Pair) -> u64 {
    p.proxies.iter().map(|x| x.count()).sum()
}

/// A real source tree: the sled crate's source from the local cargo registry.
fn crate_source() -> PathBuf {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let src = home.join("registry/src");
    for reg in fs::read_dir(&src)
        .expect("cargo registry sources")
        .flatten()
    {
        for c in fs::read_dir(reg.path()).into_iter().flatten().flatten() {
            if c.file_name().to_string_lossy().starts_with("sled-0.34") {
                return c.path();
            }
        }
    }
    panic!("no sled-0.34 source below {}", src.display());
}

fn git(dir: &Path, args: &[&str]) -> String {
    run(dir, "git", args)
}

#[test]
fn git_history_gc_and_checkout_cross_both_ways() {
    let p = Pair::mounted(true);
    let w0 = wire(&p);
    let repo = p.a.m("repo");
    fs::create_dir(&repo).unwrap();
    let src = crate_source();
    git(&repo, &["init", "-q", "-b", "main"]);
    run(&repo, "cp", &["-r", &format!("{}/src", src.display()), "."]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "import src"]);
    git(&repo, &["tag", "v1"]);
    for f in ["Cargo.toml", "README.md", "CHANGELOG.md"] {
        fs::copy(src.join(f), repo.join(f)).unwrap();
    }
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "manifest and docs"]);
    git(&repo, &["checkout", "-qb", "feature"]);
    fs::write(
        repo.join("src/feature.rs"),
        "pub fn feature() -> u32 { 42 }\n",
    )
    .unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "feature"]);
    git(&repo, &["checkout", "-q", "main"]);
    let readme = fs::read_to_string(repo.join("README.md")).unwrap();
    fs::write(
        repo.join("README.md"),
        format!("# edited on main\n{readme}"),
    )
    .unwrap();
    git(&repo, &["commit", "-qam", "edit readme"]);
    git(&repo, &["merge", "-q", "--no-edit", "feature"]);
    git(&repo, &["gc", "-q", "--aggressive"]);
    git(&repo, &["checkout", "-q", "v1"]);
    git(&repo, &["checkout", "-q", "main"]);
    converge(&p, "repo", false, "git on A", w0);
    let peer = p.b.m("repo");
    git(&peer, &["fsck", "--full", "--strict"]);
    let head = git(&repo, &["rev-parse", "HEAD"]);
    assert_eq!(git(&peer, &["rev-parse", "HEAD"]), head);
    // a commit on B comes back to A
    fs::write(peer.join("src/from_b.rs"), "// written on B\n").unwrap();
    git(&peer, &["add", "."]);
    let w0 = wire(&p);
    git(&peer, &["commit", "-qm", "from B"]);
    converge(&p, "repo", false, "git commit on B", w0);
    git(&repo, &["fsck", "--full", "--strict"]);
    let head_b = git(&peer, &["rev-parse", "HEAD"]);
    assert_ne!(head_b, head);
    assert_eq!(git(&repo, &["rev-parse", "HEAD"]), head_b);
    assert_eq!(git(&repo, &["log", "-1", "--format=%s"]).trim(), "from B");
}

/// vim editing `notes.txt` with a swap file and a backup (renamed away, new file
/// written, backup and swap deleted), driven non-interactively.
fn vim_edit(dir: &Path) {
    let script = "set swapfile directory=. backup writebackup backupcopy=no backupdir=.\n\
                  edit notes.txt\n%s/line 5/line five, edited/\nwrite\nquit\n";
    fs::write(dir.join("../edit.vim"), script).unwrap();
    run(
        dir,
        "vim",
        &["-u", "NONE", "-i", "NONE", "-N", "-Es", "-S", "../edit.vim"],
    );
}

fn editor_scenario(p: &Pair, from: &Node, tag: &str) {
    let dir = from.m(tag);
    fs::create_dir(&dir).unwrap();
    let text: String = (0..2000)
        .map(|i| format!("line {i} of the notes\n"))
        .collect();
    fs::write(dir.join("notes.txt"), &text).unwrap();
    converge(p, tag, false, &format!("{tag}: first version"), wire(p));
    let w0 = wire(p);
    vim_edit(&dir);
    let saved = fs::read_to_string(dir.join("notes.txt")).unwrap();
    assert!(
        saved.contains("line five, edited"),
        "vim did not save the edit"
    );
    converge(p, tag, true, &format!("{tag}: vim save"), w0);
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        names,
        vec!["notes.txt"],
        "swap and backup files are gone on {tag}"
    );
}

#[test]
fn editor_save_as_vim_does_it_both_ways() {
    let p = Pair::mounted(true);
    editor_scenario(&p, &p.a, "vim_a");
    editor_scenario(&p, &p.b, "vim_b");
}

fn sqlite(dir: &Path, sql: &str) -> String {
    run(dir, "sqlite3", &["-batch", "db.sqlite", sql])
}

fn sqlite_scenario(p: &Pair, from: &Node, to: &Node, tag: &str) {
    let dir = from.m(tag);
    fs::create_dir(&dir).unwrap();
    let mut sql =
        String::from("PRAGMA journal_mode=WAL;\nCREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);\n");
    for i in 0..300 {
        sql += &format!(
            "BEGIN; INSERT INTO t(v) VALUES('row {i} {}'); COMMIT;\n",
            "x".repeat(i % 50)
        );
        if i % 7 == 0 {
            sql += &format!(
                "BEGIN; UPDATE t SET v = v || '!' WHERE id = {}; COMMIT;\n",
                i / 2 + 1
            );
        }
    }
    sql += "PRAGMA wal_checkpoint(TRUNCATE);\n";
    let w0 = wire(p);
    assert_eq!(sqlite(&dir, &sql).lines().next(), Some("wal"));
    converge(p, tag, false, &format!("{tag}: sqlite WAL writer"), w0);
    let peer = to.m(tag);
    assert_eq!(sqlite(&peer, "PRAGMA integrity_check;").trim(), "ok");
    assert_eq!(sqlite(&peer, "SELECT count(*) FROM t;").trim(), "300");
    assert_eq!(
        sqlite(&peer, "SELECT sum(length(v)) FROM t;"),
        sqlite(&dir, "SELECT sum(length(v)) FROM t;")
    );
    // the peer's reads (its own -wal/-shm, gone at close) settle too
    converge(
        p,
        tag,
        false,
        &format!("{tag}: after reads on the peer"),
        wire(p),
    );
}

#[test]
fn sqlite_in_wal_mode_both_ways() {
    let p = Pair::mounted(true);
    sqlite_scenario(&p, &p.a, &p.b, "sql_a");
    sqlite_scenario(&p, &p.b, &p.a, "sql_b");
}

/// A source tree outside the mount: the crate source plus some binary files.
fn make_source(dir: &Path) {
    run(
        Path::new("/"),
        "cp",
        &[
            "-r",
            crate_source().to_str().unwrap(),
            dir.to_str().unwrap(),
        ],
    );
    fs::create_dir_all(dir.join("bin")).unwrap();
    for i in 0..5u32 {
        let data: Vec<u8> = (0..200_000u32)
            .map(|j| (j.wrapping_mul(2654435761) >> (i + 3)) as u8)
            .collect();
        fs::write(dir.join(format!("bin/blob{i}")), data).unwrap();
    }
    fs::set_permissions(dir.join("bin/blob0"), fs::Permissions::from_mode(0o755)).unwrap();
}

fn rsync_scenario(p: &Pair, from: &Node, tag: &str) {
    let src = from.tmp.path().join(format!("{tag}-src"));
    make_source(&src);
    let dst = format!("{}/", from.m(tag).display());
    let srcs = format!("{}/", src.display());
    let w0 = wire(p);
    run(Path::new("/"), "rsync", &["-a", &srcs, &dst]);
    converge(p, tag, true, &format!("{tag}: first rsync -a"), w0);
    // changes: edits, a deletion, a new file, a mode change
    let lib = src.join("src/lib.rs");
    let text = fs::read_to_string(&lib).unwrap();
    fs::write(&lib, format!("// changed\n{text}")).unwrap();
    fs::write(src.join("bin/blob1"), b"now small").unwrap();
    fs::remove_file(src.join("bin/blob2")).unwrap();
    fs::write(src.join("NEW.txt"), b"new file").unwrap();
    fs::set_permissions(src.join("bin/blob3"), fs::Permissions::from_mode(0o600)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let w0 = wire(p);
    run(Path::new("/"), "rsync", &["-a", "--delete", &srcs, &dst]);
    converge(p, tag, true, &format!("{tag}: second rsync -a"), w0);
    assert_eq!(
        fs::read(from.m(&format!("{tag}/bin/blob1"))).unwrap(),
        b"now small"
    );
}

#[test]
fn rsync_into_the_mount_both_ways() {
    let p = Pair::mounted(true);
    rsync_scenario(&p, &p.a, "rsync_a");
    rsync_scenario(&p, &p.b, "rsync_b");
}

fn cp_scenario(p: &Pair, from: &Node, tag: &str) {
    let src = from.tmp.path().join(format!("{tag}-src"));
    make_source(&src);
    fs::set_permissions(src.join("README.md"), fs::Permissions::from_mode(0o444)).unwrap();
    fs::set_permissions(src.join("bin/blob4"), fs::Permissions::from_mode(0o500)).unwrap();
    std::os::unix::fs::symlink("README.md", src.join("readme-link")).unwrap();
    std::os::unix::fs::symlink("../src", src.join("bin/src-link")).unwrap();
    fs::hard_link(src.join("bin/blob1"), src.join("bin/blob1-hardlink")).unwrap();
    let w0 = wire(p);
    run(
        Path::new("/"),
        "cp",
        &["-a", src.to_str().unwrap(), from.m(tag).to_str().unwrap()],
    );
    converge(p, tag, true, &format!("{tag}: cp -a"), w0);
    let copied = from.m(tag);
    let md = fs::metadata(copied.join("bin/blob1-hardlink")).unwrap();
    assert_eq!(md.nlink(), 2, "cp -a kept the hard link");
    let w0 = wire(p);
    for d in ["src", "bin"] {
        if d == "bin" {
            fs::set_permissions(copied.join("bin/blob4"), fs::Permissions::from_mode(0o700))
                .unwrap();
        }
        fs::remove_dir_all(copied.join(d)).unwrap();
    }
    converge(p, tag, true, &format!("{tag}: rm -rf of half"), w0);
}

#[test]
fn cp_a_then_rm_rf_half_both_ways() {
    let p = Pair::mounted(true);
    cp_scenario(&p, &p.a, "cp_a");
    cp_scenario(&p, &p.b, "cp_b");
}

/// A tarball of `n` small files in a few hundred directories.
fn make_tarball(dir: &Path, n: usize) -> PathBuf {
    let root = dir.join("pkg-src");
    for i in 0..n {
        let d = root.join(format!("lib/mod{:03}", i % 250));
        fs::create_dir_all(&d).unwrap();
        let body = format!("// file {i}\nexport const v{i} = {};\n", i * 7);
        fs::write(d.join(format!("f{i}.js")), body.repeat(1 + i % 5)).unwrap();
    }
    let tar = dir.join("pkg.tar");
    run(
        dir,
        "tar",
        &[
            "-cf",
            tar.to_str().unwrap(),
            "-C",
            root.to_str().unwrap(),
            ".",
        ],
    );
    tar
}

fn package_scenario(p: &Pair, from: &Node, tag: &str) {
    let tar = make_tarball(from.tmp.path(), 5000);
    let base = from.m(tag);
    fs::create_dir_all(base.join(".staging/pkg-tmp")).unwrap();
    let w0 = wire(p);
    run(
        &base.join(".staging/pkg-tmp"),
        "tar",
        &["-xf", tar.to_str().unwrap()],
    );
    fs::create_dir(base.join("node_modules")).unwrap();
    fs::rename(base.join(".staging/pkg-tmp"), base.join("node_modules/pkg")).unwrap();
    converge(
        p,
        tag,
        false,
        &format!("{tag}: 5,000 files untarred and renamed"),
        w0,
    );
    let count = tree(&p.b.m(tag), false)
        .iter()
        .filter(|(_, d)| d.starts_with("file"))
        .count();
    assert_eq!(count, 5000);
}

#[test]
fn package_manager_untar_and_rename_both_ways() {
    let p = Pair::mounted(true);
    package_scenario(&p, &p.a, "pkg_a");
    package_scenario(&p, &p.b, "pkg_b");
}
