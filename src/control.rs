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
    /// Replaced and deleted versions kept in the archive (`versions_days`,
    /// `versions_max_mib` bound it).
    #[serde(default)]
    pub versions: u64,
}

impl Overhead {
    /// Measures the store at `dir` (allocated blocks, so sparse files count what they use).
    pub fn measure(dir: &Path) -> Overhead {
        Overhead {
            journal: du(&dir.join("journal")),
            staging: du(&dir.join("staging")),
            preimages: du(&dir.join("preimages")),
            versions: du(&dir.join("versions")),
        }
    }

    /// The sum.
    pub fn total(&self) -> u64 {
        self.journal + self.staging + self.preimages + self.versions
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

/// What `status` answers (and `status --json` prints).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
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
    /// What the daemon is doing: `scanning`, `connecting`, `reconciling`, `sending`,
    /// `receiving` or `idle`.
    #[serde(default)]
    pub phase: String,
    /// Transfer rates over the last few seconds.
    #[serde(default)]
    pub rates: Rates,
    /// Seconds until the queue is sent at the current rate (`None`: idle or no rate yet).
    #[serde(default)]
    pub eta_secs: Option<u64>,
    /// The bandwidth limit, KiB/s each way (0: unlimited).
    #[serde(default)]
    pub bwlimit_kib: u64,
}

/// Bytes per second over the last few seconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Rates {
    /// Written to the link.
    pub up: f64,
    /// Read from the link.
    pub down: f64,
    /// File bytes sent (before compression).
    pub file: f64,
}

/// One sample of the byte counters.
#[derive(Clone, Copy)]
struct Sample {
    at: std::time::Instant,
    wire_out: u64,
    wire_in: u64,
    raw: u64,
}

/// Samples of the last few seconds (taken twice a second).
#[derive(Default)]
struct Window(std::sync::Mutex<std::collections::VecDeque<Sample>>);

/// How far back rates look.
const WINDOW: std::time::Duration = std::time::Duration::from_secs(3);

impl Window {
    fn push(&self, v: &StatsView) {
        let mut w = self.0.lock().unwrap();
        let now = std::time::Instant::now();
        w.push_back(Sample {
            at: now,
            wire_out: v.wire_out,
            wire_in: v.wire_in,
            raw: v.raw_sent,
        });
        while w.front().is_some_and(|s| now - s.at > WINDOW) {
            w.pop_front();
        }
    }

    /// Rates from the oldest sample to now (none before half a second of history).
    fn rates(&self, v: &StatsView) -> Rates {
        let w = self.0.lock().unwrap();
        let Some(first) = w.front() else {
            return Rates::default();
        };
        let secs = first.at.elapsed().as_secs_f64();
        if secs < 0.5 {
            return Rates::default();
        }
        let per = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
        Rates {
            up: per(v.wire_out, first.wire_out),
            down: per(v.wire_in, first.wire_in),
            file: per(v.raw_sent, first.raw),
        }
    }
}

/// The phase a daemon is in.
fn phase(v: &StatsView, scan: &ScanView) -> &'static str {
    let recent = |ms: u64| crate::sync::stats::now_ms().saturating_sub(ms) < 2_000;
    if scan.running {
        "scanning"
    } else if !v.linked {
        "connecting"
    } else if v.exchanging {
        "reconciling"
    } else if v.in_flight > 0 || v.queued > 0 {
        "sending"
    } else if recent(v.last_applied_ms) || v.incoming_files > 0 {
        "receiving"
    } else {
        "idle"
    }
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
    let window = Arc::new(Window::default());
    let sampler = {
        let (window, stats) = (window.clone(), src.stats.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                tick.tick().await;
                window.push(&stats.view());
            }
        })
    };
    let _stop_sampler = AbortOnDrop(sampler);
    loop {
        let (conn, _) = listener.accept().await?;
        tokio::spawn(answer(conn, status_of(&src, &window)));
    }
}

