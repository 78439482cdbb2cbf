//! Applier tests: updates (overlay, shrink, growth, refusals), staging recovery, crash
//! points (in a child process), hooks, and every metadata op applied twice.

use super::stage::write_staged;
use super::*;
use crate::journal::op::{MetaOp, SetTime, Timestamp};
use crate::wire::{compress_range, Encoding, FileUpdate, RangeData};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;

pub(super) fn rp(s: &str) -> RelPath {
    RelPath::from_bytes(s.as_bytes()).unwrap()
}

pub(super) fn hash(b: &[u8]) -> [u8; 32] {
    *blake3::hash(b).as_bytes()
}

pub(super) struct Env {
    _t: tempfile::TempDir,
    pub(super) dir: PathBuf,
    pub(super) data: PathBuf,
    pub(super) staging: PathBuf,
}

impl Env {
    pub(super) fn new() -> Env {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        let (data, staging) = (dir.join("data"), dir.join("staging"));
        fs::create_dir(&data).unwrap();
        fs::create_dir(&staging).unwrap();
        Env {
            _t: t,
            dir,
            data,
            staging,
        }
    }
    pub(super) fn applier(&self) -> Applier {
        Applier::open(&self.data, &self.staging, Arc::new(NoHooks)).unwrap()
    }
    pub(super) fn with_hooks(&self, hooks: Arc<dyn ApplyHooks>) -> Applier {
        Applier::open(&self.data, &self.staging, hooks).unwrap()
    }
    pub(super) fn p(&self, rel: &str) -> PathBuf {
        self.data.join(rel)
    }
    pub(super) fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.p(rel)).unwrap()
    }
    pub(super) fn staged(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.staging)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }
}

/// An update turning `old` (None: no base) into `new` by sending `new`'s bytes in
/// `spans` (offset, len).
pub(super) fn update(
    path: &str,
    old: Option<&[u8]>,
    new: &[u8],
    spans: &[(u64, u64)],
) -> FileUpdate {
    let ranges = spans
        .iter()
        .map(|&(o, l)| compress_range(o, &new[o as usize..(o + l) as usize], 3))
        .collect();
    FileUpdate {
        id: 7,
        file: 42,
        path: rp(path),
        base: old.map(|o| crate::wire::base_id(&hash(o))),
        size: new.len() as u64,
        mode: 0o100640,
        mtime: Timestamp {
            secs: 1_600_000_000,
            nanos: 123_456_789,
        }
        .into(),
        ranges,
        hash: hash(new),
        vv: vec![],
    }
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn assert_mtime(e: &Env, rel: &str) {
    let m = fs::metadata(e.p(rel)).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 123_456_789));
}

