//! What the sender sends over: any byte stream to one peer (`Link`), so the protocol
//! runs the same over libp2p ([`NetLink`]) and over in-memory pipes in tests.

use super::SyncError;
use crate::bwlimit::BwLimit;
use crate::net::NetHandle;
use crate::net::PeerId;
use crate::wire::STREAM_PROTOCOL;
use futures::future::BoxFuture;
use futures::io::{AsyncRead, AsyncWrite};
use std::sync::Arc;
use std::time::Duration;

/// A bidirectional byte stream.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// A way to reach one peer.
pub trait Link: Send + Sync {
    /// Opens a fresh stream to the peer.
    fn open(&self) -> BoxFuture<'_, Result<Box<dyn Duplex>, SyncError>>;
    /// The link is dead (half-open): drop it so that the next `open` redials.
    fn reset(&self) -> BoxFuture<'_, ()>;
    /// The peer's id, as text (logs, per-peer records).
    fn peer(&self) -> String;
}

/// Streams to `peer` over the libp2p swarm.
pub struct NetLink {
    /// The network.
    pub net: NetHandle,
    /// The peer.
    pub peer: PeerId,
    /// The node's bandwidth limit, which every stream is put under.
    pub limit: Arc<BwLimit>,
}

impl Link for NetLink {
    fn open(&self) -> BoxFuture<'_, Result<Box<dyn Duplex>, SyncError>> {
        Box::pin(async move {
            let open = self.net.open_stream(self.peer, STREAM_PROTOCOL);
            let stream = tokio::time::timeout(Duration::from_secs(15), open)
                .await
                .map_err(|_| SyncError::Protocol("opening a stream timed out".into()))??;
            Ok(Box::new(self.limit.wrap(stream)) as Box<dyn Duplex>)
        })
    }

    fn reset(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.net.disconnect(self.peer))
    }

    fn peer(&self) -> String {
        self.peer.to_string()
    }
}
