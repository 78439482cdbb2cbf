//! Journal tests: persistence across reopen, crash recovery from the intent log, and
//! the ack and rename rules.

use super::*;
use std::io::Write;

fn p(s: &str) -> RelPath {
    RelPath::from_bytes(s.as_bytes()).unwrap()
}

fn ranges_of(j: &Journal, file: FileId) -> Vec<(u64, u64)> {
    j.entry(file)
        .map(|e| e.ranges.iter().collect())
        .unwrap_or_default()
}

fn mkdir(path: &str) -> MetaOp {
    MetaOp::Mkdir {
        path: p(path),
        mode: 0o755,
    }
}

#[test]
fn round_trip_through_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.track(1, &p("a.txt")).unwrap();
    j.record_write(1, 0, 4096).unwrap();
    j.record_write(1, 6000, 8192).unwrap();
    j.record_size(1, 7000).unwrap();
    let seq = j.record_meta(mkdir("d")).unwrap();
    let before = j.snapshot();
    j.close().unwrap();

    let j = Journal::open(dir.path()).unwrap();
    let after = j.snapshot();
    assert_eq!(after, before);
    assert_eq!(ranges_of(&j, 1), vec![(0, 4096), (6000, 7000)]);
    assert_eq!(j.entry(1).unwrap().size, Some(7000));
    assert_eq!(after.meta, vec![(seq, mkdir("d"))]);
    j.close().unwrap();
}

#[test]
fn crash_recovers_everything_from_intent_log() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.track(7, &p("f")).unwrap();
    j.record_write(7, 0, 100).unwrap();
    j.checkpoint().unwrap();
    j.record_write(7, 10, 20).unwrap(); // covered: not logged, still durable
    j.record_write(7, 200, 300).unwrap();
    j.record_write(7, 300, 310).unwrap();
    j.track(8, &p("g")).unwrap();
    j.record_write(8, 5, 6).unwrap();
    j.record_meta(mkdir("x")).unwrap();
    j.crash();

    let j = Journal::open(dir.path()).unwrap();
    assert_eq!(ranges_of(&j, 7), vec![(0, 100), (200, 310)]);
    assert_eq!(ranges_of(&j, 8), vec![(5, 6)]);
    assert_eq!(j.snapshot().meta.len(), 1);
    j.close().unwrap();
}

#[test]
fn torn_last_record_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.track(1, &p("f")).unwrap();
    j.record_write(1, 0, 10).unwrap();
    j.record_write(1, 20, 30).unwrap();
    j.crash();
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join(wal::ACTIVE_NAME))
        .unwrap();
    log.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
    drop(log);

    let j = Journal::open(dir.path()).unwrap();
    assert_eq!(ranges_of(&j, 1), vec![(0, 10), (20, 30)]);
    j.record_write(1, 50, 60).unwrap();
    j.crash();
    let j = Journal::open(dir.path()).unwrap();
    assert_eq!(ranges_of(&j, 1), vec![(0, 10), (20, 30), (50, 60)]);
    j.close().unwrap();
}

#[test]
fn folded_log_is_not_replayed_twice() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.track(1, &p("a")).unwrap();
    j.track(2, &p("c")).unwrap();
    let rename = |from: &str, to: &str| MetaOp::Rename {
        from: p(from),
        to: p(to),
        flags: 0,
    };
    j.record_meta(rename("a", "b")).unwrap();
    j.record_meta(rename("c", "a")).unwrap();
    // Keep a copy of the log as if the process died after sled flushed but before
    // the folded log was deleted.
    let log = std::fs::read(dir.path().join(wal::ACTIVE_NAME)).unwrap();
    let gen = wal::decode_log(&log).gen.unwrap();
    j.checkpoint().unwrap();
    j.crash();
    std::fs::write(wal::old_path(dir.path(), gen), &log).unwrap();

    let j = Journal::open(dir.path()).unwrap();
    assert_eq!(j.entry(1).unwrap().path, p("b"));
    assert_eq!(j.entry(2).unwrap().path, p("a"));
    j.close().unwrap();
}