/// Seconds until the queue is on the wire at the current outgoing rate: payload queued
/// to the link and not yet written, plus the dirty bytes not yet in flight (at the
/// compression seen so far).
fn eta(v: &StatsView, r: &Rates) -> Option<u64> {
    if v.queued_bytes == 0 || r.up <= 0.0 {
        return None;
    }
    let flying: u64 = v.flights.iter().map(|f| f.bytes).sum();
    let ratio = match v.raw_sent {
        0 => 1.0,
        raw => v.sent_bytes as f64 / raw as f64,
    };
    let unwritten = v.sent_bytes.saturating_sub(v.wire_out) as f64;
    let waiting = v.queued_bytes.saturating_sub(flying) as f64 * ratio;
    Some(((unwritten + waiting) / r.up).ceil() as u64)
}

/// Aborts a task when dropped (the sampler dies with the server).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn status_of(src: &Sources, window: &Window) -> Status {
    let mut stats = src.stats.view();
    if !stats.linked {
        // no session, so no sender counts the queue: the journal says what waits
        let (files, bytes, ops) = src.journal.pending_counts();
        (stats.queued, stats.queued_bytes, stats.queued_ops) = (files + ops, bytes, ops);
    }
    let scan = ScanView::of(&src.scan);
    let rates = window.rates(&stats);
    let eta_secs = eta(&stats, &rates);
    Status {
        mountpoint: src.mountpoint.clone(),
        pid: std::process::id(),
        phase: phase(&stats, &scan).into(),
        overhead: Overhead::measure(&src.store),
        conflict_copies: conflict_copies(&src.journal),
        scan,
        rates,
        eta_secs,
        stats,
        bwlimit_kib: src.bwlimit_kib,
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
    let mut out = format!(
        "mounted at:  {} (pid {})\nphase:       {}\n{}",
        s.mountpoint.display(),
        s.pid,
        s.phase,
        scan_line(&s.scan)
    );
    out += &peer_lines(v);
    if s.bwlimit_kib > 0 {
        out += &format!("bwlimit:     {} KiB/s each way\n", s.bwlimit_kib);
    }
    out += &format!(
        "queued:      {} ({} files with {} of file data, {} metadata ops)\n",
        v.queued,
        v.queued.saturating_sub(v.queued_ops),
        size(v.queued_bytes),
        v.queued_ops
    );
    out += &format!(
        "incoming:    {} ({} of file data) queued on the peer for us\n",
        v.incoming_files,
        size(v.incoming_bytes)
    );
    out += &format!("in flight:   {}\n", v.in_flight);
    for f in &v.flights {
        let secs = crate::sync::stats::now_ms().saturating_sub(f.since_ms) as f64 / 1e3;
        let pct = (f.sent * 100).checked_div(f.payload).unwrap_or(0);
        out += &format!(
            "  sending    {} ({}; {} of {} on the wire, {pct}%, {secs:.1} s)\n",
            f.path,
            size(f.bytes),
            size(f.sent),
            size(f.payload)
        );
    }
    out += &traffic_lines(s);
    out += &format!(
        "metadata:    {} ops acked\napplied:     {} from the peer\nlast sync:   {}\n",
        v.meta_acked,
        v.applied,
        when(v.last_sync)
    );
    out += &format!(
        "conflicts:   {} (copies in the folder)\n",
        s.conflict_copies.len()
    );
    for c in &s.conflict_copies {
        out += &format!("conflict:    {c}\n");
    }
    let o = &s.overhead;
    out += &format!(
        "overhead:    {} (journal {}, staging {}, pre-images {}, kept versions {})\n",
        size(o.total()),
        size(o.journal),
        size(o.staging),
        size(o.preimages),
        size(o.versions)
    );
    out + &error_lines(v)
}

fn scan_line(sc: &ScanView) -> String {
    if !sc.running {
        return String::new();
    }
    format!(
        "scanning:    {} entries looked at, {} hashed, {} changes found (mounts when done)\n",
        sc.seen,
        size(sc.hashed_bytes),
        sc.changed
    )
}

