//! The control socket: a running mount answers `status` on `STORE/control.sock` with
//! its counters and the store's on-disk overhead, for `syncfs status`.

use crate::sync::stats::{Stats, StatsView};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Bytes the store uses besides the user's data.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Overhead {
    /// The journal: sled and the intent logs.
    pub journal: u64,
    /// Staged updates from the peer.
    pub staging: u64,
    /// Old bytes kept for deltas.
    pub preimages: u64,
}

impl Overhead {
    /// Measures the store at `dir` (allocated blocks, so sparse files count what they use).
    pub fn measure(dir: &Path) -> Overhead {
        Overhead {
            journal: du(&dir.join("journal")),
            staging: du(&dir.join("staging")),
            preimages: du(&dir.join("preimages")),
        }
    }

    /// The sum.
    pub fn total(&self) -> u64 {
        self.journal + self.staging + self.preimages
    }
}

/// Bytes allocated to the files below `p` (directories themselves not counted).
pub fn du(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if !md.is_dir() {
        return md.blocks() * 512;
    }
    let children = std::fs::read_dir(p).into_iter().flatten().flatten();
    children.map(|e| du(&e.path())).sum()
}

/// What `status` answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// The mount point.
    pub mountpoint: PathBuf,
    /// The daemon's pid.
    pub pid: u32,
    /// The sync counters.
    pub stats: StatsView,
    /// On-disk overhead.
    pub overhead: Overhead,
    /// Conflict copies in the folder (store-relative paths).
    #[serde(default)]
    pub conflict_copies: Vec<String>,
    /// The mount-time scan (the first one of an adopted folder hashes everything).
    #[serde(default)]
    pub scan: ScanView,
    /// The bandwidth limit, KiB/s each way (0: unlimited).
    #[serde(default)]
    pub bwlimit_kib: u64,
}

/// The mount-time scan's progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScanView {
    /// True while it runs (the folder is mounted once it is done).
    pub running: bool,
    /// Entries looked at so far.
    pub seen: u64,
    /// Bytes read and hashed so far.
    pub hashed_bytes: u64,
    /// Changes found and journaled so far.
    pub changed: u64,
}

impl ScanView {
    fn of(p: &crate::scan::Progress) -> ScanView {
        use std::sync::atomic::Ordering::Relaxed;
        ScanView {
            running: p.running.load(Relaxed) != 0,
            seen: p.seen.load(Relaxed),
            hashed_bytes: p.hashed.load(Relaxed),
            changed: p.changed.load(Relaxed),
        }
    }
}

/// What the daemon shares with the control socket.
pub struct Sources {
    /// The store directory (for the overhead).
    pub store: PathBuf,
    /// The mount point.
    pub mountpoint: PathBuf,
    /// The sync counters.
    pub stats: Arc<Stats>,
    /// The journal (conflict copies from the index).
    pub journal: crate::journal::Journal,
    /// The mount-time scan.
    pub scan: Arc<crate::scan::Progress>,
    /// The bandwidth limit, KiB/s each way (0: unlimited).
    pub bwlimit_kib: u64,
}

/// Serves `status` requests on `socket` until the task is dropped.
pub async fn serve(socket: PathBuf, src: Sources) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    loop {
        let (conn, _) = listener.accept().await?;
        let status = Status {
            mountpoint: src.mountpoint.clone(),
            pid: std::process::id(),
            stats: src.stats.view(),
            overhead: Overhead::measure(&src.store),
            conflict_copies: conflict_copies(&src.journal),
            scan: ScanView::of(&src.scan),
            bwlimit_kib: src.bwlimit_kib,
        };
        tokio::spawn(answer(conn, status));
    }
}

/// The conflict copies the index knows of.
pub fn conflict_copies(journal: &crate::journal::Journal) -> Vec<String> {
    match journal.index().conflict_copies() {
        Ok(v) => v.into_iter().map(|p| p.to_string()).collect(),
        Err(e) => vec![format!("(index unreadable: {e})")],
    }
}