#[test]
fn rename_rebases_paths_below_dir() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.track(1, &p("d/x")).unwrap();
    j.track(2, &p("d/sub/y")).unwrap();
    j.track(3, &p("dz")).unwrap();
    j.record_meta(MetaOp::Rename {
        from: p("d"),
        to: p("e/f"),
        flags: 0,
    })
    .unwrap();
    assert_eq!(j.entry(1).unwrap().path, p("e/f/x"));
    assert_eq!(j.entry(2).unwrap().path, p("e/f/sub/y"));
    assert_eq!(j.entry(3).unwrap().path, p("dz"));
    j.crash();
    let j = Journal::open(dir.path()).unwrap();
    assert_eq!(j.entry(2).unwrap().path, p("e/f/sub/y"));
    j.close().unwrap();
}

#[test]
fn unlink_and_truncate_update_entries() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.record_meta(MetaOp::Create {
        path: p("f"),
        file: 1,
        mode: 0o644,
    })
    .unwrap();
    j.record_write(1, 0, 1000).unwrap();
    j.record_meta(MetaOp::Truncate {
        path: p("f"),
        file: 1,
        size: 300,
    })
    .unwrap();
    assert_eq!(ranges_of(&j, 1), vec![(0, 300)]);
    assert_eq!(j.entry(1).unwrap().size, Some(300));
    j.record_write(1, 250, 400).unwrap();
    assert_eq!(j.entry(1).unwrap().size, Some(400));
    j.record_meta(MetaOp::Unlink {
        path: p("f"),
        file: 1,
        last_link: true,
    })
    .unwrap();
    assert!(j.entry(1).is_none());
    j.record_write(1, 0, 1).unwrap(); // unlinked but still open: not journalled
    assert!(j.entry(1).is_none());
    assert!(matches!(
        j.record_write(1, 5, 1),
        Err(JournalError::InvalidRange { .. })
    ));
    j.close().unwrap();
}

#[test]
fn ack_file_clears_only_matching_version() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.track(1, &p("f")).unwrap();
    j.record_write(1, 0, 100).unwrap();
    let snap = j.snapshot();
    let e = &snap.files[&1];
    assert!(j.ack_file(1, e.version, &e.ranges).unwrap());
    assert!(j.snapshot().files.is_empty());
    assert!(j.entry(1).is_some(), "path tracking survives the ack");

    j.record_write(1, 0, 50).unwrap();
    let snap = j.snapshot();
    let e = snap.files[&1].clone();
    j.record_write(1, 10, 20).unwrap();
    assert!(!j.ack_file(1, e.version, &e.ranges).unwrap());
    assert_eq!(ranges_of(&j, 1), vec![(10, 20)]);
    j.close().unwrap();

    let j = Journal::open(dir.path()).unwrap();
    assert_eq!(ranges_of(&j, 1), vec![(10, 20)]);
    j.close().unwrap();
}

#[test]
fn seq_numbers_keep_increasing_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    let a = j.record_meta(mkdir("a")).unwrap();
    let b = j.record_meta(mkdir("b")).unwrap();
    assert!(b > a);
    j.ack_meta(b).unwrap();
    assert!(j.snapshot().meta.is_empty());
    j.close().unwrap();

    let j = Journal::open(dir.path()).unwrap();
    assert!(j.snapshot().meta.is_empty());
    let c = j.record_meta(mkdir("c")).unwrap();
    assert!(c > b);
    j.crash();

    let j = Journal::open(dir.path()).unwrap();
    let d = j.record_meta(mkdir("d")).unwrap();
    assert!(d > c);
    let seqs: Vec<u64> = j.snapshot().meta.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![c, d]);
    j.close().unwrap();
}

#[test]
fn sync_and_clones_from_threads() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                j.track(t, &p(&format!("f{t}"))).unwrap();
                for i in 0..200 {
                    j.record_write(t, i * 10, i * 10 + 5).unwrap();
                }
                j.sync().unwrap();
            })
        })
        .collect();
    threads.into_iter().for_each(|h| h.join().unwrap());
    j.crash();
    let j = Journal::open(dir.path()).unwrap();
    for t in 0..4 {
        assert_eq!(j.entry(t).unwrap().ranges.range_count(), 200);
    }
    j.close().unwrap();
}

