//! The event loop task: owns the swarm, executes commands, reconnects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use libp2p::allow_block_list::NotAllowed;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionDenied, DialError, ListenError, SwarmEvent};
use libp2p::{mdns, Multiaddr, PeerId, Swarm};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Duration, Instant};

use super::backoff::Backoff;
use super::behaviour::{Behaviour, BehaviourEvent};
use super::handle::{lock, Command, Reply};
use super::{NetError, NetEvent, RECONNECT_INITIAL, RECONNECT_MAX};

/// A configured peer we keep connected.
struct Target {
    addr: Multiaddr,
    backoff: Backoff,
    /// When to redial; `None` while connected or a dial is in flight.
    next_dial: Option<Instant>,
    /// Until then this side does not dial (see [`DIAL_DEFER`]); the peer's dial is awaited.
    defer_until: Option<Instant>,
}

/// Two peers that start (or lose their link) together would both dial, and each dial
/// makes a whole connection (handshakes, then idle until it times out). The side with
/// the larger PeerId waits this long for the other's dial before dialing itself.
pub(crate) const DIAL_DEFER: Duration = Duration::from_secs(1);

/// A wait for a connection joins a redial due within this long (see
/// `EventLoop::redial_soon`); a later one, it dials at once.
pub(crate) const JOIN_REDIAL: Duration = Duration::from_secs(2);

/// Owns the [`Swarm`] and drives it until shutdown.
pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    listen_addrs: Arc<Mutex<Vec<Multiaddr>>>,
    has_listeners: bool,
    listening_waiters: Vec<Reply<Vec<Multiaddr>>>,
    connect_waiters: HashMap<PeerId, Vec<Reply<()>>>,
    targets: HashMap<PeerId, Target>,
}

