//! Simulation: two nodes in one process, each with its own journal, index,
//! applier and backing folder, joined by in-memory pipes (no FUSE, no sockets). Random
//! edits on every node while the links are cut, then heal and quiesce: all trees are
//! equal, every node's last version of every file is on every node (the file, a
//! conflict copy or an archived version), and nothing but keepalives is sent.
//!
//! Local edits are made the way the mount makes them: the journal first, then the
//! backing file. Time is tokio's paused clock: it jumps to the next timer whenever
//! every task is idle, so settle delays, pings and timeouts cost no real time.

use super::check::Checker;
use super::link::{Duplex, Link};
use super::receiver::{serve, Receiver};
use super::sender::{self, Sender};
use super::{SyncConfig, SyncError};
use crate::apply::{Applier, NoHooks};
use crate::journal::{Journal, MetaOp};
use crate::net::PeerId;
use crate::path::RelPath;
use crate::sys;
use crate::versions::Archive;
use futures::future::BoxFuture;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio_util::compat::TokioAsyncReadCompatExt;

const FOLDER: [u8; 16] = [9; 16];
pub(super) const FILES: usize = 5;

pub(super) struct Node {
    _tmp: tempfile::TempDir,
    pub(super) data: PathBuf,
    versions: PathBuf,
    pub(super) journal: Journal,
    pub(super) receiver: Receiver,
    pub(super) id: PeerId,
    cfg: SyncConfig,
    quiet: Mutex<Option<UnboundedSender<u64>>>,
}

pub(super) fn node() -> Arc<Node> {
    node_holding(&[])
}

/// A node whose folder holds `files` (`f<i>` and its text) before its first scan, as
/// if adopted: indexed with no history, nothing pending.
pub(super) fn node_holding(files: &[(usize, String)]) -> Arc<Node> {
    node_with(&|data| {
        for (f, text) in files {
            std::fs::write(data.join(format!("f{f}")), text).unwrap();
        }
    })
}

