//! Command-line interface: argument definitions (clap) and the commands they run.

use crate::journal::{format_snapshot, Journal};
use crate::node::{self, MountArgs};
use crate::store::Store;
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

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
        /// Listen address (multiaddr) instead of the default /ip4/0.0.0.0/tcp/4801.
        #[arg(long)]
        listen: Vec<String>,
        /// A peer to sync with: multiaddr ending in /p2p/<PeerId> (repeatable).
        #[arg(long)]
        peer: Vec<String>,
    },
    /// Add a peer (multiaddr ending in /p2p/<PeerId>) to the store's config.
    AddPeer {
        /// The store.
        store: PathBuf,
        /// The peer's multiaddr.
        addr: String,
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
        /// An extra peer for this run only (repeatable).
        #[arg(long)]
        peer: Vec<String>,
        /// Listen addresses for this run, replacing the config's (repeatable).
        #[arg(long)]
        listen: Vec<String>,
    },
    /// Show a running mount's progress (queued, in flight, sent, peer link, conflicts,
    /// on-disk overhead), or the pending journal when the store is not mounted.
    Status {
        /// The store.
        store: PathBuf,
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
        Command::Init {
            store,
            join,
            listen,
            peer,
        } => init(&store, join.as_deref(), listen, peer),
        Command::AddPeer { store, addr } => add_peer(&store, &addr),
        Command::Id { store } => id(&store),
        Command::Mount {
            store,
            mountpoint,
            peer,
            listen,
        } => mount_cmd(
            &store,
            &mountpoint,
            MountArgs {
                peers: peer,
                listen,
            },
        ),
        Command::Journal { store } => journal(&store),
        Command::Status { store } => status(&store),
    }
}

fn init(dir: &Path, join: Option<&str>, listen: Vec<String>, peers: Vec<String>) -> Result<()> {
    for a in listen.iter().chain(&peers) {
        check_addr(a)?;
    }
    let (store, peer, mut cfg) = Store::init(dir, join)?;
    if !listen.is_empty() || !peers.is_empty() {
        if !listen.is_empty() {
            cfg.listen = listen;
        }
        cfg.peers = peers;
        store.save_config(&cfg)?;
    }
    println!("initialised store {}", store.dir.display());
    println!("peer id:   {peer}");
    println!("folder id: {}", cfg.folder_id);
    println!("config:    {}", store.config_file().display());
    Ok(())
}

fn check_addr(a: &str) -> Result<libp2p::Multiaddr> {
    a.parse().with_context(|| {
        format!("{a:?} is not a multiaddr (e.g. /ip4/192.0.2.7/tcp/4801/p2p/12D3KooW...)")
    })
}

fn add_peer(dir: &Path, addr: &str) -> Result<()> {
    let a = check_addr(addr)?;
    anyhow::ensure!(
        node::peer_of(&a).is_some(),
        "{addr} must end in /p2p/<PeerId>"
    );
    let (store, mut cfg) = Store::open(dir)?;
    if !cfg.peers.iter().any(|p| p == addr) {
        cfg.peers.push(addr.to_string());
        store.save_config(&cfg)?;
    }
    println!("peers: {}", cfg.peers.join(" "));
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
        format!(
            "opening journal in {} (is the store mounted by another process?)",
            store.journal().display()
        )
    })
}

fn journal(dir: &Path) -> Result<()> {
    let (store, _) = Store::open(dir)?;
    let j = open_journal(&store)?;
    print!("{}", format_snapshot(&j.snapshot()));
    j.close()?;
    Ok(())
}

fn status(dir: &Path) -> Result<()> {
    let (store, _) = Store::open(dir)?;
    if let Some(s) = crate::control::query(&store.control_socket()) {
        print!("{}", crate::control::format(&s));
        return Ok(());
    }
    println!("not mounted");
    let o = crate::control::Overhead::measure(&store.dir);
    println!("overhead:    {}", crate::control::size(o.total()));
    journal(dir)
}

fn mount_cmd(dir: &Path, mountpoint: &Path, args: MountArgs) -> Result<()> {
    node::run(dir, mountpoint, args)
}