#[test]
fn format_lists_files_and_ops() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.record_meta(mkdir("a")).unwrap();
    j.record_meta(MetaOp::Create {
        path: p("a/b.txt"),
        file: 1234,
        mode: 0o644,
    })
    .unwrap();
    j.record_write(1234, 0, 4096).unwrap();
    j.record_write(1234, 6000, 8192).unwrap();
    j.record_meta(MetaOp::Rename {
        from: p("a/b.txt"),
        to: p("a/c.txt"),
        flags: 0,
    })
    .unwrap();
    let text = format_snapshot(&j.snapshot());
    assert!(
        text.starts_with("files with pending changes: 1\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "file 1234 a/c.txt size=- version=2 ranges=[0..4096, 6000..8192] (6288 bytes)"
        ),
        "{text}"
    );
    assert!(text.contains("metadata ops pending: 3\n"), "{text}");
    assert!(text.contains("#1 mkdir a mode=0755\n"), "{text}");
    assert!(text.contains("#2 create a/b.txt mode=0644"), "{text}");
    assert!(text.contains("#3 rename a/b.txt -> a/c.txt\n"), "{text}");
    j.close().unwrap();
}

/// How a short-lived file gets its last name before it is unlinked.
#[derive(Clone, Copy, Debug)]
enum Life {
    /// Created and unlinked under one name.
    Plain,
    /// Written as a temp name, renamed to its final name.
    Renamed,
    /// Hard-linked to a second name, then both names unlinked.
    Linked,
}

/// What the filesystem records as `path`, a short-lived `file`, goes through `life`;
/// returns the name its last unlink removes.
fn live(j: &Journal, life: Life, file: FileId, path: &RelPath, i: u64) -> RelPath {
    let other = p(&format!("{path}.2"));
    match life {
        Life::Plain => return path.clone(),
        Life::Renamed => j.record_meta(MetaOp::Rename {
            from: path.clone(),
            to: other.clone(),
            flags: 0,
        }),
        Life::Linked => {
            let link = MetaOp::Link {
                from: path.clone(),
                to: other.clone(),
            };
            j.record_meta(link).unwrap();
            j.record_meta(chmod(&other.to_string(), 0o600 + (i % 8) as u32))
                .unwrap();
            j.record_meta(MetaOp::Unlink {
                path: path.clone(),
                file,
                last_link: false,
            })
        }
    }
    .unwrap();
    other
}

/// Creates, writes and unlinks `n` short-lived files with no peer, as the filesystem
/// does (`create`: track, Create; a write; the kernel's mtime flush; `unlink`), and
/// returns the journal directory's allocated bytes after a checkpoint.
fn short_lived_cycles(n: u64, life: Life) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    let t0 = std::time::Instant::now();
    for i in 0..n {
        let (file, path) = (100 + i % 7, p(&format!("tmp/f{}", i % 13)));
        j.track(file, &path).unwrap();
        j.record_meta(MetaOp::Create {
            path: path.clone(),
            file,
            mode: 0o644,
        })
        .unwrap();
        j.record_write(file, 0, 4096).unwrap();
        j.record_meta(mtime(&path, i as i64)).unwrap();
        let last = live(&j, life, file, &path, i);
        j.record_meta(MetaOp::Unlink {
            path: last,
            file,
            last_link: true,
        })
        .unwrap();
        j.forget(file).unwrap();
    }
    j.checkpoint().unwrap();
    let bytes = crate::control::du(dir.path());
    let snap = j.snapshot();
    eprintln!(
        "{n} cycles ({life:?}): {:?}, journal {bytes} bytes, {} ops, {} files pending",
        t0.elapsed(),
        snap.meta.len(),
        snap.files.len()
    );
    assert_eq!(snap.meta.len(), 0, "metadata ops left");
    assert!(snap.files.is_empty());
    j.close().unwrap();
    bytes
}

fn mtime(path: &RelPath, secs: i64) -> MetaOp {
    MetaOp::Utimens {
        path: path.clone(),
        atime: None,
        mtime: Some(op::SetTime::At(op::Timestamp { secs, nanos: 0 })),
    }
}

/// The goal: 100,000 short-lived files with no peer leave nothing pending and the
/// journal directory under 1 MiB (before, 300,000 ops and 61 MB; ~2 s in debug).
#[test]
fn short_lived_files_leave_the_journal_empty() {
    for life in [Life::Plain, Life::Renamed, Life::Linked] {
        let bytes = short_lived_cycles(100_000, life);
        assert!(bytes < 1 << 20, "{life:?}: journal holds {bytes} bytes");
    }
}

fn create(path: &str, file: FileId) -> MetaOp {
    MetaOp::Create {
        path: p(path),
        file,
        mode: 0o644,
    }
}