/// A node whose folder `prepare` fills before its first scan (adopted: no history).
pub(super) fn node_with(prepare: &dyn Fn(&Path)) -> Arc<Node> {
    let tmp = tempfile::tempdir().unwrap();
    let (data, staging) = (tmp.path().join("data"), tmp.path().join("staging"));
    std::fs::create_dir(&data).unwrap();
    std::fs::create_dir(&staging).unwrap();
    prepare(&data);
    let versions = tmp.path().join("versions");
    let journal = Journal::open(&tmp.path().join("journal")).unwrap();
    let id = PeerId::random();
    let cfg = SyncConfig {
        folder_id: FOLDER,
        node_name: id.to_string(),
        settle: Duration::from_millis(20),
        level: 3,
        node: crate::vv::node_id(&id.to_bytes()),
        peer_bytes: id.to_bytes(),
        peer_text: id.to_string(),
    };
    let progress = crate::scan::Progress::default();
    let scan = crate::scan::Scan {
        data: &data,
        journal: &journal,
        node: cfg.node,
        progress: &progress,
    };
    scan.run().unwrap();
    let mut applier = Applier::open(&data, &staging, Arc::new(NoHooks)).unwrap();
    applier.set_archive(Archive::open(&versions, 30, 1024).unwrap());
    let applier = Arc::new(applier);
    let root = sys::openat(
        &sys::AtCwd,
        data.as_os_str(),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
    .unwrap();
    let check = Checker {
        journal: journal.clone(),
        root: Arc::new(root),
        applier: applier.clone(),
        cfg: cfg.clone(),
    };
    let receiver = Receiver {
        applier,
        cfg: cfg.clone(),
        stats: Default::default(),
        lock: Default::default(),
        budgets: Default::default(),
        check,
        handoffs: Default::default(),
    };
    Arc::new(Node {
        _tmp: tmp,
        data,
        versions,
        journal,
        receiver,
        id,
        cfg,
        quiet: Mutex::new(None),
    })
}

/// An in-memory link from one node to another; `up` cut means no stream opens and the
/// open ones are dropped.
pub(super) struct MemLink {
    from: PeerId,
    to: Arc<Node>,
    up: Arc<AtomicBool>,
    pub(super) serving: Mutex<Vec<JoinHandle<Result<(), SyncError>>>>,
    /// Bytes the sender may still write before the link breaks (`u64::MAX`: no limit).
    pub(super) cut_after: Arc<AtomicU64>,
    /// One-way delay of the receiver's end, in milliseconds (0: none).
    pub(super) latency_ms: Arc<AtomicU64>,
}

impl MemLink {
    pub(super) fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for t in self.serving.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Link for MemLink {
    fn open(&self) -> BoxFuture<'_, Result<Box<dyn Duplex>, SyncError>> {
        Box::pin(async move {
            if !self.up.load(Ordering::SeqCst) {
                return Err(SyncError::Protocol("link down".into()));
            }
            let (ours, theirs) = tokio::io::duplex(1 << 20);
            let delay = Duration::from_millis(self.latency_ms.load(Ordering::SeqCst));
            let theirs = super::latency_tests::delayed(theirs, delay);
            let (from, r) = (self.from, self.to.receiver.clone());
            let t = tokio::spawn(async move { serve(from, theirs.compat(), &r).await });
            self.serving.lock().unwrap().push(t);
            let cut = (self.up.clone(), self.cut_after.clone());
            Ok(Box::new(CutAfter(ours.compat(), cut)) as Box<dyn Duplex>)
        })
    }

    fn reset(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn peer(&self) -> String {
        self.to.id.to_string()
    }
}

/// A sender's stream that breaks (and takes the link down) once its byte budget is
/// spent: a cut in the middle of a transfer.
struct CutAfter<S>(S, (Arc<AtomicBool>, Arc<AtomicU64>));

impl<S: futures::io::AsyncRead + Unpin> futures::io::AsyncRead for CutAfter<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: futures::io::AsyncWrite + Unpin> futures::io::AsyncWrite for CutAfter<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let left = self.1 .1.load(Ordering::SeqCst);
        if left == 0 {
            self.1 .0.store(false, Ordering::SeqCst);
            let e = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "cut");
            return std::task::Poll::Ready(Err(e));
        }
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let r = std::pin::Pin::new(&mut self.0).poll_write(cx, &buf[..n]);
        if let std::task::Poll::Ready(Ok(k)) = &r {
            if left != u64::MAX {
                self.1 .1.fetch_sub(*k as u64, Ordering::SeqCst);
            }
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_close(cx)
    }
}

