//! Command-line interface: argument definitions (clap) and the commands they run.

use crate::fs::record::JournalRecorder;
use crate::fs::{mount, FsOptions, PassFs};
use crate::journal::{format_snapshot, Journal};
use crate::store::Store;
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// syncfs: keep one folder identical on two computers over a slow link.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new store: data dir, journal, node identity and config.toml.
    Init {
        /// Directory for the new store (must not exist or be empty).
        store: PathBuf,
        /// Join an existing folder: the peer's folder id (see `syncfs id`).
        #[arg(long)]
        join: Option<String>,
    },
    /// Print this store's PeerId and folder id.
    Id {
        /// The store.
        store: PathBuf,
    },
    /// Mount the store's folder at MOUNTPOINT and sync it with the configured peers.
    Mount {
        /// The store.
        store: PathBuf,
        /// Where to mount the folder.
        mountpoint: PathBuf,
    },
    /// Print the pending dirty ranges and metadata operations (store not mounted).
    Journal {
        /// The store.
        store: PathBuf,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init { store, join } => init(&store, join.as_deref()),
        Command::Id { store } => id(&store),
        Command::Mount { store, mountpoint } => mount_cmd(&store, &mountpoint),
        Command::Journal { store } => journal(&store),
    }
}

fn init(dir: &Path, join: Option<&str>) -> Result<()> {
    let (store, peer, cfg) = Store::init(dir, join)?;
    println!("initialised store {}", store.dir.display());
    println!("peer id:   {peer}");
    println!("folder id: {}", cfg.folder_id);
    println!("config:    {}", store.config_file().display());
    Ok(())
}

fn id(dir: &Path) -> Result<()> {
    let (store, cfg) = Store::open(dir)?;
    println!("peer id:   {}", store.keypair()?.public().to_peer_id());
    println!("folder id: {}", cfg.folder_id);
    Ok(())
}

fn open_journal(store: &Store) -> Result<Journal> {
    Journal::open(&store.journal()).with_context(|| {
        format!("opening journal in {} (is the store mounted by another process?)", store.journal().display())
    })
}

fn journal(dir: &Path) -> Result<()> {
    let (store, _) = Store::open(dir)?;
    let j = open_journal(&store)?;
    print!("{}", format_snapshot(&j.snapshot()));
    j.close()?;
    Ok(())
}

fn mount_cmd(dir: &Path, mountpoint: &Path) -> Result<()> {
    let (store, cfg) = Store::open(dir)?;
    prepare_process();
    let journal = open_journal(&store)?;
    let rec = Arc::new(JournalRecorder::new(journal.clone(), None));
    let fs = PassFs::new(&store.data(), rec, FsOptions { writeback: true })
        .map_err(|e| anyhow::anyhow!("opening backing dir {}: {e}", store.data().display()))?;
    let mounted = mount::mount(Arc::new(fs), mountpoint, cfg.threads)
        .with_context(|| format!("mounting {}", mountpoint.display()))?;
    tracing::info!("mounted {} at {}", store.data().display(), mountpoint.display());
    wait_for_stop(&mounted)?;
    mounted.unmount().context("unmounting")?;
    journal.close()?;
    tracing::info!("unmounted {}", mountpoint.display());
    Ok(())
}

/// umask 0 (the kernel already applied the caller's), and room for one fd per inode.
fn prepare_process() {
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Blocks until SIGINT/SIGTERM, or until the mount goes away (external umount).
fn wait_for_stop(mounted: &mount::Mounted) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if mounted.is_finished() { break; }
                }
            }
        }
        tracing::info!("stopping");
        Ok(())
    })
}