fn unlink(path: &str, file: FileId) -> MetaOp {
    MetaOp::Unlink {
        path: p(path),
        file,
        last_link: true,
    }
}

fn chmod(path: &str, mode: u32) -> MetaOp {
    MetaOp::Chmod {
        path: p(path),
        mode,
    }
}

fn times(path: &str, atime: Option<i64>, mtime: Option<i64>) -> MetaOp {
    let at = |s: i64| op::SetTime::At(op::Timestamp { secs: s, nanos: 0 });
    MetaOp::Utimens {
        path: p(path),
        atime: atime.map(at),
        mtime: mtime.map(at),
    }
}

fn pending(j: &Journal) -> Vec<MetaOp> {
    j.snapshot().meta.into_iter().map(|(_, op)| op).collect()
}

#[test]
fn repeated_chmod_and_utimens_merge() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.record_meta(chmod("f", 0o600)).unwrap();
    j.record_meta(times("f", Some(1), None)).unwrap();
    j.record_meta(chmod("g", 0o700)).unwrap();
    let last_chmod = j.record_meta(chmod("f", 0o644)).unwrap();
    j.record_meta(times("f", None, Some(2))).unwrap();
    j.record_meta(times("f", None, Some(3))).unwrap();
    assert_eq!(
        pending(&j),
        [
            chmod("g", 0o700),
            chmod("f", 0o644),
            times("f", Some(1), Some(3))
        ]
    );
    assert_eq!(
        j.snapshot().meta[1].0,
        last_chmod,
        "the merged op takes the new seq"
    );
    // A rename naming the path stands between: no merge across it.
    j.record_meta(MetaOp::Rename {
        from: p("f"),
        to: p("h"),
        flags: 0,
    })
    .unwrap();
    j.record_meta(chmod("f", 0o600)).unwrap();
    assert_eq!(pending(&j).len(), 5);
    j.close().unwrap();
}

#[test]
fn short_lived_file_and_dir_cancel_out() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.record_meta(mkdir("d")).unwrap();
    j.record_meta(create("d/f", 5)).unwrap();
    j.record_meta(chmod("d/f", 0o600)).unwrap();
    j.record_meta(create("keep", 6)).unwrap();
    j.record_meta(unlink("d/f", 5)).unwrap();
    assert_eq!(pending(&j), [mkdir("d"), create("keep", 6)]);
    j.record_meta(MetaOp::Rmdir { path: p("d") }).unwrap();
    assert_eq!(pending(&j), [create("keep", 6)]);
    // Another file's create at the path stops the search: nothing cancels.
    j.record_meta(create("x", 7)).unwrap();
    j.record_meta(unlink("x", 7)).unwrap();
    j.record_meta(create("x", 8)).unwrap();
    j.record_meta(unlink("x", 7)).unwrap();
    assert_eq!(
        pending(&j),
        [create("keep", 6), create("x", 8), unlink("x", 7)]
    );
    j.close().unwrap();
}

#[test]
fn nothing_at_or_below_the_watermark_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    let c = j.record_meta(create("f", 5)).unwrap();
    let m = j.record_meta(chmod("f", 0o600)).unwrap();
    assert_eq!(j.mark_sent(m), 2);
    j.record_meta(chmod("f", 0o644)).unwrap();
    j.record_meta(unlink("f", 5)).unwrap();
    let seqs: Vec<u64> = j.snapshot().meta.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs.len(),
        4,
        "sent ops stay, so the unlink and chmod stay too"
    );
    assert_eq!(&seqs[..2], [c, m]);
    // After a restart, ops from before it are never dropped.
    j.close().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.record_meta(chmod("g", 0o600)).unwrap();
    j.close().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.record_meta(chmod("g", 0o644)).unwrap();
    assert_eq!(pending(&j).len(), 6);
    j.close().unwrap();
}

#[test]
fn mark_sent_reports_ops_dropped_since_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.record_meta(create("f", 5)).unwrap();
    let snap = j.snapshot();
    j.record_meta(unlink("f", 5)).unwrap();
    let last = snap.meta.last().unwrap().0;
    assert_ne!(j.mark_sent(last), snap.meta.len(), "the snapshot is stale");
    j.close().unwrap();
}