/// Starts a sender from `a` to `b`.
pub(super) fn connect(
    a: &Arc<Node>,
    b: &Arc<Node>,
    up: &Arc<AtomicBool>,
) -> (Arc<MemLink>, JoinHandle<()>) {
    let link = Arc::new(MemLink {
        from: a.id,
        to: b.clone(),
        up: up.clone(),
        serving: Mutex::new(Vec::new()),
        cut_after: Arc::new(AtomicU64::new(u64::MAX)),
        latency_ms: Arc::default(),
    });
    let root = sys::openat(
        &sys::AtCwd,
        a.data.as_os_str(),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
    .unwrap();
    let s = Sender {
        link: link.clone(),
        journal: a.journal.clone(),
        root: Arc::new(root),
        cfg: a.cfg.clone(),
        stats: a.receiver.stats.clone(), // one node's sender and receiver share them
        pre: None,
        handoffs: a.receiver.handoffs.clone(),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    *a.quiet.lock().unwrap() = Some(tx);
    (link, tokio::spawn(sender::run(s, rx)))
}

fn rp(s: &str) -> RelPath {
    RelPath::from_bytes(s.as_bytes()).unwrap()
}

/// One local edit, as the mount would record it.
#[derive(Clone, Debug)]
pub(super) enum Edit {
    Write(usize),
    /// Overwrites the start of an existing file in place with the body's first line
    /// (no truncate).
    Patch(usize),
    /// A save by temp file (`t<f>`) renamed over the file.
    Save(usize),
    Delete(usize),
    Rename(usize, usize),
}

impl Node {
    pub(super) fn write(&self, f: usize, body: &str) {
        self.write_bytes(f, body.as_bytes());
    }

    pub(super) fn write_bytes(&self, f: usize, body: &[u8]) {
        self.write_named(&format!("f{f}"), body);
    }

    /// Writes `body` to the file `name` (made if missing, else truncated and rewritten).
    fn write_named(&self, name: &str, body: &[u8]) {
        let (path, full) = (rp(name), self.data.join(name));
        let j = &self.journal;
        let ino = match std::fs::metadata(&full) {
            Ok(md) => md.ino(),
            Err(_) => {
                std::fs::File::create(&full).unwrap();
                let ino = std::fs::metadata(&full).unwrap().ino();
                j.record_meta(MetaOp::Create {
                    path: path.clone(),
                    file: ino,
                    mode: 0o644,
                })
                .unwrap();
                ino
            }
        };
        j.track(ino, &path).unwrap();
        j.record_size(ino, body.len() as u64).unwrap();
        j.record_write(ino, 0, body.len() as u64).unwrap();
        std::fs::write(&full, body).unwrap();
        j.write_done(ino);
        if let Some(q) = &*self.quiet.lock().unwrap() {
            let _ = q.send(ino);
        }
    }

    /// Overwrites `bytes` at `at` of the existing `f<f>` in place (no truncate), as the
    /// mount records it: an update against the version the peer holds.
    pub(super) fn patch(&self, f: usize, at: u64, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        let full = self.data.join(format!("f{f}"));
        let ino = std::fs::metadata(&full).unwrap().ino();
        let end = at + bytes.len() as u64;
        self.journal.track(ino, &rp(&format!("f{f}"))).unwrap();
        self.journal.record_write(ino, at, end).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&full).unwrap();
        file.write_all_at(bytes, at).unwrap();
        self.journal.write_done(ino);
        if let Some(q) = &*self.quiet.lock().unwrap() {
            let _ = q.send(ino);
        }
    }

    pub(super) fn apply(&self, e: &Edit, body: &str) {
        let full = |f: usize| self.data.join(format!("f{f}"));
        match *e {
            Edit::Write(f) => self.write(f, body),
            Edit::Patch(f) if full(f).exists() => {
                let line = body.split_inclusive('\n').next().unwrap_or(body);
                self.patch(f, 0, line.as_bytes())
            }
            Edit::Patch(_) => {}
            Edit::Delete(f) => {
                let Ok(md) = std::fs::metadata(full(f)) else {
                    return;
                };
                std::fs::remove_file(full(f)).unwrap();
                let op = MetaOp::Unlink {
                    path: rp(&format!("f{f}")),
                    file: md.ino(),
                    last_link: true,
                };
                self.journal.record_meta(op).unwrap();
            }
            Edit::Rename(a, b) => {
                if a != b && full(a).exists() {
                    self.rename_named(&format!("f{a}"), &format!("f{b}"));
                }
            }
            Edit::Save(f) => {
                // an editor's save: a temp file, renamed over the original
                self.write_named(&format!("t{f}"), body.as_bytes());
                self.rename_named(&format!("t{f}"), &format!("f{f}"));
            }
        }
    }

    /// Renames `from` to `to`, as the mount records it.
    fn rename_named(&self, from: &str, to: &str) {
        // as `fs` does: a replaced file is recorded as unlinked first
        let replaced = std::fs::metadata(self.data.join(to)).ok().map(|m| m.ino());
        std::fs::rename(self.data.join(from), self.data.join(to)).unwrap();
        if let Some(file) = replaced {
            let op = MetaOp::Unlink {
                path: rp(to),
                file,
                last_link: true,
            };
            self.journal.record_meta(op).unwrap();
        }
        let op = MetaOp::Rename {
            from: rp(from),
            to: rp(to),
            flags: 0,
        };
        self.journal.record_meta(op).unwrap();
    }

    /// File name → content, of the folder.
    pub(super) fn tree(&self) -> BTreeMap<String, String> {
        files_under(&self.data)
    }

    /// File name (with its time suffix) → content, of the version archive.
    pub(super) fn archived(&self) -> BTreeMap<String, String> {
        files_under(&self.versions)
    }

    /// Every content kept anywhere on this node: the folder and the archive.
    pub(super) fn everything(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tree().into_values().collect();
        v.extend(files_under(&self.versions).into_values());
        v
    }
}

fn files_under(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            for (k, v) in files_under(&p) {
                out.insert(format!("{}/{k}", e.file_name().to_string_lossy()), v);
            }
        } else {
            out.insert(
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap_or_default(),
            );
        }
    }
    out
}

