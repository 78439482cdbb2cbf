//! A running node: the mount, the journal, the applier and the syncer wired together.
//! Blocking FUSE threads and the async side meet through channels only: closed files
//! travel to the sender on an unbounded channel; the applier reaches the mount through
//! [`MountHooks`] (hold a file, invalidate the kernel's caches).

use crate::apply::{Applier, ApplyHooks, NoHooks};
use crate::bwlimit::BwLimit;
use crate::config::Config;
use crate::fs::mount::{self, MountHooks, Mounted};
use crate::fs::record::JournalRecorder;
use crate::fs::{FsOptions, PassFs};
use crate::journal::Journal;
use crate::net::{self, NetConfig};
use crate::net::{Multiaddr, PeerId, Protocol};
use crate::preimage::Preimages;
use crate::store::{folder_id_bytes, Store};
use crate::sync::check::Checker;
use crate::sync::link::NetLink;
use crate::sync::{receiver, sender, Stats, SyncConfig};
use crate::versions::Archive;
use anyhow::{anyhow, Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Old bytes kept for deltas, at most (past it, ranges go without a dictionary).
const PREIMAGE_CAP: u64 = 1 << 30;

/// Options of one `mount` beyond the config file.
#[derive(Debug, Default, Clone)]
pub struct MountArgs {
    /// Extra peers (`--peer`).
    pub peers: Vec<String>,
    /// Listen addresses replacing the config's (`--listen`).
    pub listen: Vec<String>,
    /// Bandwidth limit in KiB/s replacing the config's (`--bwlimit`).
    pub bwlimit: Option<u64>,
}

/// The PeerId at the end of a peer multiaddr.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

fn parse_addrs(v: &[String]) -> Result<Vec<Multiaddr>> {
    v.iter()
        .map(|s| s.parse().with_context(|| format!("bad multiaddr {s:?}")))
        .collect()
}

/// Mounts the store and syncs it until SIGINT/SIGTERM or an external unmount.
pub fn run(dir: &Path, mountpoint: &Path, args: MountArgs) -> Result<()> {
    let (store, mut cfg) = Store::open(dir)?;
    store.secure()?;
    cfg.peers.extend(args.peers);
    if !args.listen.is_empty() {
        cfg.listen = args.listen;
    }
    if let Some(kib) = args.bwlimit {
        cfg.bwlimit = kib;
    }
    prepare_process();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(store, cfg, mountpoint))
}

async fn serve(store: Store, cfg: Config, mountpoint: &Path) -> Result<()> {
    let journal = Journal::open(&store.journal()).with_context(|| {
        format!(
            "opening the journal in {} (mounted elsewhere?)",
            store.journal().display()
        )
    })?;
    journal.set_ignores(crate::ignores::Ignores::load(&store.data()));
    let (quiet_tx, quiet_rx) = tokio::sync::mpsc::unbounded_channel();
    let on_closed = Box::new(move |f| {
        let _ = quiet_tx.send(f);
    });
    let rec = Arc::new(JournalRecorder::new(journal.clone(), Some(on_closed)));
    let stats = Arc::new(Stats::default());
    let progress = Arc::new(crate::scan::Progress::default());
    let control = crate::control::serve(
        store.control_socket(),
        crate::control::Sources {
            store: store.dir.clone(),
            mountpoint: mountpoint
                .canonicalize()
                .unwrap_or_else(|_| mountpoint.to_path_buf()),
            stats: stats.clone(),
            journal: journal.clone(),
            scan: progress.clone(),
            bwlimit_kib: cfg.bwlimit,
        },
    );
    // Up before the scan, so that `syncfs status` shows the scan's progress.
    let control = tokio::spawn(async move {
        if let Err(e) = control.await {
            tracing::warn!("control socket: {e}");
        }
    });
    let mut stop = Stop::new()?;
    let scanned = {
        let (st, j, pr, c) = (
            store.clone(),
            journal.clone(),
            progress.clone(),
            cfg.clone(),
        );
        let mut task = tokio::task::spawn_blocking(move || {
            recover_applier(&st, &c, &j)?;
            scan(&st, &j, &pr)
        });
        tokio::select! {
            r = &mut task => r,
            _ = stop.signalled() => {
                tracing::info!("stopping during the scan");
                progress.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = task.await;
                control.abort();
                let _ = std::fs::remove_file(store.control_socket());
                close_journal(journal);
                return Ok(());
            }
        }
    };
    if let Err(e) = scanned
        .map_err(|e| anyhow!("scan task: {e}"))
        .and_then(|r| r)
    {
        control.abort();
        let _ = std::fs::remove_file(store.control_socket());
        return Err(e);
    }
    let tainted = journal
        .snapshot()
        .files
        .into_iter()
        .map(|(f, e)| (f, e.ranges));
    let pre = Arc::new(
        Preimages::open(&store.preimages(), PREIMAGE_CAP, tainted)
            .context("opening the pre-image store")?,
    );
    let mut fs = PassFs::new(&store.data(), rec, FsOptions { writeback: true })
        .map_err(|e| anyhow!("opening backing dir {}: {e}", store.data().display()))?;
    if !cfg.peers.is_empty() {
        fs = fs.with_preimages(pre.clone()); // without a peer nothing is acked: no use
    }
    let fs = Arc::new(fs);
    let opts = mount::MountOpts {
        threads: cfg.threads,
        suid: cfg.allow_suid,
        dev: cfg.allow_dev,
    };
    // From here on files are created for the mount's users, with their modes as given
    // (the kernel already applied the caller's umask).
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let mounted = mount::mount(fs.clone(), mountpoint, opts)
        .with_context(|| format!("mounting {}", mountpoint.display()))?;
    tracing::info!(
        "mounted {} at {}",
        store.data().display(),
        mountpoint.display()
    );
    let hooks = Arc::new(mounted.hooks());
    let mut tasks = start_sync(
        &store,
        &cfg,
        journal.clone(),
        hooks,
        stats.clone(),
        quiet_rx,
        pre,
    )
    .await?;
    tasks.push(control);
    if let Err(e) = store.register_mount(mountpoint) {
        tracing::warn!("cannot record the mount for `syncfs status MOUNTPOINT`: {e}");
    }
    stop.or_unmounted(&mounted).await;
    Store::unregister_mount(mountpoint);
    for t in tasks {
        t.abort();
    }
    let _ = std::fs::remove_file(store.control_socket());
    mounted.unmount().context("unmounting")?;
    close_journal(journal);
    tracing::info!("unmounted {}", mountpoint.display());
    Ok(())
}