#[test]
fn replay_after_crash_drops_what_the_live_journal_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.record_meta(create("a", 1)).unwrap();
    j.record_meta(chmod("a", 0o600)).unwrap();
    j.checkpoint().unwrap(); // the create and chmod are in sled, the rest only logged
    j.record_meta(times("a", Some(1), None)).unwrap();
    j.record_meta(chmod("a", 0o644)).unwrap();
    let sent = j.record_meta(create("b", 2)).unwrap();
    j.mark_sent(sent);
    j.record_meta(unlink("b", 2)).unwrap(); // kept: b's create may be sent
    j.record_meta(times("a", None, Some(2))).unwrap();
    j.record_meta(create("c", 3)).unwrap();
    j.record_meta(unlink("c", 3)).unwrap();
    let before = j.snapshot();
    let expect = [
        create("a", 1),
        times("a", Some(1), None), // at or below the watermark: not merged
        chmod("a", 0o644),         // replaced the checkpointed chmod 0600
        create("b", 2),
        unlink("b", 2),
        times("a", None, Some(2)),
    ];
    assert_eq!(pending(&j), expect);
    j.crash();

    let j = Journal::open(dir.path()).unwrap();
    assert_eq!(j.snapshot(), before);
    j.record_meta(unlink("a", 1)).unwrap(); // a's ops predate the restart: kept
    assert_eq!(j.snapshot().meta.len(), 7);
    j.close().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    assert_eq!(j.snapshot().meta.len(), 7);
    j.close().unwrap();
}

#[test]
fn a_recorded_write_is_in_flight_until_done() {
    let t = tempfile::tempdir().unwrap();
    let j = Journal::open(&t.path().join("j")).unwrap();
    j.track(5, &RelPath::from_bytes(b"f").unwrap()).unwrap();
    assert!(!j.is_writing(5));
    j.record_write(5, 0, 10).unwrap();
    j.record_write(5, 0, 10).unwrap(); // covered: still in flight
    j.record_write(6, 0, 10).unwrap(); // untracked: counted all the same
    assert!(j.is_writing(5) && j.is_writing(6));
    j.write_done(5);
    assert!(j.is_writing(5), "one write is still going");
    j.write_done(5);
    j.write_done(6);
    assert!(!j.is_writing(5) && !j.is_writing(6));
    j.close().unwrap();
}

/// Rewrites the active intent log with its header, then `format` (if any), then its
/// records.
fn rewrite_log(dir: &Path, format: Option<u32>) {
    let path = dir.join(wal::ACTIVE_NAME);
    let log = wal::decode_log(&std::fs::read(&path).unwrap());
    assert_eq!(log.format, wal::FORMAT, "a new log names its format");
    let mut recs = vec![Record::Header {
        gen: log.gen.unwrap(),
    }];
    recs.extend(format.map(|version| Record::Format { version }));
    recs.extend(log.records);
    let bytes: Vec<u8> = recs
        .iter()
        .flat_map(|r| wal::encode_frame(r).unwrap())
        .collect();
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn a_log_without_a_format_still_replays() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.track(1, &p("f")).unwrap();
    j.record_write(1, 0, 10).unwrap();
    j.record_meta(mkdir("d")).unwrap();
    j.crash();
    rewrite_log(dir.path(), None); // as written before logs named their format
    let log = wal::read_log(&dir.path().join(wal::ACTIVE_NAME)).unwrap();
    assert_eq!((log.format, log.records.len()), (1, 3));

    let j = Journal::open(dir.path()).unwrap();
    assert_eq!(ranges_of(&j, 1), vec![(0, 10)]);
    assert_eq!(pending(&j), vec![mkdir("d")]);
    j.close().unwrap();
}

#[test]
fn a_log_of_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.track(1, &p("f")).unwrap();
    j.record_write(1, 0, 10).unwrap();
    j.crash();
    rewrite_log(dir.path(), Some(99));
    let log = wal::decode_log(&std::fs::read(dir.path().join(wal::ACTIVE_NAME)).unwrap());
    assert_eq!(
        (log.format, log.records.len()),
        (99, 0),
        "nothing read past it"
    );

    let err = Journal::open(dir.path())
        .err()
        .expect("a format-99 log is refused");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            JournalError::UnknownFormat {
                found: 99,
                known: wal::FORMAT,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("intent.log") && msg.contains("99"), "{msg}");
    // nothing was thrown away: the log is still there for a newer build
    assert!(dir.path().join(wal::ACTIVE_NAME).exists());
}