impl EventLoop {
    /// A loop over `swarm`; `has_listeners` tells whether listening was requested.
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<NetEvent>,
        has_listeners: bool,
    ) -> Self {
        Self {
            swarm,
            commands,
            events,
            listen_addrs: Arc::default(),
            has_listeners,
            listening_waiters: Vec::new(),
            connect_waiters: HashMap::new(),
            targets: HashMap::new(),
        }
    }

    /// Shared view of the bound listen addresses.
    pub(crate) fn listen_addrs(&self) -> Arc<Mutex<Vec<Multiaddr>>> {
        self.listen_addrs.clone()
    }

    /// Allowlists `peer` and keeps it connected at `addr` (dial is immediate).
    pub(crate) fn add_target(&mut self, peer: PeerId, addr: Multiaddr) {
        self.swarm.behaviour_mut().allow.allow_peer(peer);
        let mut target = Target {
            addr,
            backoff: Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX),
            next_dial: Some(Instant::now()),
            defer_until: None,
        };
        self.defer(peer, &mut target, Instant::now());
        self.targets.insert(peer, target);
    }

    /// If `peer` is the one to dial us, holds our dial of `t` back by [`DIAL_DEFER`]
    /// from `from`.
    fn defer(&self, peer: PeerId, t: &mut Target, from: Instant) {
        if *self.swarm.local_peer_id() > peer {
            let until = from + DIAL_DEFER;
            t.defer_until = Some(until);
            t.next_dial = Some(t.next_dial.map_or(until, |at| at.max(until)));
        }
    }

    /// True while our dial of `peer` is held back (the waiters wait for the dial due).
    fn deferred(&self, peer: &PeerId) -> bool {
        let t = self.targets.get(peer);
        t.and_then(|t| t.defer_until)
            .is_some_and(|u| u > Instant::now())
    }

    /// True when our last dial of `peer` failed and the next is due within
    /// [`JOIN_REDIAL`]: a wait for a connection joins it rather than dialing at once (a
    /// peer that is not up yet would refuse both dials: two SYNs and two resets).
    fn redial_soon(&self, peer: &PeerId) -> bool {
        let t = self.targets.get(peer);
        t.and_then(|t| t.next_dial)
            .is_some_and(|at| at <= Instant::now() + JOIN_REDIAL)
    }

    /// Runs until shutdown or until every [`NetHandle`](super::NetHandle) is dropped.
    pub(crate) async fn run(mut self) {
        loop {
            let wake = self.next_wake();
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event).await,
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown) | None => break,
                    Some(command) => self.on_command(command),
                },
                _ = sleep_until(wake) => self.redial_due(),
            }
        }
        tracing::debug!("network event loop stopped");
    }

    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        self.targets
            .values()
            .filter_map(|t| t.next_dial)
            .min()
            .unwrap_or(far)
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::WaitListening(reply) => self.wait_listening(reply),
            Command::EnsureConnected { peer, reply } => self.ensure_connected(peer, reply),
            Command::ConnectedPeers(reply) => {
                let peers = self.swarm.connected_peers().copied().collect();
                let _ = reply.send(Ok(peers));
            }
            Command::AddPeer { peer, addr, reply } => {
                self.add_target(peer, addr);
                self.redial_due();
                let _ = reply.send(Ok(()));
            }
            Command::Disconnect(peer) => {
                tracing::info!(%peer, "closing the connection to a silent peer");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Shutdown => {}
        }
    }

    fn wait_listening(&mut self, reply: Reply<Vec<Multiaddr>>) {
        let addrs = lock(&self.listen_addrs).clone();
        if !addrs.is_empty() {
            let _ = reply.send(Ok(addrs));
        } else if !self.has_listeners {
            let _ = reply.send(Err(NetError::NotListening));
        } else {
            self.listening_waiters.push(reply);
        }
    }

    fn ensure_connected(&mut self, peer: PeerId, reply: Reply<()>) {
        if self.swarm.is_connected(&peer) {
            let _ = reply.send(Ok(()));
            return;
        }
        self.connect_waiters.entry(peer).or_default().push(reply);
        if self.deferred(&peer) || self.redial_soon(&peer) {
            return; // served when the peer's dial arrives, or ours when due
        }
        match self.dial(peer) {
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {}
            Err(e) => self.fail_waiters(peer, &e),
        }
    }

    /// Dials `peer` at its configured address (if any; mDNS may supply more).
    fn dial(&mut self, peer: PeerId) -> Result<(), DialError> {
        let addrs = self.targets.get(&peer).map(|t| vec![t.addr.clone()]);
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs.unwrap_or_default())
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        self.swarm.dial(opts)
    }

    /// Dials every configured peer whose backoff delay has elapsed.
    fn redial_due(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .targets
            .iter()
            .filter(|(_, t)| t.next_dial.is_some_and(|at| at <= now))
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            if let Some(t) = self.targets.get_mut(&peer) {
                t.next_dial = None;
            }
            match self.dial(peer) {
                Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {}
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "redial failed immediately");
                    self.schedule_redial(peer);
                    if !self.redial_soon(&peer) {
                        self.fail_waiters(peer, &e); // (else they wait for that one)
                    }
                }
            }
        }
    }

    /// Schedules the next dial of a configured, disconnected peer.
    fn schedule_redial(&mut self, peer: PeerId) {
        if self.swarm.is_connected(&peer) {
            return;
        }
        let Some(t) = self.targets.get_mut(&peer) else {
            return;
        };
        if t.next_dial.is_none() {
            let delay = t.backoff.next_delay();
            tracing::debug!(%peer, ?delay, "scheduling reconnect");
            t.next_dial = Some(Instant::now() + delay);
        }
    }

    /// A lost connection: both sides will redial; the one to wait waits.
    fn defer_redial(&mut self, peer: PeerId) {
        if let Some(mut t) = self.targets.remove(&peer) {
            self.defer(peer, &mut t, Instant::now());
            self.targets.insert(peer, t);
        }
    }

    async fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => self.on_listening(address).await,
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                lock(&self.listen_addrs).retain(|a| a != &address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                self.on_connected(
                    peer_id,
                    num_established.get(),
                    endpoint.get_remote_address(),
                )
                .await
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                tracing::debug!(%peer_id, ?cause, "connection closed");
                if num_established == 0 {
                    self.on_disconnected(peer_id).await;
                }
            }
            SwarmEvent::IncomingConnectionError {
                peer_id: Some(peer),
                error: ListenError::Denied { cause },
                ..
            } => self.on_denied(peer, &cause).await,
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                self.on_dial_error(peer_id, error).await
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(event)) => self.on_mdns(event),
            _ => {}
        }
    }

    async fn on_listening(&mut self, address: Multiaddr) {
        tracing::info!(%address, "listening");
        let addrs = {
            let mut guard = lock(&self.listen_addrs);
            guard.push(address.clone());
            guard.clone()
        };
        for reply in self.listening_waiters.drain(..) {
            let _ = reply.send(Ok(addrs.clone()));
        }
        self.emit(NetEvent::Listening(address)).await;
    }

    async fn on_connected(&mut self, peer: PeerId, count: u32, remote: &Multiaddr) {
        if let Some(t) = self.targets.get_mut(&peer) {
            t.backoff.reset();
            t.next_dial = None;
            t.defer_until = None;
        }
        for reply in self.connect_waiters.remove(&peer).unwrap_or_default() {
            let _ = reply.send(Ok(()));
        }
        if count == 1 {
            tracing::info!(%peer, %remote, "peer connected");
            self.emit(NetEvent::PeerConnected(peer, remote.clone()))
                .await;
        }
    }

    async fn on_disconnected(&mut self, peer: PeerId) {
        tracing::info!(%peer, "peer disconnected");
        self.schedule_redial(peer);
        self.defer_redial(peer);
        self.emit(NetEvent::PeerDisconnected(peer)).await;
    }

    async fn on_dial_error(&mut self, peer: Option<PeerId>, error: DialError) {
        let Some(peer) = peer else {
            tracing::debug!(%error, "dial without peer id failed");
            return;
        };
        tracing::debug!(%peer, %error, "dial failed");
        if let DialError::Denied { cause } = &error {
            self.on_denied(peer, cause).await;
        }
        if self.swarm.is_connected(&peer) {
            return;
        }
        self.schedule_redial(peer);
        if !self.redial_soon(&peer) {
            self.fail_waiters(peer, &error); // (else they wait for that redial)
        }
    }

    /// Logs and reports a connection refused by the allowlist.
    async fn on_denied(&mut self, peer: PeerId, cause: &ConnectionDenied) {
        if cause.downcast_ref::<NotAllowed>().is_some() {
            tracing::warn!(%peer, "refused connection from peer not on the allowlist");
            self.emit(NetEvent::Refused(peer)).await;
        } else {
            tracing::debug!(%peer, %cause, "connection denied");
        }
    }

    fn fail_waiters(&mut self, peer: PeerId, error: &DialError) {
        for reply in self.connect_waiters.remove(&peer).unwrap_or_default() {
            let reason = error.to_string();
            let _ = reply.send(Err(NetError::Dial { peer, reason }));
        }
    }

    fn on_mdns(&mut self, event: mdns::Event) {
        let mdns::Event::Discovered(found) = event else {
            return;
        };
        for (peer, addr) in found {
            if !self.swarm.behaviour().allow.allowed_peers().contains(&peer) {
                tracing::trace!(%peer, "ignoring mDNS peer not on the allowlist");
                continue;
            }
            if self.swarm.is_connected(&peer) {
                continue;
            }
            tracing::info!(%peer, %addr, "dialing allowlisted peer found via mDNS");
            let opts = DialOpts::peer_id(peer)
                .addresses(vec![addr])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, error = %e, "mDNS dial not started");
            }
        }
    }

    /// Hands an event to the application (ignored if the receiver is gone).
    async fn emit(&mut self, event: NetEvent) {
        let _ = self.events.send(event).await;
    }
}