pub(super) async fn settled(nodes: &[Arc<Node>], secs: u64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        let idle = nodes.iter().all(|n| {
            let s = n.journal.snapshot();
            s.files.is_empty() && s.meta.is_empty()
        });
        let t0 = nodes[0].tree();
        if idle && nodes.iter().all(|n| n.tree() == t0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

pub(super) fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let e = prop_oneof![
        3 => (0..FILES).prop_map(Edit::Write),
        2 => (0..FILES).prop_map(Edit::Patch),
        2 => (0..FILES).prop_map(Edit::Save),
        1 => (0..FILES).prop_map(Edit::Delete),
        1 => (0..FILES, 0..FILES).prop_map(|(a, b)| Edit::Rename(a, b)),
    ];
    proptest::collection::vec(e, 1..6)
}

/// Runs one scenario: a shared start (every file), a partition with `scripts[i]` on
/// node i, a heal.
fn scenario(scripts: Vec<Vec<Edit>>) -> Result<(), TestCaseError> {
    scenario_from(&[true; FILES], scripts)
}

/// Paused time: the clock only moves when every task waits on a timer (blocking work
/// in `spawn_blocking` holds it), so timeouts fire only when truly idle.
pub(super) fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Runs one scenario from a start holding the files `base[i]` says.
fn scenario_from(base: &[bool], scripts: Vec<Vec<Edit>>) -> Result<(), TestCaseError> {
    let rt = paused_runtime();
    rt.block_on(async move {
        let nodes: Vec<Arc<Node>> = (0..scripts.len()).map(|_| node()).collect();
        let up = Arc::new(AtomicBool::new(true));
        let mut links = Vec::new();
        let mut tasks = Vec::new();
        for (a, b) in [(0, 1), (1, 0)] {
            let (l, t) = connect(&nodes[a], &nodes[b], &up);
            links.push(l);
            tasks.push(t);
        }
        for f in (0..FILES).filter(|&f| base[f]) {
            nodes[0].write(f, &format!("base {f}\n"));
        }
        prop_assert!(settled(&nodes, 30).await, "the base converges");
        links.iter().for_each(|l| l.cut());
        let mut heads = Vec::new();
        for (n, script) in scripts.iter().enumerate() {
            for (i, e) in script.iter().enumerate() {
                nodes[n].apply(e, &format!("node {n} edit {i}\n"));
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            // the versions this node wrote during the partition and still held
            heads.extend(
                nodes[n]
                    .tree()
                    .into_values()
                    .filter(|v| v.starts_with("node ")),
            );
        }
        up.store(true, Ordering::SeqCst);
        let ok = settled(&nodes, 60).await;
        let trees: Vec<_> = nodes.iter().map(|n| n.tree()).collect();
        let queued: Vec<_> = nodes
            .iter()
            .map(|n| {
                let s = n.journal.snapshot();
                let files: Vec<_> = s.files.values().map(|e| e.path.to_string()).collect();
                (files, s.meta)
            })
            .collect();
        prop_assert!(
            ok,
            "after the heal the trees converge: {trees:#?}, queued {queued:?}"
        );
        for h in &heads {
            prop_assert!(
                nodes.iter().all(|n| n.everything().contains(h)),
                "version {h:?} is missing on a node: {trees:#?}"
            );
        }
        let heard = |n: &Node| n.receiver.stats.received.load(Ordering::Relaxed);
        // a sender idle when its link was cut notices at its next ping (at most 1.5 x
        // PING_EVERY), then redials after a backoff of at most 10 s
        tokio::time::sleep(super::PING_EVERY * 3 / 2 + Duration::from_secs(15)).await;
        let before: Vec<u64> = nodes.iter().map(|n| heard(n)).collect();
        tokio::time::sleep(Duration::from_secs(30)).await;
        let after: Vec<u64> = nodes.iter().map(|n| heard(n)).collect();
        prop_assert_eq!(before, after, "no message but keepalives once settled");
        for t in tasks {
            t.abort();
        }
        links.iter().for_each(|l| l.cut());
        Ok(())
    })
}

/// Cases per run: 64 (a few seconds); `SIM_CASES=2000` for a long hunt.
pub(super) fn cases() -> u32 {
    std::env::var("SIM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 200, failure_persistence: None, ..ProptestConfig::default() })]

    // Shrunk failures it found are kept as the regressions below.
    #[test]
    fn two_nodes_converge_after_a_partition_losing_nothing(
        base in proptest::collection::vec(any::<bool>(), FILES),
        a in edits(),
        b in edits(),
    ) {
        scenario_from(&base, vec![a, b])?;
    }
}

/// Logs at debug level into the test's output (shown when a regression fails).
pub(super) fn debug_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("syncfs=debug")
        .with_test_writer()
        .try_init();
}

/// Shrunk failures, kept.
#[test]
fn regression_concurrent_writes_of_one_file() {
    debug_logs();
    scenario(vec![
        vec![Edit::Write(2), Edit::Write(3)],
        vec![Edit::Write(2)],
    ])
    .unwrap();
}

#[test]
fn regression_edit_against_delete_and_rename_over() {
    scenario(vec![
        vec![Edit::Write(2); 5],
        vec![Edit::Delete(2), Edit::Rename(0, 2)],
    ])
    .unwrap();
}

#[test]
fn regression_edit_against_delete() {
    scenario(vec![
        vec![Edit::Write(3), Edit::Write(2)],
        vec![Edit::Delete(2)],
    ])
    .unwrap();
}

#[test]
fn regression_delete_against_delete_and_recreate() {
    debug_logs();
    scenario(vec![
        vec![Edit::Delete(2), Edit::Delete(3)],
        vec![Edit::Delete(2), Edit::Write(2), Edit::Write(3)],
    ])
    .unwrap();
}

#[test]
fn regression_edit_against_delete_then_rename_over() {
    debug_logs();
    scenario(vec![
        vec![Edit::Write(3)],
        vec![Edit::Delete(0), Edit::Rename(3, 0)],
    ])
    .unwrap();
}

#[test]
fn regression_edit_against_edit_then_rename_over_a_deleted_name() {
    debug_logs();
    scenario(vec![
        vec![Edit::Write(2)],
        vec![Edit::Delete(1), Edit::Write(2), Edit::Rename(2, 1)],
    ])
    .unwrap();
}

#[test]
fn regression_recreate_against_edit_and_delete() {
    scenario(vec![
        vec![Edit::Delete(1), Edit::Write(1)],
        vec![Edit::Write(1), Edit::Delete(1)],
    ])
    .unwrap();
}

#[test]
fn regression_delete_against_a_chain_of_renames() {
    scenario(vec![
        vec![Edit::Delete(0)],
        vec![Edit::Delete(2), Edit::Rename(1, 2), Edit::Rename(0, 1)],
    ])
    .unwrap();
}

#[test]
fn regression_rename_from_a_name_deleted_on_the_peer() {
    scenario(vec![
        vec![Edit::Delete(1), Edit::Rename(3, 1)],
        vec![Edit::Delete(3)],
    ])
    .unwrap();
}

#[test]
fn regression_rename_over_against_edit_delete_recreate() {
    debug_logs();
    scenario(vec![
        vec![Edit::Delete(0), Edit::Rename(2, 0)],
        vec![Edit::Write(2), Edit::Delete(0), Edit::Write(0)],
    ])
    .unwrap();
}

#[test]
fn regression_rename_over_from_a_name_deleted_on_the_peer() {
    scenario(vec![
        vec![Edit::Delete(2)],
        vec![Edit::Delete(3), Edit::Rename(2, 3), Edit::Write(2)],
    ])
    .unwrap();
}

#[test]
fn regression_quiet_after_a_new_file() {
    scenario_from(
        &[false, false, false, true, false],
        vec![vec![Edit::Write(0)], vec![Edit::Delete(0)]],
    )
    .unwrap();
}

#[test]
fn regression_new_file_against_new_file_renamed_over_it() {
    scenario_from(
        &[false; FILES],
        vec![
            vec![Edit::Write(4)],
            vec![Edit::Write(3), Edit::Rename(3, 4)],
        ],
    )
    .unwrap();
}

#[test]
fn regression_new_file_renamed_onto_a_name_the_peer_renamed_over() {
    use Edit::*;
    debug_logs();
    scenario_from(
        &[false, false, false, true, true],
        vec![
            vec![Rename(3, 1), Write(1), Rename(4, 1), Delete(4)],
            vec![Write(0), Write(3), Rename(0, 1), Write(1), Delete(3)],
        ],
    )
    .unwrap();
}

#[test]
fn regression_edit_and_new_file_against_a_rename_onto_the_new_name() {
    use Edit::*;
    debug_logs();
    scenario_from(
        &[false, true, false, false, false],
        vec![vec![Write(4), Write(1)], vec![Rename(1, 4)]],
    )
    .unwrap();
}

/// Adopted trees of `dirs` directories of `files` files each, those `edited(d, f)`
/// different on the second node: the pair converges to the second's versions
/// (written later), with the first's in its archive.
fn pair_trees_differing(dirs: usize, files: usize, edited: fn(usize, usize) -> bool) {
    let tree = move |second: bool| {
        move |data: &Path| {
            for d in 0..dirs {
                std::fs::create_dir(data.join(format!("d{d}"))).unwrap();
                for f in 0..files {
                    let text = match second && edited(d, f) {
                        true => format!("edited {d}/{f}\n"),
                        false => format!("same {d}/{f}\n"),
                    };
                    std::fs::write(data.join(format!("d{d}/f{f}")), text).unwrap();
                }
            }
        }
    };
    paused_runtime().block_on(async {
        let nodes = [node_with(&tree(false)), node_with(&tree(true))];
        let up = Arc::new(AtomicBool::new(true));
        let links: Vec<_> = [(0, 1), (1, 0)]
            .map(|(a, b)| connect(&nodes[a], &nodes[b], &up))
            .into();
        assert!(settled(&nodes, 120).await, "the pair converges");
        let t0 = nodes[0].tree();
        for (d, f) in (0..dirs).flat_map(|d| (0..files).map(move |f| (d, f))) {
            let text = match edited(d, f) {
                true => format!("edited {d}/{f}\n"),
                false => format!("same {d}/{f}\n"),
            };
            assert_eq!(t0.get(&format!("d{d}/f{f}")), Some(&text));
        }
        assert_eq!(t0.len(), dirs * files, "nothing more, nothing less");
        for (l, t) in links {
            t.abort();
            l.cut();
        }
    });
}

#[test]
fn a_summary_sketch_finds_the_entries_that_differ() {
    // 30 directories of 40 files, 2 differ in each: the digests of 1,200 entries go
    // as a sketch (about 200 cells of 10 bytes, against 7,200 bytes listed)
    pair_trees_differing(30, 40, |_, f| f < 2);
}

#[test]
fn a_summary_sketch_that_does_not_peel_is_asked_for_again_as_a_list() {
    // one directory of 400 files, 150 of them different: the sketch, sized by
    // directories, cannot hold 300 differences
    pair_trees_differing(1, 400, |_, f| f < 150);
    // 30 directories of 60 files: all of the first differ, one file of each of the
    // next 9, and 20 are the same: the 10 that differ are asked for again
    pair_trees_differing(30, 60, |d, f| d == 0 || (d < 10 && f == 0));
}

#[test]
fn a_directory_sketch_finds_the_one_directory_that_differs() {
    // 5,000 directories, one differs: the summary goes as one sketch (865 cells of
    // 13 bytes, against 45,000 bytes listed)
    pair_trees_differing(5_000, 1, |d, _| d == 4_999);
}

#[test]
fn a_directory_sketch_that_does_not_peel_falls_back_to_a_summary_in_parts() {
    // 625 of 5,000 directories differ: the sketch cannot peel, and the summary goes
    // in two parts of up to 4,096 directories (our side reads its own directory
    // digests once for all parts)
    pair_trees_differing(5_000, 1, |d, _| d % 8 == 0);
}