/// Closes the journal with a final checkpoint. If that fails (a full disk, say), the
/// intent log still holds every change and the next mount replays it: a warning.
fn close_journal(journal: Journal) {
    if let Err(e) = journal.close() {
        tracing::warn!("final journal checkpoint failed ({e}); the intent log keeps every change for the next mount");
    }
}

/// Finds changes made to the folder while it was not mounted (the first time: indexes
/// what is there), before the mount or the syncer can see it.
fn scan(store: &Store, journal: &Journal, progress: &crate::scan::Progress) -> Result<()> {
    let node = crate::vv::node_id(&store.keypair()?.public().to_peer_id().to_bytes());
    let data = store.data();
    crate::scan::Scan {
        data: &data,
        journal,
        node,
        progress,
    }
    .run()
    .with_context(|| format!("scanning {}", data.display()))
}

async fn start_sync(
    store: &Store,
    cfg: &Config,
    journal: Journal,
    hooks: Arc<MountHooks>,
    stats: Arc<Stats>,
    quiet_rx: tokio::sync::mpsc::UnboundedReceiver<u64>,
    pre: Arc<Preimages>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let applier = Arc::new(open_applier(store, cfg, hooks)?);
    let peers = parse_addrs(&cfg.peers)?;
    if let Some(first) = peers.first() {
        *stats.peer.lock().unwrap() = first.to_string();
    }
    let allow: Vec<PeerId> = peers
        .iter()
        .map(|a| peer_of(a).ok_or_else(|| anyhow!("peer {a} lacks /p2p/<PeerId>")))
        .collect::<Result<_>>()?;
    let net_cfg = NetConfig {
        keypair: store.keypair()?,
        listen: parse_addrs(&cfg.listen)?,
        peers,
        allow: allow.clone(),
        mdns: cfg.mdns,
    };
    let (net, events) = net::start(net_cfg).await.context("starting the network")?;
    tracing::info!("peer id {}", net.local_peer_id());
    let sync_cfg = sync_config(cfg, net.local_peer_id())?;
    let mut tasks = vec![tokio::spawn(log_events(events))];
    let check = checker(store, &journal, applier.clone(), &sync_cfg)?;
    let handoffs = Arc::new(crate::sync::follow::Handoffs::default());
    let r = receiver::Receiver {
        applier,
        cfg: sync_cfg.clone(),
        stats: stats.clone(),
        lock: Arc::default(),
        budgets: Arc::default(),
        check,
        handoffs: handoffs.clone(),
    };
    let net2 = net.clone();
    let limit = BwLimit::new(cfg.bwlimit);
    if limit.kib() > 0 {
        tracing::info!("bandwidth limit: {} KiB/s each way", limit.kib());
    }
    let limit2 = limit.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = receiver::run(net2, r, limit2).await {
            tracing::error!("receiver stopped: {e}");
        }
    }));
    let data = store.data();
    let senders = start_senders(allow, quiet_rx, move |peer| {
        Ok(sender::Sender {
            link: Arc::new(NetLink { net, peer, limit }),
            journal,
            root: Arc::new(open_path_dir(&data)?),
            cfg: sync_cfg,
            stats,
            pre: Some(pre),
            handoffs,
        })
    })?;
    tasks.extend(senders);
    Ok(tasks)
}

