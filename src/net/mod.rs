//! Network layer: the only module that names libp2p.
//!
//! It owns a libp2p [`Swarm`](libp2p::Swarm) (TCP + Noise + Yamux) inside an
//! event-loop task and exposes three things, following the rust-libp2p
//! file-sharing example:
//!
//! - [`NetHandle`]: a cheap, cloneable handle that sends commands to the event
//!   loop and opens / accepts byte streams ([`libp2p::Stream`]).
//! - the event loop (spawned by [`start`]): owns the swarm, keeps configured
//!   peers connected (exponential backoff reconnect), enforces the PeerId
//!   allowlist and optionally dials allowlisted peers found via mDNS.
//! - [`NetEvent`]s delivered over a `tokio::sync::mpsc` channel.
//!
//! The layer knows nothing about sync logic or wire messages: it deals in
//! [`PeerId`]s and byte streams identified by a caller-chosen protocol name.
//!
//! Security: only peers whose [`PeerId`] is on the allowlist may hold a
//! connection. The check runs after the Noise handshake has proven the remote
//! PeerId, so a refused peer never gets a stream.

mod acks;
mod backoff;
mod behaviour;
mod coalesce;
mod event_loop;
mod handle;
mod pings;
#[cfg(test)]
mod tests;

use std::time::Duration;

/// The identity and address types the rest of the crate names: only `net` names libp2p.
pub use libp2p::identity::Keypair;
pub use libp2p::multiaddr::Protocol;
pub use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

pub use handle::NetHandle;
pub use libp2p_stream::IncomingStreams;

/// Capacity of the [`NetEvent`] channel returned by [`start`].
pub const EVENT_CHANNEL_CAPACITY: usize = 256;

/// First delay before redialing a configured peer; doubles on each failure.
pub const RECONNECT_INITIAL: Duration = Duration::from_millis(500);

/// Upper bound of the reconnect delay.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// The cap on each TCP connection's retransmission timeout, in milliseconds. By
/// default the kernel doubles it at each loss up to 120 s, so after a few cuts a few
/// seconds apart a restored link could stay silent for tens of seconds before the next
/// retransmission; capped, lost data goes again within 2 s of the link coming back.
/// Set where the kernel has `TCP_RTO_MAX_MS` (Linux 6.15); elsewhere the sync's own
/// silence limits notice the link and redial.
pub const RTO_MAX_MS: u32 = 2_000;

/// How long an idle connection (no open streams) is kept alive.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3600);

/// Configuration of the network layer.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Our long-term identity; its PeerId is what peers allowlist.
    pub keypair: Keypair,
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/4001`.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial and keep connected; each address must end with
    /// `/p2p/<PeerId>`. Their PeerIds are added to the allowlist.
    pub peers: Vec<Multiaddr>,
    /// PeerIds allowed to connect (in addition to those in `peers`).
    pub allow: Vec<PeerId>,
    /// Enable mDNS discovery on the local network (only allowlisted peers
    /// are dialed).
    pub mdns: bool,
}

/// Something that happened in the network layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// First connection to this peer established (remote address given).
    PeerConnected(PeerId, Multiaddr),
    /// Last connection to this peer closed.
    PeerDisconnected(PeerId),
    /// A peer not on the allowlist tried to connect and was refused.
    Refused(PeerId),
    /// We are now listening on this (actual, bound) address.
    Listening(Multiaddr),
}

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Building the Noise transport failed.
    #[error("failed to set up noise transport: {0}")]
    Noise(#[from] libp2p::noise::Error),
    /// Creating the mDNS behaviour failed.
    #[error("failed to start mDNS: {0}")]
    Mdns(#[source] std::io::Error),
    /// Listening on an address failed.
    #[error("failed to listen on {addr}: {source}")]
    Listen {
        /// The address we tried to listen on.
        addr: Multiaddr,
        /// The underlying transport error.
        #[source]
        source: libp2p::TransportError<std::io::Error>,
    },
    /// A peer address does not end with `/p2p/<PeerId>`.
    #[error("peer address {0} does not end with /p2p/<PeerId>")]
    MissingPeerId(Multiaddr),
    /// A stream protocol name is invalid (must start with `/`).
    #[error("invalid stream protocol name {0:?}")]
    InvalidProtocol(String),
    /// Someone is already accepting streams for this protocol.
    #[error("already accepting streams for protocol {0}")]
    AlreadyAccepting(String),
    /// Connecting to a peer failed.
    #[error("failed to connect to {peer}: {reason}")]
    Dial {
        /// The peer we tried to reach.
        peer: PeerId,
        /// Human-readable cause from libp2p.
        reason: String,
    },
    /// Opening a stream on an established connection failed.
    #[error("failed to open stream to {peer}: {source}")]
    OpenStream {
        /// The peer.
        peer: PeerId,
        /// The underlying error.
        #[source]
        source: libp2p_stream::OpenStreamError,
    },
    /// No listen address is configured, so we will never be listening.
    #[error("no listen address configured")]
    NotListening,
    /// The event loop has stopped (shut down or all handles dropped).
    #[error("network event loop has stopped")]
    Closed,
}

/// Starts the network layer on the current tokio runtime.
///
/// Builds the swarm, starts listening on `cfg.listen`, dials `cfg.peers` and
/// spawns the event loop. Returns the command handle and the event receiver;
/// the receiver must be drained promptly (the event loop waits when it is
/// full). The loop stops when [`NetHandle::shutdown`] is called or every
/// handle is dropped.
pub async fn start(cfg: NetConfig) -> Result<(NetHandle, mpsc::Receiver<NetEvent>), NetError> {
    let peers = cfg
        .peers
        .iter()
        .map(split_peer_addr)
        .collect::<Result<Vec<_>, _>>()?;
    let mut swarm = behaviour::build_swarm(&cfg, peers.iter().map(|(p, _)| *p))?;
    for addr in &cfg.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|source| NetError::Listen {
                addr: addr.clone(),
                source,
            })?;
    }
    let control = swarm.behaviour().stream.new_control();
    let local_peer_id = *swarm.local_peer_id();
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (event_tx, event_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let mut event_loop =
        event_loop::EventLoop::new(swarm, cmd_rx, event_tx, !cfg.listen.is_empty());
    for (peer, addr) in peers {
        event_loop.add_target(peer, addr);
    }
    let listen_addrs = event_loop.listen_addrs();
    tokio::spawn(event_loop.run());
    let handle = NetHandle::new(cmd_tx, control, local_peer_id, listen_addrs);
    Ok((handle, event_rx))
}

/// Splits `/…/p2p/<PeerId>` into the PeerId and the address without it.
fn split_peer_addr(addr: &Multiaddr) -> Result<(PeerId, Multiaddr), NetError> {
    let mut base = addr.clone();
    match base.pop() {
        Some(Protocol::P2p(peer)) => Ok((peer, base)),
        _ => Err(NetError::MissingPeerId(addr.clone())),
    }
}