#[test]
fn update_overlays_ranges_and_grows() {
    let e = Env::new();
    let old = b"hello world".to_vec();
    fs::write(e.p("f"), &old).unwrap();
    let mut new = b"HELLO world\0\0\0\0tail!".to_vec();
    new[6] = b'W';
    let u = update("f", Some(&old), &new, &[(0, 5), (6, 1), (15, 5)]);
    let a = e.applier();
    a.apply_update(&u).unwrap();
    assert_eq!(e.read("f"), new);
    assert_eq!(
        fs::metadata(e.p("f")).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    assert_mtime(&e, "f");
    assert!(e.staged().is_empty());
    assert_eq!(a.file_hash(&rp("f")).unwrap(), Some(hash(&new)));
    assert_eq!(a.file_hash(&rp("nope")).unwrap(), None);
}

#[test]
fn update_shrinks_across_chunks() {
    let e = Env::new();
    let old = pseudo_random(3 * CHUNK + 1234, 1);
    fs::write(e.p("big"), &old).unwrap();
    let mut new = old[..CHUNK + CHUNK / 2].to_vec();
    // A range straddling the first chunk boundary, and one at the very end.
    let (a0, a1) = (CHUNK as u64 - 100, 300u64);
    new[a0 as usize..(a0 + a1) as usize].copy_from_slice(&pseudo_random(a1 as usize, 2));
    let end = new.len() as u64;
    new[end as usize - 10..].fill(b'z');
    let u = update("big", Some(&old), &new, &[(a0, a1), (end - 10, 10)]);
    e.applier().apply_update(&u).unwrap();
    assert_eq!(e.read("big"), new);
}

#[test]
fn update_grows_with_zero_fill_across_chunks() {
    let e = Env::new();
    let old = pseudo_random(1000, 3);
    fs::write(e.p("g"), &old).unwrap();
    let mut new = old.clone();
    new.resize(2 * CHUNK + 77, 0);
    let tail = pseudo_random(CHUNK + 50, 4); // a range spanning a whole chunk and more
    let off = CHUNK - 10;
    new[off..off + tail.len()].copy_from_slice(&tail);
    let end = (off + tail.len()) as u64; // the zeros after it are sent too
    let spans = [
        (off as u64, tail.len() as u64),
        (end, new.len() as u64 - end),
    ];
    let u = update("g", Some(&old), &new, &spans);
    e.applier().apply_update(&u).unwrap();
    assert_eq!(e.read("g"), new);
}

#[test]
fn update_without_base_creates_or_overlays() {
    let e = Env::new();
    fs::create_dir(e.p("d")).unwrap();
    let new = b"brand new file".to_vec();
    let u = update("d/n", None, &new, &[(0, new.len() as u64)]);
    let a = e.applier();
    a.apply_update(&u).unwrap();
    assert_eq!(e.read("d/n"), new);
    assert_eq!(
        fs::metadata(e.p("d/n")).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    // base None over an existing file: the ranges go onto whatever is there.
    let newer = b"BRAND new file!!".to_vec();
    let u = update("d/n", None, &newer, &[(0, 5), (14, 2)]);
    a.apply_update(&u).unwrap();
    assert_eq!(e.read("d/n"), newer);
    // An empty file.
    let u = update("d/empty", None, b"", &[]);
    a.apply_update(&u).unwrap();
    assert_eq!(e.read("d/empty"), b"");
}

#[test]
fn wrong_hash_is_refused_and_file_untouched() {
    let e = Env::new();
    let old = b"original".to_vec();
    fs::write(e.p("f"), &old).unwrap();
    let mut u = update("f", Some(&old), b"ORIGINAL", &[(0, 8)]);
    u.hash = hash(b"something else");
    let err = e.applier().apply_update(&u).unwrap_err();
    assert!(matches!(err, ApplyError::HashMismatch { .. }), "{err}");
    assert_eq!(err.nack_reason(), NackReason::HashMismatch);
    assert_eq!(e.read("f"), old);
    assert!(e.staged().is_empty());
    // A created file is removed again when the update is refused.
    let mut u = update("created", None, b"xyz", &[(0, 3)]);
    u.hash = hash(b"abc");
    assert!(matches!(
        e.applier().apply_update(&u),
        Err(ApplyError::HashMismatch { .. })
    ));
    assert!(!e.p("created").exists());
}

#[test]
fn base_mismatch_is_unknown_base() {
    let e = Env::new();
    fs::write(e.p("f"), b"local edit").unwrap();
    let u = update(
        "f",
        Some(b"what the sender thinks"),
        b"new content",
        &[(0, 11)],
    );
    let err = e.applier().apply_update(&u).unwrap_err();
    assert!(matches!(err, ApplyError::UnknownBase { .. }), "{err}");
    assert_eq!(err.nack_reason(), NackReason::UnknownBase);
    assert_eq!(e.read("f"), b"local edit");
    assert!(e.staged().is_empty());
}

#[test]
fn missing_file_or_directory_is_missing_file() {
    let e = Env::new();
    let u = update("gone", Some(b"old"), b"new", &[(0, 3)]);
    let err = e.applier().apply_update(&u).unwrap_err();
    assert!(matches!(err, ApplyError::MissingFile { .. }), "{err}");
    assert_eq!(err.nack_reason(), NackReason::MissingFile);
    let u = update("nodir/f", None, b"new", &[(0, 3)]);
    let err = e.applier().apply_update(&u).unwrap_err();
    assert!(matches!(err, ApplyError::MissingFile { .. }), "{err}");
    assert!(!e.p("nodir").exists());
    assert!(e.staged().is_empty());
}

#[test]
fn symlinks_are_never_followed() {
    let e = Env::new();
    let outside = e.dir.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("f"), b"secret").unwrap();
    std::os::unix::fs::symlink(&outside, e.p("x")).unwrap();
    std::os::unix::fs::symlink(outside.join("f"), e.p("lf")).unwrap();
    let a = e.applier();
    for path in ["x/f", "x/new"] {
        let u = update(path, None, b"pwned", &[(0, 5)]);
        let err = a.apply_update(&u).unwrap_err();
        assert!(matches!(err, ApplyError::BadRequest(_)), "{path}: {err}");
    }
    let u = update("lf", Some(b"secret"), b"pwned!", &[(0, 6)]);
    assert!(matches!(a.apply_update(&u), Err(ApplyError::BadRequest(_))));
    let ops = [
        MetaOp::Create {
            path: rp("x/c"),
            file: 1,
            mode: 0o644,
        },
        MetaOp::Mkdir {
            path: rp("x/d"),
            mode: 0o755,
        },
        MetaOp::Unlink {
            path: rp("x/f"),
            file: 1,
            last_link: true,
        },
        MetaOp::Rename {
            from: rp("x/f"),
            to: rp("stolen"),
            flags: 0,
        },
        MetaOp::Link {
            from: rp("x/f"),
            to: rp("stolen"),
        },
        MetaOp::Chmod {
            path: rp("x/f"),
            mode: 0o777,
        },
        MetaOp::Truncate {
            path: rp("x/f"),
            file: 1,
            size: 0,
        },
    ];
    for op in &ops {
        let err = a.apply_meta(op).unwrap_err();
        assert!(
            matches!(err, ApplyError::BadRequest(_)),
            "{}: {err}",
            op.kind()
        );
    }
    assert!(matches!(
        a.file_hash(&rp("x/f")),
        Err(ApplyError::BadRequest(_))
    ));
    assert_eq!(fs::read(outside.join("f")).unwrap(), b"secret");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
    assert!(!e.p("stolen").exists());
    assert!(e.staged().is_empty());
}

#[test]
fn non_regular_targets_and_bad_ranges_are_bad_requests() {
    let e = Env::new();
    fs::create_dir(e.p("d")).unwrap();
    let a = e.applier();
    let u = update("d", None, b"x", &[(0, 1)]);
    assert!(matches!(a.apply_update(&u), Err(ApplyError::BadRequest(_))));
    // A delta whose base this side does not hold: a mismatch (the sender then sends
    // the whole file), and the file it would have created is not left behind.
    let mut u = update("f", None, b"abc", &[(0, 3)]);
    u.ranges[0].encoding = Encoding::ZstdDict;
    let err = a.apply_update(&u).unwrap_err();
    assert!(
        matches!(err.nack_reason(), NackReason::HashMismatch),
        "{err}"
    );
    assert!(!e.p("f").exists());
    // A garbage delta against bytes that exist is refused too.
    fs::write(e.p("g"), b"old").unwrap();
    let mut u = update("g", None, b"abc", &[(0, 3)]);
    u.ranges[0].encoding = Encoding::ZstdDict;
    assert!(a.apply_update(&u).is_err());
    assert_eq!(fs::read(e.p("g")).unwrap(), b"old");
    // A zstd bomb: declares 10 bytes, expands to a megabyte.
    let bomb = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap();
    let mut u = update("f", None, &[0u8; 10], &[]);
    u.ranges = vec![RangeData {
        offset: 0,
        len: 10,
        encoding: Encoding::Zstd,
        data: bomb,
    }];
    assert!(matches!(a.apply_update(&u), Err(ApplyError::BadRequest(_))));
    // Ranges past the size, overlapping, the root.
    let mut u = update("f", None, b"abcdef", &[(0, 3), (2, 3)]);
    assert!(matches!(a.apply_update(&u), Err(ApplyError::BadRequest(_))));
    u.ranges = vec![compress_range(4, b"abc", 3)];
    assert!(matches!(a.apply_update(&u), Err(ApplyError::BadRequest(_))));
    u.path = RelPath::root();
    assert!(matches!(a.apply_update(&u), Err(ApplyError::BadRequest(_))));
    assert!(!e.p("f").exists());
    assert!(e.staged().is_empty());
}

#[test]
fn resend_of_applied_update_succeeds_unchanged() {
    let e = Env::new();
    let old = b"0123456789".to_vec();
    fs::write(e.p("f"), &old).unwrap();
    let new = b"01234ABCDE".to_vec();
    let u = update("f", Some(&old), &new, &[(5, 5)]);
    let a = e.applier();
    a.apply_update(&u).unwrap();
    let ino = fs::metadata(e.p("f")).unwrap().ino();
    // The same update again: its base no longer matches, but the result is there.
    a.apply_update(&u).unwrap();
    assert_eq!(e.read("f"), new);
    assert_eq!(fs::metadata(e.p("f")).unwrap().ino(), ino);
    assert_mtime(&e, "f");
    assert!(e.staged().is_empty());
}

#[test]
fn read_only_file_is_updated_and_keeps_its_mode() {
    let e = Env::new();
    let old = b"frozen".to_vec();
    fs::write(e.p("ro"), &old).unwrap();
    fs::set_permissions(e.p("ro"), fs::Permissions::from_mode(0o444)).unwrap();
    let mut u = update("ro", Some(&old), b"FROZEN", &[(0, 6)]);
    u.mode = 0o100444;
    e.applier().apply_update(&u).unwrap();
    assert_eq!(e.read("ro"), b"FROZEN");
    assert_eq!(
        fs::metadata(e.p("ro")).unwrap().permissions().mode() & 0o7777,
        0o444
    );
}

/// Writes `u` into staging as the applier does, under `name`.
pub(super) fn plant(e: &Env, name: &str, u: &FileUpdate) {
    let mut f = fs::File::create(e.staging.join(name)).unwrap();
    write_staged(&mut f, u).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn recovery_replays_verified_update() {
    let e = Env::new();
    let old = pseudo_random(5000, 5);
    fs::write(e.p("f"), &old).unwrap();
    let mut new = old[..4000].to_vec();
    new[100..200].fill(7);
    new[3000..3500].copy_from_slice(&pseudo_random(500, 6));
    let u = update("f", Some(&old), &new, &[(100, 100), (3000, 500)]);
    // The crash hit halfway through the replay: the first range is already written.
    let mut half = old.clone();
    half[100..200].fill(7);
    fs::write(e.p("f"), &half).unwrap();
    plant(&e, "00112233445566778899aabbccddeeff.verified", &u);
    // A created-file update whose target creation was lost too.
    let created = b"fresh".to_vec();
    plant(
        &e,
        "ffeeddccbbaa99887766554433221100.verified",
        &update("c", None, &created, &[(0, 5)]),
    );
    let a = e.applier();
    assert_eq!(e.read("f"), new);
    assert_mtime(&e, "f");
    assert_eq!(e.read("c"), created);
    assert_eq!(
        e.staged().len(),
        2,
        "kept until their index entries are made"
    );
    a.forget_recovered().unwrap();
    assert!(e.staged().is_empty());
    // And a resend of it (never acked) is recognised as applied.
    a.apply_update(&u).unwrap();
    assert_eq!(e.read("f"), new);
}

#[test]
fn recovery_discards_unverified_and_corrupt_stages() {
    let e = Env::new();
    fs::write(e.p("f"), b"keep me").unwrap();
    plant(
        &e,
        "0123.staged",
        &update("f", None, b"overwritten", &[(0, 11)]),
    );
    fs::write(e.staging.join("4567.verified"), b"garbage").unwrap();
    fs::write(e.staging.join("unrelated.tmp"), b"left alone").unwrap();
    e.applier();
    assert_eq!(e.read("f"), b"keep me");
    assert_eq!(e.staged(), vec!["unrelated.tmp".to_string()]);
}

/// What a recording hook saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    /// A hold taken: the inode and the probed file's content at that moment.
    Hold(u64, Vec<u8>),
    /// A hold released, with the content then.
    Release(u64, Vec<u8>),
    Inode(u64),
    Entry(u64, OsString),
}

struct RecHooks {
    events: Arc<Mutex<Vec<Ev>>>,
    probe: Option<PathBuf>,
}

struct Guard {
    events: Arc<Mutex<Vec<Ev>>>,
    probe: Option<PathBuf>,
    ino: u64,
}

fn probe(p: &Option<PathBuf>) -> Vec<u8> {
    p.as_ref()
        .and_then(|p| fs::read(p).ok())
        .unwrap_or_default()
}

impl Drop for Guard {
    fn drop(&mut self) {
        let ev = Ev::Release(self.ino, probe(&self.probe));
        self.events.lock().unwrap().push(ev);
    }
}

impl ApplyHooks for RecHooks {
    fn hold(&self, ino: u64) -> Box<dyn std::any::Any + Send> {
        self.events
            .lock()
            .unwrap()
            .push(Ev::Hold(ino, probe(&self.probe)));
        Box::new(Guard {
            events: self.events.clone(),
            probe: self.probe.clone(),
            ino,
        })
    }
    fn invalidate_inode(&self, ino: u64) {
        self.events.lock().unwrap().push(Ev::Inode(ino));
    }
    fn invalidate_entry(&self, parent: u64, name: &OsStr) {
        self.events
            .lock()
            .unwrap()
            .push(Ev::Entry(parent, name.to_os_string()));
    }
}

fn rec_hooks(probe: Option<PathBuf>) -> (Arc<RecHooks>, Arc<Mutex<Vec<Ev>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    (
        Arc::new(RecHooks {
            events: events.clone(),
            probe,
        }),
        events,
    )
}

#[test]
fn hold_is_taken_during_replay() {
    let e = Env::new();
    let old = b"before".to_vec();
    fs::write(e.p("f"), &old).unwrap();
    let ino = fs::metadata(e.p("f")).unwrap().ino();
    let (hooks, events) = rec_hooks(Some(e.p("f")));
    let a = e.with_hooks(hooks);
    a.apply_update(&update("f", Some(&old), b"AFTER!", &[(0, 6)]))
        .unwrap();
    let ev = events.lock().unwrap().clone();
    let root_ino = fs::metadata(&e.data).unwrap().ino();
    // the name is dropped too: the writeback cache keeps its own size otherwise
    assert_eq!(
        ev,
        vec![
            Ev::Hold(ino, old),
            Ev::Release(ino, b"AFTER!".to_vec()),
            Ev::Inode(ino),
            Ev::Entry(root_ino, "f".into())
        ]
    );
    // A new file: held too, and its name is invalidated in its directory.
    events.lock().unwrap().clear();
    a.apply_update(&update("n", None, b"new", &[(0, 3)]))
        .unwrap();
    let ev = events.lock().unwrap().clone();
    let n_ino = fs::metadata(e.p("n")).unwrap().ino();
    assert!(matches!(ev[0], Ev::Hold(i, _) if i == n_ino), "{ev:?}");
    assert!(ev.contains(&Ev::Entry(root_ino, "n".into())), "{ev:?}");
    assert!(ev.contains(&Ev::Inode(n_ino)), "{ev:?}");
}

#[test]
fn meta_hooks_invalidate_touched_names() {
    let e = Env::new();
    fs::create_dir(e.p("a")).unwrap();
    fs::create_dir(e.p("b")).unwrap();
    fs::write(e.p("a/f"), b"x").unwrap();
    let (hooks, events) = rec_hooks(None);
    let a = e.with_hooks(hooks);
    a.apply_meta(&MetaOp::Rename {
        from: rp("a/f"),
        to: rp("b/g"),
        flags: 0,
    })
    .unwrap();
    let (ai, bi) = (
        fs::metadata(e.p("a")).unwrap().ino(),
        fs::metadata(e.p("b")).unwrap().ino(),
    );
    let ev = events.lock().unwrap().clone();
    assert!(ev.contains(&Ev::Entry(ai, "f".into())), "{ev:?}");
    assert!(ev.contains(&Ev::Entry(bi, "g".into())), "{ev:?}");
    events.lock().unwrap().clear();
    a.apply_meta(&MetaOp::Chmod {
        path: rp("b/g"),
        mode: 0o600,
    })
    .unwrap();
    let gi = fs::metadata(e.p("b/g")).unwrap().ino();
    assert_eq!(
        events.lock().unwrap().clone(),
        vec![Ev::Inode(gi), Ev::Entry(bi, "g".into())]
    );
}

/// Applies `op` twice (the second as a replay after a lost ack); `check` after each.
fn twice(a: &Applier, op: MetaOp, check: impl Fn()) {
    for round in 0..2 {
        a.apply_meta(&op)
            .unwrap_or_else(|e| panic!("{} (round {round}): {e}", op.kind()));
        check();
    }
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode()
}

#[test]
fn meta_namespace_ops_apply_and_reapply() {
    let e = Env::new();
    let a = e.applier();
    twice(
        &a,
        MetaOp::Mkdir {
            path: rp("d"),
            mode: 0o750,
        },
        || {
            assert!(e.p("d").is_dir());
            assert_eq!(mode(&e.p("d")) & 0o7777, 0o750);
        },
    );
    twice(
        &a,
        MetaOp::Create {
            path: rp("d/f"),
            file: 1,
            mode: 0o604,
        },
        || {
            assert!(e.p("d/f").is_file());
            assert_eq!(mode(&e.p("d/f")) & 0o7777, 0o604);
        },
    );
    fs::write(e.p("d/f"), b"data").unwrap();
    // Re-creating never truncates.
    a.apply_meta(&MetaOp::Create {
        path: rp("d/f"),
        file: 1,
        mode: 0o604,
    })
    .unwrap();
    assert_eq!(e.read("d/f"), b"data");
    twice(
        &a,
        MetaOp::Mknod {
            path: rp("d/fifo"),
            mode: libc::S_IFIFO | 0o600,
            rdev: 0,
        },
        || {
            assert!(fs::symlink_metadata(e.p("d/fifo"))
                .unwrap()
                .file_type()
                .is_fifo());
        },
    );
    let dev = MetaOp::Mknod {
        path: rp("d/sda"),
        mode: libc::S_IFBLK | 0o600,
        rdev: 0x800,
    };
    assert!(matches!(a.apply_meta(&dev), Err(ApplyError::BadRequest(_))));
    twice(
        &a,
        MetaOp::Symlink {
            path: rp("d/l"),
            target: b"../outside/x".to_vec(),
        },
        || {
            assert_eq!(
                fs::read_link(e.p("d/l")).unwrap(),
                Path::new("../outside/x")
            );
        },
    );
    twice(
        &a,
        MetaOp::Link {
            from: rp("d/f"),
            to: rp("d/h"),
        },
        || {
            assert_eq!(
                fs::metadata(e.p("d/h")).unwrap().ino(),
                fs::metadata(e.p("d/f")).unwrap().ino()
            );
        },
    );
    // Link whose source was since renamed away (a later op already applied).
    fs::rename(e.p("d/f"), e.p("d/f2")).unwrap();
    a.apply_meta(&MetaOp::Link {
        from: rp("d/f"),
        to: rp("d/h"),
    })
    .unwrap();
    fs::rename(e.p("d/f2"), e.p("d/f")).unwrap();
    twice(
        &a,
        MetaOp::Rename {
            from: rp("d/f"),
            to: rp("d/g"),
            flags: 0,
        },
        || {
            assert!(!e.p("d/f").exists());
            assert_eq!(e.read("d/g"), b"data");
        },
    );
    let noreplace = libc::RENAME_NOREPLACE;
    twice(
        &a,
        MetaOp::Rename {
            from: rp("d/g"),
            to: rp("g"),
            flags: noreplace,
        },
        || {
            assert!(!e.p("d/g").exists());
            assert_eq!(e.read("g"), b"data");
        },
    );
    // A directory rename whose source parent is gone but target exists: applied.
    twice(
        &a,
        MetaOp::Rename {
            from: rp("d"),
            to: rp("e"),
            flags: 0,
        },
        || {
            assert!(e.p("e/h").exists() && !e.p("d").exists());
        },
    );
    a.apply_meta(&MetaOp::Rename {
        from: rp("d/x"),
        to: rp("e/h"),
        flags: 0,
    })
    .unwrap();
    // Exchange (applied once: replaying an exchange swaps back, see `rename`).
    fs::write(e.p("x1"), b"one").unwrap();
    fs::write(e.p("x2"), b"two").unwrap();
    let xchg = MetaOp::Rename {
        from: rp("x1"),
        to: rp("x2"),
        flags: libc::RENAME_EXCHANGE,
    };
    a.apply_meta(&xchg).unwrap();
    assert_eq!(
        (e.read("x1"), e.read("x2")),
        (b"two".to_vec(), b"one".to_vec())
    );
    // Missing source and target: the log is behind.
    let err = a
        .apply_meta(&MetaOp::Rename {
            from: rp("nope"),
            to: rp("nope2"),
            flags: 0,
        })
        .unwrap_err();
    assert!(matches!(err, ApplyError::MissingFile { .. }), "{err}");
    let err = a
        .apply_meta(&MetaOp::Link {
            from: rp("nope"),
            to: rp("nope2"),
        })
        .unwrap_err();
    assert!(matches!(err, ApplyError::MissingFile { .. }), "{err}");
    let err = a
        .apply_meta(&MetaOp::Mkdir {
            path: rp("nodir/sub"),
            mode: 0o755,
        })
        .unwrap_err();
    assert!(matches!(err, ApplyError::MissingFile { .. }), "{err}");
    // Removal.
    twice(
        &a,
        MetaOp::Unlink {
            path: rp("g"),
            file: 1,
            last_link: false,
        },
        || {
            assert!(!e.p("g").exists());
        },
    );
    let err = a.apply_meta(&MetaOp::Rmdir { path: rp("e") }).unwrap_err();
    assert!(matches!(err, ApplyError::Io { .. }), "ENOTEMPTY: {err}");
    for name in ["e/h", "e/fifo", "e/l"] {
        twice(
            &a,
            MetaOp::Unlink {
                path: rp(name),
                file: 1,
                last_link: true,
            },
            || {
                assert!(fs::symlink_metadata(e.p(name)).is_err());
            },
        );
    }
    twice(&a, MetaOp::Rmdir { path: rp("e") }, || {
        assert!(!e.p("e").exists())
    });
    // Unlink below a directory that is gone: applied.
    a.apply_meta(&MetaOp::Unlink {
        path: rp("e/zz"),
        file: 1,
        last_link: true,
    })
    .unwrap();
    // The root cannot be created, removed or renamed.
    let err = a
        .apply_meta(&MetaOp::Rmdir {
            path: RelPath::root(),
        })
        .unwrap_err();
    assert!(matches!(err, ApplyError::BadRequest(_)), "{err}");
}

#[test]
fn meta_attribute_ops_apply_and_reapply() {
    let e = Env::new();
    let a = e.applier();
    fs::write(e.p("f"), b"content").unwrap();
    std::os::unix::fs::symlink("f", e.p("l")).unwrap();
    twice(
        &a,
        MetaOp::Chmod {
            path: rp("f"),
            mode: 0o100600,
        },
        || {
            assert_eq!(mode(&e.p("f")) & 0o7777, 0o600);
        },
    );
    a.apply_meta(&MetaOp::Chmod {
        path: rp("l"),
        mode: 0o600,
    })
    .unwrap();
    let me = fs::metadata(e.p("f")).unwrap();
    twice(
        &a,
        MetaOp::Chown {
            path: rp("f"),
            uid: None,
            gid: None,
        },
        || {},
    );
    twice(
        &a,
        MetaOp::Chown {
            path: rp("l"),
            uid: Some(me.uid()),
            gid: Some(me.gid()),
        },
        || {},
    );
    twice(
        &a,
        MetaOp::Truncate {
            path: rp("f"),
            file: 1,
            size: 2,
        },
        || {
            assert_eq!(e.read("f"), b"co");
        },
    );
    twice(
        &a,
        MetaOp::Truncate {
            path: rp("f"),
            file: 1,
            size: 5,
        },
        || {
            assert_eq!(e.read("f"), b"co\0\0\0");
        },
    );
    fs::set_permissions(e.p("f"), fs::Permissions::from_mode(0o400)).unwrap();
    a.apply_meta(&MetaOp::Truncate {
        path: rp("f"),
        file: 1,
        size: 1,
    })
    .unwrap();
    assert_eq!(
        (e.read("f"), mode(&e.p("f")) & 0o7777),
        (b"c".to_vec(), 0o400)
    );
    let at = |secs| Some(SetTime::At(Timestamp { secs, nanos: 5 }));
    let ut = MetaOp::Utimens {
        path: rp("f"),
        atime: None,
        mtime: at(1000),
    };
    twice(&a, ut, || {
        let m = fs::metadata(e.p("f")).unwrap();
        assert_eq!((m.mtime(), m.mtime_nsec()), (1000, 5));
    });
    let ut = MetaOp::Utimens {
        path: rp("f"),
        atime: Some(SetTime::Now),
        mtime: None,
    };
    twice(&a, ut, || {
        let m = fs::metadata(e.p("f")).unwrap();
        assert_eq!(m.mtime(), 1000);
        assert!(m.atime() > 1_600_000_000);
    });
    // On a symlink: the link's own times, the target's untouched.
    twice(
        &a,
        MetaOp::Utimens {
            path: rp("l"),
            atime: at(7),
            mtime: at(2000),
        },
        || {
            assert_eq!(fs::symlink_metadata(e.p("l")).unwrap().mtime(), 2000);
            assert_eq!(fs::metadata(e.p("f")).unwrap().mtime(), 1000);
        },
    );
    // Attribute ops on a path that is gone: a later removal was applied already.
    for op in [
        MetaOp::Chmod {
            path: rp("gone"),
            mode: 0o600,
        },
        MetaOp::Chown {
            path: rp("gone/x"),
            uid: None,
            gid: None,
        },
        MetaOp::Truncate {
            path: rp("gone"),
            file: 1,
            size: 0,
        },
        MetaOp::Utimens {
            path: rp("gone"),
            atime: None,
            mtime: at(1),
        },
        MetaOp::SetXattr {
            path: rp("gone"),
            name: b"user.k".to_vec(),
            value: vec![],
            flags: 0,
        },
        MetaOp::RemoveXattr {
            path: rp("gone"),
            name: b"user.k".to_vec(),
        },
    ] {
        a.apply_meta(&op)
            .unwrap_or_else(|err| panic!("{}: {err}", op.kind()));
    }
    // The root's attributes are this node's own: a peer cannot change them.
    let before = mode(&e.data);
    let err = a
        .apply_meta(&MetaOp::Chmod {
            path: RelPath::root(),
            mode: 0o777,
        })
        .unwrap_err();
    assert!(matches!(err, ApplyError::BadRequest(_)), "{err}");
    assert_eq!(mode(&e.data), before);
    let err = a
        .apply_meta(&MetaOp::Truncate {
            path: RelPath::root(),
            file: 1,
            size: 0,
        })
        .unwrap_err();
    assert!(matches!(err, ApplyError::BadRequest(_)), "{err}");
}

#[test]
fn a_peer_cannot_gain_privileges() {
    let e = Env::new();
    let a = e.applier();
    // setuid and setgid bits are stripped on create, mkdir, mknod and chmod
    a.apply_meta(&MetaOp::Create {
        path: rp("suid"),
        file: 1,
        mode: 0o6755,
    })
    .unwrap();
    assert_eq!(mode(&e.p("suid")) & 0o7777, 0o755);
    a.apply_meta(&MetaOp::Mkdir {
        path: rp("sgid"),
        mode: 0o3775,
    })
    .unwrap();
    assert_eq!(mode(&e.p("sgid")) & 0o7777, 0o1775);
    a.apply_meta(&MetaOp::Chmod {
        path: rp("suid"),
        mode: 0o4711,
    })
    .unwrap();
    assert_eq!(mode(&e.p("suid")) & 0o7777, 0o711);
    // ownership is not applied (sync_ownership off), and never to root when on
    let chown = |uid| MetaOp::Chown {
        path: rp("suid"),
        uid: Some(uid),
        gid: Some(uid),
    };
    let owner = fs::metadata(e.p("suid")).unwrap().uid();
    a.apply_meta(&chown(4242)).unwrap();
    assert_eq!(
        fs::metadata(e.p("suid")).unwrap().uid(),
        owner,
        "ignored when off"
    );
    let mut on = e.applier();
    on.set_sync_ownership(true);
    on.apply_meta(&chown(4242)).unwrap();
    assert_eq!(
        fs::metadata(e.p("suid")).unwrap().uid(),
        4242,
        "applied when on"
    );
    let err = on.apply_meta(&chown(0)).unwrap_err();
    assert!(matches!(err, ApplyError::BadRequest(_)), "{err}");
    assert_eq!(fs::metadata(e.p("suid")).unwrap().uid(), 4242);
    // security.* and trusted.* xattrs are refused
    for name in [&b"security.capability"[..], b"trusted.overlay.opaque"] {
        let err = a
            .apply_meta(&MetaOp::SetXattr {
                path: rp("suid"),
                name: name.to_vec(),
                value: vec![1, 0, 0, 2],
                flags: 0,
            })
            .unwrap_err();
        assert!(matches!(err, ApplyError::BadRequest(_)), "{err}");
        let c = std::ffi::CString::new(e.p("suid").as_os_str().as_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        let got = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        assert!(got < 0, "{} was set", String::from_utf8_lossy(name));
    }
}

#[test]
fn meta_xattrs_apply_and_reapply() {
    let e = Env::new();
    let a = e.applier();
    fs::write(e.p("f"), b"x").unwrap();
    let get = |name: &str| -> Option<Vec<u8>> {
        let p = CString::new(e.p("f").as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        let mut buf = vec![0u8; 256];
        let len =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (len >= 0).then(|| buf[..len as usize].to_vec())
    };
    let set = MetaOp::SetXattr {
        path: rp("f"),
        name: b"user.k".to_vec(),
        value: b"v1".to_vec(),
        flags: libc::XATTR_CREATE,
    };
    if let Err(err) = a.apply_meta(&set) {
        // The temp filesystem may not support user xattrs.
        eprintln!("skipping xattr checks: {err}");
        return;
    }
    twice(&a, set, || assert_eq!(get("user.k"), Some(b"v1".to_vec())));
    twice(
        &a,
        MetaOp::RemoveXattr {
            path: rp("f"),
            name: b"user.k".to_vec(),
        },
        || {
            assert_eq!(get("user.k"), None);
        },
    );
}

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

/// The child half of the crash tests: applies an update with `SYNCFS_FAULT` set, which
/// aborts the process. Run only by `crash_points_are_recovered`.
#[test]
#[ignore = "run as a child process by crash_points_are_recovered"]
fn crash_child() {
    let Ok(dir) = std::env::var("SYNCFS_TEST_STORE") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let a = Applier::open(&dir.join("data"), &dir.join("staging"), Arc::new(NoHooks)).unwrap();
    a.apply_update(&crash_update()).unwrap();
    // Not reached when the fault fires.
}

fn crash_old() -> Vec<u8> {
    pseudo_random(300_000, 9)
}

fn crash_update() -> FileUpdate {
    let old = crash_old();
    let mut new = old[..250_000].to_vec();
    new[1000..9000].fill(1);
    update("f", Some(&old), &new, &[(1000, 8000)])
}

#[test]
fn crash_points_are_recovered() {
    let exe = std::env::current_exe().unwrap();
    for (fault, replayed) in [("apply:after-stage", false), ("apply:after-replay", true)] {
        let e = Env::new();
        fs::write(e.p("f"), crash_old()).unwrap();
        let status = std::process::Command::new(&exe)
            .args([
                "--exact",
                "apply::tests::crash_child",
                "--ignored",
                "--test-threads=1",
            ])
            .env("SYNCFS_FAULT", fault)
            .env("SYNCFS_TEST_STORE", &e.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "{fault}: the child should have aborted");
        let staged = e.staged();
        assert_eq!(staged.len(), 1, "{fault}: {staged:?}");
        assert!(staged[0].ends_with(".verified"), "{fault}: {staged:?}");
        let u = crash_update();
        assert_eq!(hash(&e.read("f")) == u.hash, replayed, "{fault}");
        // Restart: recovery replays the verified update.
        let a = e.applier();
        assert_eq!(hash(&e.read("f")), u.hash, "{fault}");
        let listed: Vec<_> = a.recovered().iter().map(|r| r.hash).collect();
        assert_eq!(
            listed,
            vec![u.hash],
            "{fault}: recovery lists the update to record"
        );
        assert_eq!(e.staged().len(), 1, "{fault}: kept until recorded");
        drop(a);
        let a = e.applier(); // killed before the record: replayed again, still listed
        assert_eq!(hash(&e.read("f")), u.hash, "{fault}");
        assert_eq!(a.recovered().len(), 1, "{fault}");
        a.forget_recovered().unwrap();
        assert!(e.staged().is_empty(), "{fault}");
        a.apply_update(&u).unwrap(); // the unacked resend
        assert_eq!(hash(&e.read("f")), u.hash, "{fault}");
    }
}

#[test]
fn deltas_decode_against_current_bytes_and_stage_decoded() {
    let e = Env::new();
    let a = e.applier();
    let old = pseudo_random(64 << 10, 11);
    fs::write(e.p("db"), &old).unwrap();
    let mut new = old.clone();
    new[5000..5020].copy_from_slice(&[0xAB; 20]);
    let mut u = update("db", Some(&old), &new, &[(4096, 4096)]);
    let d = crate::delta::encode(&new[4096..8192], &old[4096..8192], 3).unwrap();
    assert!(d.len() < 200, "a 20-byte change costs {} bytes", d.len());
    u.ranges[0] = crate::wire::RangeData {
        offset: 4096,
        len: 4096,
        encoding: Encoding::ZstdDict,
        data: d,
    };
    a.apply_update(&u).unwrap();
    assert_eq!(e.read("db"), new);
    assert!(e.staged().is_empty());
}

#[test]
fn successive_updates_verify_through_the_hash_tree() {
    // Once the applier has hashed a file, later updates are verified from its tree (only
    // touched leaves read); results must stay byte-exact and wrong hashes still refused.
    let e = Env::new();
    let a = e.applier();
    let mut cur = pseudo_random(5 << 20, 7);
    fs::write(e.p("f"), &cur).unwrap();
    a.apply_update(&update("f", None, &cur, &[(0, 1)])).unwrap(); // first: full pass, tree kept
    for (i, (off, len, size)) in [
        (100u64, 4096u64, 5u64 << 20),
        ((3 << 20) + 5, 70_000, 5 << 20),
        (10, 5, 4 << 20),
        ((6 << 20) - 10, 10, 6 << 20),
    ]
    .into_iter()
    .enumerate()
    {
        let mut new = cur.clone();
        new.resize(size as usize, 0);
        for b in &mut new[off as usize..(off + len) as usize] {
            *b = b.wrapping_add(i as u8 + 1);
        }
        let mut bad = update("f", Some(&cur), &new, &[(off, len)]);
        bad.hash[0] ^= 1;
        assert!(
            matches!(a.apply_update(&bad), Err(ApplyError::HashMismatch { .. })),
            "step {i}"
        );
        assert_eq!(e.read("f"), cur, "a refused update leaves the file alone");
        a.apply_update(&update("f", Some(&cur), &new, &[(off, len)]))
            .unwrap();
        assert_eq!(e.read("f"), new, "step {i}");
        cur = new;
    }
    // A local change behind the applier's back: the stamp differs, the full pass is used.
    let f = fs::OpenOptions::new().write(true).open(e.p("f")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"LOCAL", 4096).unwrap();
    cur[4096..4101].copy_from_slice(b"LOCAL");
    let mut new = cur.clone();
    new[0] = !new[0];
    a.apply_update(&update("f", Some(&cur), &new, &[(0, 1)]))
        .unwrap();
    assert_eq!(e.read("f"), new);
}

/// `update` with its ranges turned into one joint delta against `old`.
fn joint_update(path: &str, old: &[u8], new: &[u8], ranges: &[(u64, u64)]) -> FileUpdate {
    let mut u = update(path, Some(old), new, ranges);
    let (mut n, mut o) = (Vec::new(), Vec::new());
    for r in &mut u.ranges {
        let (a, b) = (r.offset as usize, (r.offset + r.len) as usize);
        n.extend_from_slice(&new[a..b]);
        o.extend_from_slice(&old[a..b]);
        r.encoding = Encoding::Joint;
        r.data.clear();
    }
    u.ranges[0].data = crate::delta::encode(&n, &o, 3).unwrap();
    u
}

#[test]
fn joint_deltas_decode_across_ranges() {
    let e = Env::new();
    let a = e.applier();
    let old = pseudo_random(1 << 20, 12);
    fs::write(e.p("db"), &old).unwrap();
    let mut new = old.clone();
    let ranges: Vec<(u64, u64)> = (0..100).map(|i| (i * 8192 + 4096, 4096)).collect();
    for &(off, _) in &ranges {
        new[off as usize + 17] ^= 0x5A;
    }
    let u = joint_update("db", &old, &new, &ranges);
    let wire = u.ranges[0].data.len();
    assert!(wire < 1500, "100 one-byte page changes cost {wire} bytes");
    a.apply_update(&u).unwrap();
    assert_eq!(e.read("db"), new);
    assert!(e.staged().is_empty());
}

#[test]
fn bad_joint_deltas_are_refused_and_change_nothing() {
    let e = Env::new();
    let a = e.applier();
    let old = pseudo_random(64 << 10, 13);
    fs::write(e.p("db"), &old).unwrap();
    let mut new = old.clone();
    new[100] ^= 1;
    new[9000] ^= 1;
    let ranges = [(0, 4096), (8192, 4096)];
    // Data on a later joint range: a malformed update.
    let mut u = joint_update("db", &old, &new, &ranges);
    u.ranges[1].data = vec![1];
    assert!(matches!(a.apply_update(&u), Err(ApplyError::BadRequest(_))));
    // Made against other old bytes: a mismatch, so the sender falls back to the file.
    let mut other = old.clone();
    other[8200] ^= 1;
    let u = joint_update("db", &other, &new, &ranges);
    let err = a.apply_update(&u).unwrap_err();
    assert!(
        matches!(err.nack_reason(), NackReason::HashMismatch),
        "{err}"
    );
    // Corrupt payload.
    let mut u = joint_update("db", &old, &new, &ranges);
    let n = u.ranges[0].data.len();
    u.ranges[0].data[n - 3] ^= 0xFF;
    assert!(a.apply_update(&u).is_err());
    assert_eq!(e.read("db"), old);
    assert!(e.staged().is_empty());
}

#[test]
fn replayed_metadata_batches_are_applied_once() {
    let e = Env::new();
    let a = e.applier();
    fs::write(e.p("a"), b"precious").unwrap();
    let batch = [
        (
            1,
            MetaOp::Rename {
                from: rp("a"),
                to: rp("b"),
                flags: 0,
            },
        ),
        (
            2,
            MetaOp::Create {
                path: rp("a"),
                file: 9,
                mode: 0o644,
            },
        ),
    ];
    let run = |a: &Applier| {
        for (seq, op) in &batch {
            a.apply_meta_once("peerA", *seq, op).unwrap();
        }
        a.applied_upto("peerA", 2).unwrap();
    };
    run(&a);
    run(&a); // resent after a lost ack
    run(&e.applier()); // and after a restart: the record is durable
    assert_eq!(e.read("b"), b"precious");
    assert_eq!(e.read("a"), b"");
    // another peer's sequence numbers are its own
    assert!(a
        .apply_meta_once(
            "peerB",
            1,
            &MetaOp::Mkdir {
                path: rp("d"),
                mode: 0o755
            }
        )
        .unwrap());
}

#[test]
fn an_exchange_interrupted_after_the_rename_is_not_swapped_back() {
    let e = Env::new();
    fs::write(e.p("x"), b"X").unwrap();
    fs::write(e.p("y"), b"Y").unwrap();
    let xch = MetaOp::Rename {
        from: rp("x"),
        to: rp("y"),
        flags: libc::RENAME_EXCHANGE,
    };
    let a = e.applier();
    assert!(a.apply_meta_once("p", 7, &xch).unwrap());
    assert_eq!((e.read("x"), e.read("y")), (b"Y".to_vec(), b"X".to_vec()));
    assert!(
        !a.apply_meta_once("p", 7, &xch).unwrap(),
        "a resend is skipped"
    );
    // a crash between the pending record and the final one: the record says "pending,
    // x held inode i"; x now holds another inode, so the rename happened
    let x_before = fs::metadata(e.p("x")).unwrap().ino();
    let staging = e.data.parent().unwrap().join("staging");
    let rec = Applied {
        upto: 7,
        pending: Some((8, x_before)),
    };
    let mut bytes = b"SYNCFSa1".to_vec();
    bytes.extend(bincode::serialize(&rec).unwrap());
    fs::write(staging.join("applied-p"), bytes).unwrap();
    let b = e.applier();
    std::fs::rename(e.p("x"), e.p("tmp")).unwrap(); // op 8 (x <-> y) had run:
    std::fs::rename(e.p("y"), e.p("x")).unwrap();
    std::fs::rename(e.p("tmp"), e.p("y")).unwrap();
    assert!(
        !b.apply_meta_once("p", 8, &xch).unwrap(),
        "applied before the stop"
    );
    assert_eq!((e.read("x"), e.read("y")), (b"X".to_vec(), b"Y".to_vec()));
    b.applied_upto("p", 8).unwrap(); // the caller's commit clears the mark
    let cleared = Applied {
        upto: 8,
        pending: None,
    };
    assert_eq!(b.applied("p").unwrap(), cleared);
}

#[test]
fn huge_sizes_are_refused_before_any_work() {
    let e = Env::new();
    let a = e.applier();
    fs::write(e.p("f"), b"0123456789").unwrap();
    let start = std::time::Instant::now();
    // a size far past the file and the update's ranges (it would hash zeros for years)
    let mut u = update("f", Some(b"0123456789"), b"0123456789", &[(0, 4)]);
    u.size = 1 << 62;
    let err = a.apply_update(&u).unwrap_err();
    assert!(matches!(err, ApplyError::BadRequest(_)), "{err}");
    // within the protocol's limit but past the current size and the ranges' end
    u.size = 1 << 30;
    let err = a.apply_update(&u).unwrap_err();
    assert!(matches!(err, ApplyError::BadRequest(_)), "{err}");
    // a truncate past the configured maximum
    let mut small = e.applier();
    small.set_max_file_size(1 << 20);
    let t = |size| MetaOp::Truncate {
        path: rp("f"),
        file: 1,
        size,
    };
    for (ap, size) in [(&a, 1u64 << 62), (&small, 2 << 20)] {
        let err = ap.apply_meta(&t(size)).unwrap_err();
        assert!(matches!(err, ApplyError::BadRequest(_)), "{err}");
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(e.read("f"), b"0123456789", "nothing changed");
    // a legitimate growth still applies
    let new = b"0123456789abcdef";
    a.apply_update(&update("f", Some(b"0123456789"), new, &[(10, 6)]))
        .unwrap();
    assert_eq!(e.read("f"), new);
}

/// Records, at each hold, whether a path exists.
struct SeeHooks(PathBuf, Arc<Mutex<Vec<bool>>>);

impl ApplyHooks for SeeHooks {
    fn hold(&self, _ino: u64) -> Box<dyn std::any::Any + Send> {
        let seen = fs::symlink_metadata(&self.0).is_ok();
        self.1.lock().unwrap().push(seen);
        Box::new(())
    }
    fn invalidate_inode(&self, _ino: u64) {}
    fn invalidate_entry(&self, _parent: u64, _name: &OsStr) {}
}

#[test]
fn a_new_file_has_no_name_until_verified_and_written() {
    let e = Env::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let a = e.with_hooks(Arc::new(SeeHooks(e.p("new"), seen.clone())));
    // refused: nothing was ever visible
    let mut bad = update("new", None, b"content", &[(0, 7)]);
    bad.hash = [9; 32];
    assert!(a.apply_update(&bad).is_err());
    assert!(fs::symlink_metadata(e.p("new")).is_err());
    // applied: nameless while verified and written, complete after
    a.apply_update(&update("new", None, b"content", &[(0, 7)]))
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![false],
        "held once, while nameless"
    );
    assert_eq!(e.read("new"), b"content");
    assert_eq!(mode(&e.p("new")) & 0o7777, 0o640);
}

/// At the first hold, appends to a file (a local write that slipped in while hashing).
struct SlipHooks(PathBuf, Arc<Mutex<u32>>);

impl ApplyHooks for SlipHooks {
    fn hold(&self, _ino: u64) -> Box<dyn std::any::Any + Send> {
        let mut n = self.1.lock().unwrap();
        if *n == 0 {
            let mut f = fs::OpenOptions::new().append(true).open(&self.0).unwrap();
            std::io::Write::write_all(&mut f, b"+local").unwrap();
        }
        *n += 1;
        Box::new(())
    }
    fn invalidate_inode(&self, _ino: u64) {}
    fn invalidate_entry(&self, _parent: u64, _name: &OsStr) {}
}

#[test]
fn the_mount_is_not_held_while_verifying() {
    let e = Env::new();
    fs::write(e.p("f"), b"before").unwrap();
    let holds = Arc::new(Mutex::new(0));
    let a = e.with_hooks(Arc::new(SlipHooks(e.p("f"), holds.clone())));
    // a refused update is refused by its hash alone: the file was never held
    let mut bad = update("f", Some(b"before"), b"AFTER!", &[(0, 6)]);
    bad.hash = [3; 32];
    assert!(a.apply_update(&bad).is_err());
    assert_eq!(*holds.lock().unwrap(), 0, "held while verifying");
    // a local write between the hash and the hold: refused, the local bytes kept
    let err = a
        .apply_update(&update("f", Some(b"before"), b"AFTER!", &[(0, 6)]))
        .unwrap_err();
    assert!(matches!(err, ApplyError::UnknownBase { .. }), "{err}");
    assert_eq!(e.read("f"), b"before+local");
}

/// The stage stays until the caller's record of the new version is made (a kill
/// before the record leaves it for recovery, which lists it: `crash_points_are_recovered`).
#[test]
fn the_stage_outlives_the_callers_record() {
    let env = Env::new();
    fs::write(env.p("f"), b"old content").unwrap();
    let u = update("f", Some(b"old content"), b"new content", &[(0, 11)]);
    let a = env.applier();
    let mut seen = None;
    a.apply_update_then(&u, None, &mut || {
        let staged = fs::read_dir(&env.staging).unwrap().count();
        seen = Some((staged, fs::read(env.p("f")).unwrap()));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        seen,
        Some((1, b"new content".to_vec())),
        "the record is made with the stage in place"
    );
    assert_eq!(
        fs::read_dir(&env.staging).unwrap().count(),
        0,
        "then the stage goes"
    );
}

/// The checker decides on an update, then the applier applies it: a local save renamed
/// over the path in between is not overwritten unseen (tests/random_two_node.rs lost a
/// version so: the checker had found nothing to set aside).
#[test]
fn an_update_goes_only_to_what_the_checker_judged_at_its_path() {
    let e = Env::new();
    let a = e.applier();
    let new = b"the peer's version".to_vec();
    let u = update("f", None, &new, &[(0, new.len() as u64)]);
    let save = |body: &[u8]| {
        fs::write(e.p(".tmp"), body).unwrap();
        fs::rename(e.p(".tmp"), e.p("f")).unwrap();
    };
    let refused = |expect| {
        let res = a.apply_update_then(&u, Some(expect), &mut || Ok(()));
        matches!(res, Err(ApplyError::UnknownBase { .. }))
    };
    // judged: nothing there (none yet, or ours was set aside)
    save(b"a local save");
    assert!(
        refused(Expect::Nothing),
        "applied over a file judged absent"
    );
    assert_eq!(e.read("f"), b"a local save");
    // judged: this file, to be changed in place
    let judged = fs::metadata(e.p("f")).unwrap().ino();
    save(b"another local save");
    assert!(refused(Expect::File(judged)), "applied over another file");
    assert_eq!(e.read("f"), b"another local save");
    assert_eq!(e.staged(), Vec::<String>::new(), "nothing left staged");
    // still what was judged: applied
    let judged = fs::metadata(e.p("f")).unwrap().ino();
    a.apply_update_then(&u, Some(Expect::File(judged)), &mut || Ok(()))
        .unwrap();
    assert_eq!(e.read("f"), new);
    fs::remove_file(e.p("f")).unwrap();
    a.apply_update_then(&u, Some(Expect::Nothing), &mut || Ok(()))
        .unwrap();
    assert_eq!(e.read("f"), new);
}
