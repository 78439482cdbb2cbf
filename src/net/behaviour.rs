//! The combined libp2p behaviour and swarm construction.

use libp2p::allow_block_list::{self, AllowedPeers};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use std::os::fd::AsRawFd;

use super::acks::Acks;
use libp2p::{connection_limits, mdns, noise, tcp, PeerId, Swarm, SwarmBuilder};

use libp2p::core::upgrade::Version;
use libp2p::Transport;

use super::coalesce::{Held, LazyYamux};
use super::{NetConfig, NetError, IDLE_CONNECTION_TIMEOUT, RTO_MAX_MS};

/// Allowlist + generic streams + optional mDNS.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Refuses connections from PeerIds not on the allowlist.
    pub(crate) allow: allow_block_list::Behaviour<AllowedPeers>,
    /// Caller-named byte streams.
    pub(crate) stream: libp2p_stream::Behaviour,
    /// Local-network discovery, when enabled.
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    /// Caps on handshakes in progress and connections per peer: a flood of half-made
    /// connections (before the PeerId is even known) cannot exhaust us.
    pub(crate) limits: connection_limits::Behaviour,
}

/// Incoming handshakes in progress, at most.
pub(crate) const MAX_PENDING_INCOMING: u32 = 16;
/// Established connections per peer, at most.
pub(crate) const MAX_PER_PEER: u32 = 4;

fn limits() -> connection_limits::Behaviour {
    let l = connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
        .with_max_pending_outgoing(Some(MAX_PENDING_INCOMING))
        .with_max_established_per_peer(Some(MAX_PER_PEER));
    connection_limits::Behaviour::new(l)
}

/// Builds the swarm; `extra_allowed` (the configured peers) join `cfg.allow`.
pub(crate) fn build_swarm(
    cfg: &NetConfig,
    extra_allowed: impl Iterator<Item = PeerId>,
) -> Result<Swarm<Behaviour>, NetError> {
    let behaviour = new_behaviour(cfg, extra_allowed)?;
    let noise = noise::Config::new(&cfg.keypair)?;
    let swarm = SwarmBuilder::with_existing_identity(cfg.keypair.clone())
        .with_tokio()
        .with_other_transport(|_| {
            tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                .map(|s, _| capped(s))
                .upgrade(Version::V1Lazy)
                .authenticate(noise)
                .multiplex(LazyYamux::default())
        })
        .expect("infallible transport constructor")
        .with_behaviour(|_| behaviour)
        .expect("infallible behaviour constructor")
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    Ok(swarm)
}

/// A new TCP connection (dialed or accepted), its retransmission timeout capped at
/// [`RTO_MAX_MS`] where the kernel allows it, and out of quick-ack mode (see
/// [`super::acks`]): a connection starts by acknowledging every segment alone, and its
/// first seconds are small messages answered at once (the handshakes, the index
/// exchange), whose replies can carry the ACKs. A one-file pairing: 62-64 packets on
/// loopback, 53-56 without.
fn capped(s: tcp::tokio::TcpStream) -> Held<tcp::tokio::TcpStream> {
    if let Err(e) = crate::sys::set_tcp_rto_max(&s.0, RTO_MAX_MS) {
        tracing::debug!("TCP retransmission timeout left uncapped: {e}");
    }
    if let Err(e) = crate::sys::set_tcp_quickack(&s.0, false) {
        tracing::debug!("TCP quick-ack mode left on: {e}");
    }
    let acks = Acks::new(&s.0.as_raw_fd());
    Held::with_acks(s, acks)
}

fn new_behaviour(
    cfg: &NetConfig,
    extra_allowed: impl Iterator<Item = PeerId>,
) -> Result<Behaviour, NetError> {
    let local = cfg.keypair.public().to_peer_id();
    let mut allow = allow_block_list::Behaviour::<AllowedPeers>::default();
    for peer in cfg.allow.iter().copied().chain(extra_allowed) {
        allow.allow_peer(peer);
    }
    let mdns = if cfg.mdns {
        let m =
            mdns::tokio::Behaviour::new(mdns::Config::default(), local).map_err(NetError::Mdns)?;
        Some(m)
    } else {
        None
    };
    Ok(Behaviour {
        allow,
        stream: libp2p_stream::Behaviour::new(),
        mdns: Toggle::from(mdns),
        limits: limits(),
    })
}