async fn answer(conn: tokio::net::UnixStream, status: Status) {
    let (r, mut w) = conn.into_split();
    let mut line = String::new();
    if BufReader::new(r).read_line(&mut line).await.is_err() || line.trim() != "status" {
        return;
    }
    let mut json = serde_json::to_string(&status).unwrap_or_default();
    json.push('\n');
    let _ = w.write_all(json.as_bytes()).await;
}

/// Asks the daemon behind `socket` for its status (`None` if no daemon answers).
pub fn query(socket: &Path) -> Option<Status> {
    use std::io::{BufRead, Write};
    let mut conn = std::os::unix::net::UnixStream::connect(socket).ok()?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    conn.write_all(b"status\n").ok()?;
    let mut line = String::new();
    std::io::BufReader::new(conn).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

/// Human-readable status.
pub fn format(s: &Status) -> String {
    let v = &s.stats;
    let o = &s.overhead;
    let link = if v.linked { "up" } else { "down" };
    let err = if v.last_error.is_empty() {
        "-"
    } else {
        &v.last_error
    };
    let mut stuck = String::new();
    let sc = &s.scan;
    if sc.running {
        stuck.push_str(&format!(
            "scanning:    {} entries looked at, {} hashed, {} changes found (mounts when done)\n",
            sc.seen,
            size(sc.hashed_bytes),
            sc.changed
        ));
    }
    if s.bwlimit_kib > 0 {
        stuck.push_str(&format!("bwlimit:     {} KiB/s each way\n", s.bwlimit_kib));
    }
    for line in &v.stuck {
        stuck.push_str(&format!("stuck:       {line}\n"));
    }
    for c in &s.conflict_copies {
        stuck.push_str(&format!("conflict:    {c}\n"));
    }
    format!(
        "mounted at:  {} (pid {})\npeer link:   {link}\nqueued:      {} (files and metadata ops pending)\n\
         in flight:   {}\nsent:        {} updates acked, {} refused, {} of range data\n\
         metadata:    {} ops acked\napplied:     {} from the peer\nconflicts:   {} (copies in the folder)\n\
         overhead:    {} (journal {}, staging {}, pre-images {})\nlast error:  {err}\n{stuck}",
        s.mountpoint.display(), s.pid, v.queued, v.in_flight, v.acked, v.nacked, size(v.sent_bytes),
        v.meta_acked, v.applied, s.conflict_copies.len(), size(o.total()), size(o.journal), size(o.staging), size(o.preimages),
    )
}

/// `1.5 MiB`-style sizes.
pub fn size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 20), "3.0 MiB");
    }

    #[test]
    fn du_counts_allocated_bytes() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("journal")).unwrap();
        std::fs::write(t.path().join("journal/x"), vec![1u8; 100_000]).unwrap();
        let o = Overhead::measure(t.path());
        assert!(o.journal >= 100_000 && o.total() == o.journal + o.staging + o.preimages);
    }

    #[tokio::test]
    async fn status_round_trips_over_the_socket() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("control.sock");
        let stats = Arc::new(Stats::default());
        Stats::add(&stats.acked, 3);
        let scan = Arc::new(crate::scan::Progress::default());
        scan.running.store(1, std::sync::atomic::Ordering::Relaxed);
        scan.seen.store(1234, std::sync::atomic::Ordering::Relaxed);
        let srv = tokio::spawn(serve(
            sock.clone(),
            Sources {
                store: t.path().to_path_buf(),
                mountpoint: "/mnt".into(),
                stats,
                journal: crate::journal::Journal::open(&t.path().join("j")).unwrap(),
                scan,
                bwlimit_kib: 512,
            },
        ));
        let mut got = None;
        for _ in 0..100 {
            let s = sock.clone();
            got = tokio::task::spawn_blocking(move || query(&s))
                .await
                .unwrap();
            if got.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        srv.abort();
        let got = got.expect("the server answers");
        assert_eq!(got.stats.acked, 3);
        assert!(format(&got).contains("3 updates acked"));
        assert!(got.scan.running && got.scan.seen == 1234);
        assert!(format(&got).contains("scanning:    1234 entries looked at"));
        assert!(format(&got).contains("bwlimit:     512 KiB/s each way"));
    }
}