fn sync_config(cfg: &Config, me: PeerId) -> Result<SyncConfig> {
    Ok(SyncConfig {
        folder_id: folder_id_bytes(&cfg.folder_id)?,
        node_name: cfg.name.clone(),
        settle: Duration::from_millis(cfg.settle_ms),
        level: 3,
        node: crate::vv::node_id(&me.to_bytes()),
        peer_bytes: me.to_bytes(),
        peer_text: me.to_string(),
    })
}

fn open_applier(store: &Store, cfg: &Config, hooks: Arc<dyn ApplyHooks>) -> Result<Applier> {
    let archive = Archive::open(&store.versions(), cfg.versions_days, cfg.versions_max_mib)
        .context("opening the version archive")?;
    let mut applier = Applier::open_with(&store.data(), &store.staging(), hooks, Some(archive))
        .context("opening the applier")?;
    applier.set_sync_ownership(cfg.sync_ownership);
    applier.set_max_file_size(cfg.max_file_mib.saturating_mul(1 << 20));
    Ok(applier)
}

fn checker(
    store: &Store,
    journal: &Journal,
    applier: Arc<Applier>,
    sync_cfg: &SyncConfig,
) -> Result<Checker> {
    Ok(Checker {
        journal: journal.clone(),
        root: Arc::new(open_path_dir(&store.data())?),
        applier,
        cfg: sync_cfg.clone(),
    })
}

/// Finishes what a kill left half done in the applier (replayed updates, a metadata
/// batch in mid-apply) with no mount up yet, so that the scan after it does not take
/// the peer's changes for local ones.
fn recover_applier(store: &Store, cfg: &Config, journal: &Journal) -> Result<()> {
    let me = store.keypair()?.public().to_peer_id();
    let applier = Arc::new(open_applier(store, cfg, Arc::new(NoHooks))?);
    let check = checker(store, journal, applier, &sync_config(cfg, me)?)?;
    crate::sync::meta::recover(&check)
        .context("finishing the applier's work cut short by the last stop")
}

/// Starts the sender to the first allowed peer (made by `make`), if any.
fn start_senders(
    allow: Vec<PeerId>,
    quiet_rx: tokio::sync::mpsc::UnboundedReceiver<u64>,
    make: impl FnOnce(PeerId) -> Result<sender::Sender>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let Some(&peer) = allow.first() else {
        tracing::warn!("no peer configured: changes are journaled but not sent");
        return Ok(vec![]);
    };
    if allow.len() > 1 {
        tracing::warn!(
            "{} peers configured: sending to the first ({peer}) only",
            allow.len()
        );
    }
    Ok(vec![tokio::spawn(sender::run(make(peer)?, quiet_rx))])
}

/// An `O_PATH` fd of the directory `dir`.
fn open_path_dir(dir: &Path) -> Result<std::os::fd::OwnedFd> {
    let flags = libc::O_PATH | libc::O_DIRECTORY;
    crate::sys::openat(&crate::sys::AtCwd, dir.as_os_str(), flags, 0)
        .map_err(|e| anyhow!("opening {}: errno {}", dir.display(), e.0))
}

async fn log_events(mut events: tokio::sync::mpsc::Receiver<net::NetEvent>) {
    while let Some(e) = events.recv().await {
        tracing::info!("net: {e:?}");
    }
}

/// umask 077 while the store's own files are made (0 once the mount starts), and room
/// for one fd per inode the kernel holds: as root, up to the system's `nr_open` (an
/// untar of 30,000 files through the mount ran out at a hard limit of 20,000).
fn prepare_process() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let most = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    if most > hard && setrlimit(Resource::RLIMIT_NOFILE, most, most).is_ok() {
        return;
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    if hard < 100_000 {
        tracing::warn!(
            "open-file limit is {hard}: the mount holds one fd per file the kernel caches, \
             so a tree of more files than that fails with EMFILE; raise it \
             (ulimit -n, LimitNOFILE=, docker --ulimit nofile=)"
        );
    }
}

/// SIGINT and SIGTERM, caught from the daemon's start (before the scan and the mount),
/// so that a stop asked for at any point is graceful: nothing is left mounted.
struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    fn new() -> Result<Stop> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Stop {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Returns at the first SIGINT/SIGTERM (at once if one came already).
    async fn signalled(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }

    /// Returns on SIGINT/SIGTERM, or when the mount goes away (external umount).
    async fn or_unmounted(&mut self, mounted: &Mounted) {
        loop {
            tokio::select! {
                _ = self.signalled() => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => if mounted.is_finished() { break },
            }
        }
        tracing::info!("stopping");
    }
}
