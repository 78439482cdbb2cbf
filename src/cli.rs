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
        /// Adopt this existing folder in place as the synced folder's content (nothing is
        /// copied or moved). Two computers that already hold the folder start from it.
        #[arg(long)]
        data: Option<PathBuf>,
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
        /// Bandwidth limit for this run, KiB/s each way (0: unlimited), replacing the
        /// config's `bwlimit`.
        #[arg(long, value_name = "KIB")]
        bwlimit: Option<u64>,
    },
    /// Show a running mount's progress (phase, peer link, queued, in flight, sent and
    /// received, rates and ETA, last sync, conflicts, errors, on-disk overhead), or the
    /// pending journal when the store is not mounted.
    Status {
        /// The store, or the mount point of a running mount.
        store: PathBuf,
        /// Print one JSON object (field names documented in README.md).
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw every second until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Print the pending dirty ranges and metadata operations (store not mounted).
    Journal {
        /// The store.
        store: PathBuf,
    },
    /// List the versions kept in the archive (replaced or deleted by a peer's change).
    Versions {
        /// The store.
        store: PathBuf,
        /// Only versions of this path (store-relative) and below.
        path: Option<PathBuf>,
    },
    /// Copy a kept version back: to `--to`, or over PATH in the running mount.
    Restore {
        /// The store.
        store: PathBuf,
        /// The file's store-relative path.
        path: PathBuf,
        /// Which version (as listed by `syncfs versions`); the newest if not given.
        #[arg(long)]
        version: Option<String>,
        /// Where to write it (default: PATH inside the running mount).
        #[arg(long)]
        to: Option<PathBuf>,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init {
            store,
            join,
            data,
            listen,
            peer,
        } => init(&store, join.as_deref(), data.as_deref(), listen, peer),
        Command::AddPeer { store, addr } => add_peer(&store, &addr),
        Command::Id { store } => id(&store),
        Command::Mount {
            store,
            mountpoint,
            peer,
            listen,
            bwlimit,
        } => mount_cmd(
            &store,
            &mountpoint,
            MountArgs {
                peers: peer,
                listen,
                bwlimit,
            },
        ),
        Command::Journal { store } => journal(&store),
        Command::Status { store, json, watch } => {
            let store = Store::resolve(&store); // a mount point names its store
            match (json, watch) {
                (true, _) => status_json(&store),
                (_, true) => crate::watch::run(&store),
                _ => status(&store),
            }
        }
        Command::Versions { store, path } => versions(&store, path.as_deref()),
        Command::Restore {
            store,
            path,
            version,
            to,
        } => restore(&store, &path, version.as_deref(), to),
    }
}

fn init(
    dir: &Path,
    join: Option<&str>,
    data: Option<&Path>,
    listen: Vec<String>,
    peers: Vec<String>,
) -> Result<()> {
    for a in listen.iter().chain(&peers) {
        check_addr(a)?;
    }
    let (store, peer, mut cfg) = Store::init(dir, join, data)?;
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
    println!("folder:    {}", store.data().display());
    println!("config:    {}", store.config_file().display());
    Ok(())
}

fn check_addr(a: &str) -> Result<crate::net::Multiaddr> {
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
    let j = match open_journal(&store) {
        Ok(j) => j,
        Err(e) => match crate::control::query(&store.control_socket()) {
            // a daemon took the store meanwhile (it was starting): it answers now
            Some(s) => {
                print!("{}", crate::control::format(&s));
                return Ok(());
            }
            None => return Err(e),
        },
    };
    println!("not mounted");
    let o = crate::control::Overhead::measure(&store.dir);
    println!("overhead:    {}", crate::control::size(o.total()));
    let copies = crate::control::conflict_copies(&j);
    println!("conflicts:   {} (copies in the folder)", copies.len());
    for c in copies {
        println!("conflict:    {c}");
    }
    print!("{}", format_snapshot(&j.snapshot()));
    j.close()?;
    Ok(())
}

/// The store's `log_level`, for commands that run the daemon (`None`: not one, or
/// the config cannot be read: the command itself reports that).
pub fn log_level(cli: &Cli) -> Option<String> {
    match &cli.command {
        Command::Mount { store, .. } => Store::open(store).ok().map(|(_, c)| c.log_level),
        _ => None,
    }
}

/// `status --json`: the daemon's status object, or `{"mounted": false, ...}`.
fn status_json(dir: &Path) -> Result<()> {
    let (store, _) = Store::open(dir)?;
    if let Some(s) = crate::control::query(&store.control_socket()) {
        let mut v = serde_json::to_value(&s)?;
        v["mounted"] = true.into();
        println!("{v}");
        return Ok(());
    }
    let j = open_journal(&store)?;
    let snap = j.snapshot();
    let v = serde_json::json!({
        "mounted": false,
        "queued": snap.files.len() + snap.meta.len(),
        "queued_ops": snap.meta.len(),
        "conflict_copies": crate::control::conflict_copies(&j),
        "overhead": crate::control::Overhead::measure(&store.dir),
    });
    j.close()?;
    println!("{v}");
    Ok(())
}

fn versions(dir: &Path, path: Option<&Path>) -> Result<()> {
    let (store, _) = Store::open(dir)?;
    let kept = crate::versions::list(&store.versions(), path)
        .with_context(|| format!("reading {}", store.versions().display()))?;
    if kept.is_empty() {
        println!("no versions kept");
    }
    for k in kept {
        println!("{}  {}  {}", k.when, crate::control::size(k.size), k.path);
    }
    Ok(())
}

fn restore(dir: &Path, path: &Path, version: Option<&str>, to: Option<PathBuf>) -> Result<()> {
    let (store, _) = Store::open(dir)?;
    let kept = crate::versions::list(&store.versions(), Some(path))?;
    let pick = kept
        .iter()
        .rfind(|k| Path::new(&k.path) == path && version.is_none_or(|v| k.when == v))
        .with_context(|| {
            format!(
                "no kept version of {} (see `syncfs versions`)",
                path.display()
            )
        })?;
    let dest = match to {
        Some(t) => t,
        None => crate::control::query(&store.control_socket())
            .map(|s| s.mountpoint.join(path))
            .context("the store is not mounted: say where to write the version with --to")?,
    };
    std::fs::copy(&pick.file, &dest)
        .with_context(|| format!("copying {} to {}", pick.file.display(), dest.display()))?;
    println!(
        "restored {} of {} to {}",
        pick.when,
        pick.path,
        dest.display()
    );
    Ok(())
}

fn mount_cmd(dir: &Path, mountpoint: &Path, args: MountArgs) -> Result<()> {
    node::run(dir, mountpoint, args)
}