#[test]
fn markers_carry_a_format_and_old_ones_still_decode() {
    // An old marker is two bare u64s; this one starts with the bytes of the prefix.
    let old = Marker {
        folded_gen: 0xFFFE,
        next_seq: 7,
    };
    let old_bytes = bincode::serialize(&old).unwrap();
    assert_eq!((&old_bytes[..2], old_bytes.len()), (&STORED_MAGIC[..], 16));
    assert_eq!(Marker::decode(&old_bytes).unwrap(), old);
    let new = old.encode().unwrap();
    assert_eq!(new[..3], [0xFE, 0xFF, MARKER_FORMAT]);
    assert_ne!(new.len(), MARKER_V0_LEN);
    assert_eq!(Marker::decode(&new).unwrap(), old);
    let mut future = new.clone();
    future[2] = 99;
    assert!(matches!(
        Marker::decode(&future),
        Err(JournalError::UnknownFormat { found: 99, .. })
    ));
    assert!(Marker::decode(&new[..10]).is_err());
}

#[test]
fn values_stored_without_a_format_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.track(1, &p("f")).unwrap();
    j.record_write(1, 0, 10).unwrap();
    j.record_meta(mkdir("d")).unwrap();
    let before = j.snapshot();
    j.close().unwrap();
    // Store the marker and the entry as a build before formats did.
    {
        let db = open_db(&dir.path().join("db")).unwrap();
        let files = db.open_tree("files").unwrap();
        let m = Marker::decode(&files.get(MARKER_KEY).unwrap().unwrap()).unwrap();
        assert_eq!(files.get(MARKER_KEY).unwrap().unwrap()[..2], STORED_MAGIC);
        files
            .insert(MARKER_KEY, bincode::serialize(&m).unwrap())
            .unwrap();
        let key = 1u64.to_be_bytes();
        let e = FileEntry::decode(&files.get(key).unwrap().unwrap()).unwrap();
        files.insert(key, bincode::serialize(&e).unwrap()).unwrap();
        db.flush().unwrap();
    }
    let j = Journal::open(dir.path()).unwrap();
    assert_eq!(j.snapshot(), before);
    j.close().unwrap();
}

/// A checkpoint that cannot create the next log (no fds, no space) leaves the active
/// log in place: later checkpoints succeed and nothing recorded is lost.
#[test]
fn a_failed_rotation_leaves_the_log_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.track(1, &p("a")).unwrap();
    j.record_write(1, 0, 10).unwrap();
    let blocker = dir.path().join("intent.log.new");
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("x"), b"makes the remove fail").unwrap();
    assert!(j.checkpoint().is_err());
    assert!(dir.path().join("intent.log").exists());
    j.record_write(1, 20, 30).unwrap();
    std::fs::remove_dir_all(&blocker).unwrap();
    j.checkpoint().unwrap();
    j.record_write(1, 40, 50).unwrap();
    j.crash();

    let j = Journal::open(dir.path()).unwrap();
    assert_eq!(ranges_of(&j, 1), vec![(0, 10), (20, 30), (40, 50)]);
    j.close().unwrap();
}

#[test]
fn ops_dropped_unsent_stay_dropped_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    let a = j.record_meta(mkdir("a")).unwrap();
    let b = j.record_meta(mkdir("b")).unwrap();
    let c = j.record_meta(mkdir("c")).unwrap();
    assert_eq!(j.mark_sent(c), 3);
    j.drop_unsent(vec![b]).unwrap();
    let left = |j: &Journal| {
        j.snapshot()
            .meta
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>()
    };
    assert_eq!(left(&j), vec![a, c]);
    j.crash();
    let j = Journal::open(dir.path()).unwrap();
    assert_eq!(left(&j), vec![a, c], "not offered again after a restart");
    j.close().unwrap();
}

#[test]
fn a_file_is_open_for_write_until_its_last_writable_handle_closes() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    assert!(!j.open_for_write().contains(&7));
    j.opened(7);
    j.opened(7);
    j.closed(7);
    assert!(j.open_for_write().contains(&7), "one handle is still open");
    j.closed(7);
    assert!(!j.open_for_write().contains(&7));
    j.closed(7); // a close without an open is ignored
    assert!(!j.open_for_write().contains(&7));
}