fn peer_lines(v: &StatsView) -> String {
    let link = if v.linked { "up" } else { "down" };
    let mut out = format!("peer link:   {link}");
    if v.rtt_us > 0 && v.linked {
        out += &format!(", round trip {:.1} ms", v.rtt_us as f64 / 1e3);
    }
    if v.throughput > 0 {
        out += &format!(", measured {}/s", size(v.throughput));
    }
    if !v.peer.is_empty() {
        out += &format!("\npeer:        {}", v.peer);
    }
    out + "\n"
}

fn traffic_lines(s: &Status) -> String {
    let v = &s.stats;
    let ratio = match v.sent_bytes {
        0 => "-".to_string(),
        n => format!("{:.1}x", v.raw_sent as f64 / n as f64),
    };
    let eta = s.eta_secs.map_or(String::new(), |e| format!(", ETA {e} s"));
    let times = |a: u64, b: u64| match b {
        0 => "-".to_string(),
        b => format!("{:.1}x", a as f64 / b as f64),
    };
    let deltas = format!(
        "deltas:      {} of file data went as {} of deltas against the peer's bytes \
         (dedupe {})\n",
        size(v.delta_raw),
        size(v.delta_payload),
        times(v.delta_raw, v.delta_payload),
    );
    deltas
        + &format!(
            "sent:        {} updates acked, {} refused, {} of file data as {} of range data \
         (ratio {ratio})\nreceived:    {} of file data applied\nwire:        {} out, {} in\nrate:        {}/s out, {}/s in, \
         {}/s of file data{eta}\n",
            v.acked,
            v.nacked,
            size(v.raw_sent),
            size(v.sent_bytes),
            size(v.raw_received),
            size(v.wire_out),
            size(v.wire_in),
            size(s.rates.up as u64),
            size(s.rates.down as u64),
            size(s.rates.file as u64),
        )
}

fn error_lines(v: &StatsView) -> String {
    if v.errors.is_empty() {
        return "errors:      -\n".into();
    }
    let mut out = String::new();
    for e in &v.errors {
        let mark = if e.resolved { " (resolved)" } else { "" };
        out += &format!("error:       {}{mark}: {}\n", when(e.at), e.message);
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS UTC` for Unix seconds (`never` for 0).
fn when(secs: u64) -> String {
    if secs == 0 {
        return "never".into();
    }
    let t = crate::sync::verdict::utc_stamp(secs as i64);
    format!(
        "{}-{}-{} {}:{}:{} UTC",
        &t[0..4],
        &t[4..6],
        &t[6..8],
        &t[9..11],
        &t[11..13],
        &t[13..15]
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
        std::fs::create_dir(t.path().join("versions")).unwrap();
        std::fs::write(t.path().join("versions/y"), vec![1u8; 50_000]).unwrap();
        let o = Overhead::measure(t.path());
        assert!(o.journal >= 100_000 && o.versions >= 50_000);
        assert_eq!(o.total(), o.journal + o.staging + o.preimages + o.versions);
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
                journal: offline_journal(&t.path().join("j")),
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
        // no session: the queue comes from the journal
        assert!(
            format(&got)
                .contains("queued:      2 (1 files with 100 B of file data, 1 metadata ops)"),
            "{}",
            format(&got)
        );
    }

    /// A journal holding one file with 100 dirty bytes and one metadata op.
    fn offline_journal(dir: &std::path::Path) -> crate::journal::Journal {
        let j = crate::journal::Journal::open(dir).unwrap();
        let p = |s: &str| crate::path::RelPath::from_bytes(s.as_bytes()).unwrap();
        j.track(5, &p("f")).unwrap();
        j.record_write(5, 0, 100).unwrap();
        let op = crate::journal::op::MetaOp::Mkdir {
            path: p("d"),
            mode: 0o755,
        };
        j.record_meta(op).unwrap();
        j
    }
}
