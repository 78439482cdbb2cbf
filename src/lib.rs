//! syncfs keeps one folder identical on two computers over a slow link.
//!
//! Data flows one way:
//!
//! ```text
//! app ─ FUSE op ─► fs::fuse (thin fuser adapter) ─► fs (passthrough to the backing dir)
//!                                                    │ records ranges + metadata ops
//!                                                    ▼
//!                                   journal (sole owner of sled; write-ahead intent log)
//!                                                    │ quiet files, in order
//!                                                    ▼
//!                                   sync (build updates: ranges, zstd, BLAKE3)
//!                                                    │ wire::Message
//!                                                    ▼
//!                     net (libp2p: Noise, PeerId allowlist) ═══ link ═══ peer's net
//!                                                                          │
//!                                                    peer's apply (verify, stage, replay, ack)
//! ```
//!
//! Modules:
//! - [`path`]: `RelPath`, the validated store-relative path used everywhere.
//! - [`store`]: the on-disk store layout, `init`, identity and config.
//! - [`fs`]: the passthrough filesystem (`fs::fuse` is the only place naming fuser).
//! - [`journal`]: dirty byte ranges and the ordered metadata log, durable under kill -9.
//! - [`wire`]: the versioned wire protocol: messages, encoding, framing.
//! - [`net`]: libp2p transport, allowlist, peer discovery and streams.
//! - [`apply`]: the receiver's applier: stage, verify BLAKE3, replay crash-safely.
//! - [`beneath`]: resolving store-relative paths that can never escape the data root.
//! - [`sync`]: the sender: quiet files and metadata ops from the journal to the peer.
//! - [`hashtree`], [`treecache`]: incremental whole-file BLAKE3, bounded per-file trees.
//! - [`delta`], [`preimage`]: zstd deltas against the old bytes the peer holds.
//! - [`chunks`]: content-defined chunk trees; finding what a peer lacks with no history.
//! - [`iblt`]: invertible Bloom lookup tables (sketches sized by a difference).
//! - [`vv`]: version vectors (which version of an entry descends from which).
//! - [`scan`]: the mount-time scan for changes made while not mounted.
//! - [`versions`]: the archive of replaced and deleted versions.
//! - [`cli`]: command-line definitions and commands.

pub mod apply;
pub mod beneath;
pub mod bwlimit;
pub mod chunks;
pub mod cli;
pub mod config;
pub mod control;
pub mod delta;
pub mod fs;
#[cfg(test)]
pub(crate) mod fuzzing;
pub mod hashtree;
pub mod iblt;
pub mod ignores;
pub mod journal;
pub mod net;
pub mod node;
pub mod path;
pub mod preimage;
pub mod scan;
pub mod store;
pub mod sync;
pub mod sys;
pub mod treecache;
pub mod versions;
pub mod vv;
pub mod watch;
pub mod wire;
