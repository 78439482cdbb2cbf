//! The cloneable command handle to the network event loop.

use std::sync::{Arc, Mutex};

use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use libp2p_stream::{Control, IncomingStreams};
use tokio::sync::{mpsc, oneshot};

use super::NetError;

/// Reply channel for a command.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, NetError>>;

/// Commands sent from [`NetHandle`] to the event loop.
pub(crate) enum Command {
    /// Reply once at least one listen address is bound.
    WaitListening(Reply<Vec<Multiaddr>>),
    /// Reply once connected to the peer (dialing if needed).
    EnsureConnected { peer: PeerId, reply: Reply<()> },
    /// Reply with the currently connected peers.
    ConnectedPeers(Reply<Vec<PeerId>>),
    /// Allowlist, dial and keep connected a peer (`addr` without `/p2p`).
    AddPeer {
        peer: PeerId,
        addr: Multiaddr,
        reply: Reply<()>,
    },
    /// Close every connection to the peer (a dead link); it is redialed as usual.
    Disconnect(PeerId),
    /// Stop the event loop (closes all connections).
    Shutdown,
}

/// Cloneable handle to the network layer.
///
/// All methods are cheap; the work happens in the event loop spawned by
/// [`start`](super::start).
#[derive(Clone)]
pub struct NetHandle {
    commands: mpsc::Sender<Command>,
    control: Control,
    local_peer_id: PeerId,
    listen_addrs: Arc<Mutex<Vec<Multiaddr>>>,
}

impl NetHandle {
    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        control: Control,
        local_peer_id: PeerId,
        listen_addrs: Arc<Mutex<Vec<Multiaddr>>>,
    ) -> Self {
        Self {
            commands,
            control,
            local_peer_id,
            listen_addrs,
        }
    }

    /// Our own PeerId.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Addresses we are currently listening on (may be empty right after
    /// [`start`](super::start); see [`NetHandle::wait_listening`]).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        lock(&self.listen_addrs).clone()
    }

    /// Waits until at least one listen address is bound and returns the
    /// bound addresses (with the real port when listening on port 0).
    pub async fn wait_listening(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.request(Command::WaitListening).await
    }

    /// Peers we currently hold at least one connection to.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, NetError> {
        self.request(Command::ConnectedPeers).await
    }

    /// Adds a peer (`…/p2p/<PeerId>`): allowlists it, dials it and keeps it
    /// connected with reconnect backoff.
    pub async fn add_peer(&self, addr: Multiaddr) -> Result<(), NetError> {
        let (peer, addr) = super::split_peer_addr(&addr)?;
        self.request(|reply| Command::AddPeer { peer, addr, reply })
            .await
    }

    /// Opens a byte stream to `peer` speaking `protocol` (e.g.
    /// `"/syncfs/sync/1"`), dialing the peer first if not connected.
    ///
    /// A dial may take as long as the OS TCP connect timeout; wrap the call
    /// in `tokio::time::timeout` for a tighter bound.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: &'static str,
    ) -> Result<Stream, NetError> {
        let protocol = parse_protocol(protocol)?;
        self.request(|reply| Command::EnsureConnected { peer, reply })
            .await?;
        self.control
            .clone()
            .open_stream(peer, protocol)
            .await
            .map_err(|source| NetError::OpenStream { peer, source })
    }

    /// Starts accepting inbound streams for `protocol`.
    ///
    /// The returned [`IncomingStreams`] yields `(PeerId, Stream)` and must be
    /// polled promptly and continuously: inbound streams that arrive while
    /// the previous one has not been taken yet are dropped by libp2p.
    /// Dropping it unregisters the protocol (remote opens then fail).
    /// Only one acceptor per protocol may exist at a time.
    pub fn accept(&self, protocol: &'static str) -> Result<IncomingStreams, NetError> {
        let proto = parse_protocol(protocol)?;
        self.control
            .clone()
            .accept(proto)
            .map_err(|_| NetError::AlreadyAccepting(protocol.to_string()))
    }

    /// Closes the connections to `peer` (say, one found dead: a half-open TCP
    /// connection may look alive for many minutes); the peer is redialed as usual.
    pub async fn disconnect(&self, peer: PeerId) {
        let _ = self.commands.send(Command::Disconnect(peer)).await;
    }

    /// Stops the event loop, closing all connections. Other clones of this
    /// handle then fail with [`NetError::Closed`].
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
    }

    /// Sends a command built around a fresh reply channel and awaits the reply.
    async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetError::Closed)?;
        rx.await.map_err(|_| NetError::Closed)?
    }
}

impl std::fmt::Debug for NetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetHandle")
            .field("local_peer_id", &self.local_peer_id)
            .finish_non_exhaustive()
    }
}

fn parse_protocol(protocol: &'static str) -> Result<StreamProtocol, NetError> {
    StreamProtocol::try_from_owned(protocol.to_string())
        .map_err(|_| NetError::InvalidProtocol(protocol.to_string()))
}

/// Locks a mutex, ignoring poisoning (the data is a plain address list).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
