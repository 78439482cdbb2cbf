//! Write coalescing: what a connection's layers write in one burst leaves in one packet.
//!
//! Yamux flushes after every frame it writes; Noise turns each flush into its own
//! encrypted frame (18 bytes of length and tag), and with `TCP_NODELAY` each then
//! leaves as its own TCP segment (66 bytes of Ethernet/IP/TCP headers). A handshake
//! step, or two streams answering at once, so cost several small packets where one
//! would do. Two layers hold writes back instead:
//!
//! - [`LazyFlush`], between Yamux and Noise, passes writes on (Noise buffers them) and
//!   holds flushes back for up to [`HOLD_FOR`], so the frames of a burst go in one
//!   Noise frame;
//! - [`Held`], under Noise (on the TCP socket), holds written bytes for [`HOLD_FOR`]
//!   after the first of them (sent at the owner's next poll once that has passed), so
//!   the handshakes' messages and what follows them leave together.
//!
//! Each sends at once when it holds [`HOLD_MAX`] bytes, on close, and after
//! [`HOLD_FOR`] at the latest (a timer wakes the owner, whose next poll of any kind
//! sends). Nagle's algorithm would merge less: it holds a segment only while an
//! earlier one is unacknowledged. The cost is latency: about a millisecond or two per
//! message turn, on a sync built for links whose round trips take tens or hundreds.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::io::{AsyncRead, AsyncWrite};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::yamux;
use tokio::time::Sleep;

use super::acks::Acks;
use super::pings::{OwnPings, Step};

/// Bytes held at most: a write that would reach this sends what is held first, and a
/// write this large goes straight through.
pub(crate) const HOLD_MAX: usize = 16 * 1024;

/// How long a write may be held (the timer's granularity is a millisecond).
pub(crate) const HOLD_FOR: Duration = Duration::from_millis(1);

/// A deadline armed by the first held write.
#[derive(Default)]
struct Due(Option<Pin<Box<Sleep>>>);

impl Due {
    /// Arms the deadline if it is not armed, registering the owner's wake-up. (Should
    /// tokio's budget for this task be spent, the poll wakes the task instead of
    /// registering, and its next poll of us registers.)
    fn arm(&mut self, cx: &mut Context<'_>) {
        if self.0.is_none() {
            let mut due = Box::pin(tokio::time::sleep(HOLD_FOR));
            let _ = due.as_mut().poll(cx);
            self.0 = Some(due);
        }
    }

    /// True once the deadline has passed (registers the wake-up otherwise).
    fn passed(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.0 {
            Some(due) => due.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }

    fn clear(&mut self) {
        self.0 = None;
    }
}

/// The TCP socket's layer: holds written bytes (see the module doc).
pub(crate) struct Held<S: AsyncWrite + Unpin> {
    inner: S,
    held: Vec<u8>,
    /// Bytes of `held` already written to `inner`.
    sent: usize,
    due: Due,
    /// The TCP socket's quick-ack keeping, told of each read (none off a socket).
    acks: Option<Acks>,
}

impl<S: AsyncWrite + Unpin> Held<S> {
    /// Wraps `inner`; nothing is held yet.
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            held: Vec::new(),
            sent: 0,
            due: Due::default(),
            acks: None,
        }
    }

    /// Wraps a TCP socket, whose quick-ack `acks` keeps.
    pub(crate) fn with_acks(inner: S, acks: Acks) -> Self {
        let mut held = Self::new(inner);
        held.acks = Some(acks);
        held
    }

    fn pending(&self) -> usize {
        self.held.len() - self.sent
    }

    /// Writes everything held to `inner`, then flushes it.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending() > 0 {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held.clear();
        self.sent = 0;
        self.due.clear();
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

/// A connection dropped without a close (an error path, a swarm dropped) would lose what
/// is held, which the kernel would have sent had it been written: one try, not waited on.
impl<S: AsyncWrite + Unpin> Drop for Held<S> {
    fn drop(&mut self) {
        if self.pending() > 0 {
            let waker = futures::task::noop_waker();
            let _ = self.poll_send(&mut Context::from_waker(&waker));
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Held<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(acks) = &mut this.acks {
            acks.after_read(&read, cx);
        }
        if read.is_pending() && this.pending() > 0 && this.due.passed(cx) {
            // The hold is over and the owner waits for the peer: what it wrote goes
            // now. A send that cannot finish has registered the wake-up for when it can.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Held<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending() + buf.len() >= HOLD_MAX || this.due.passed(cx) {
            ready!(this.poll_send(cx))?;
            if buf.len() >= HOLD_MAX {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
        }
        if !buf.is_empty() {
            this.due.arm(cx);
            this.held.extend_from_slice(buf);
        }
        Poll::Ready(Ok(buf.len()))
    }

    /// Holds on: the bytes go at the owner's first poll after [`HOLD_FOR`].
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending() == 0 || this.due.passed(cx) {
            return this.poll_send(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

/// The layer between Yamux and Noise: holds flushes back (see the module doc), and
/// drops our Yamux's round-trip pings ([`super::pings`]).
pub(crate) struct LazyFlush<S> {
    inner: S,
    /// Bytes written since the last flush passed on.
    unflushed: usize,
    due: Due,
    pings: OwnPings,
    /// A frame header taken in pieces, to pass on before anything else.
    owed: Vec<u8>,
}

impl<S: AsyncWrite + Unpin> LazyFlush<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            unflushed: 0,
            due: Due::default(),
            pings: OwnPings::default(),
            owed: Vec::new(),
        }
    }

    /// Passes on `buf`'s first bytes; how many went.
    fn poll_pass(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        if n > 0 {
            self.unflushed += n;
            self.due.arm(cx);
        }
        Poll::Ready(Ok(n))
    }

    /// Passes on the header owed, if any.
    fn poll_owed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.owed.is_empty() {
            let owed = std::mem::take(&mut self.owed);
            let res = self.poll_pass(cx, &owed);
            self.owed = owed;
            match ready!(res)? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => drop(self.owed.drain(..n)),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_pass_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_owed(cx))?;
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.unflushed = 0;
        self.due.clear();
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for LazyFlush<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // The owner has written its burst: one Noise frame for all of it, which the
        // layer below holds on to for what the next burst adds.
        if this.unflushed > 0 {
            if let Poll::Ready(Err(e)) = this.poll_pass_flush(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LazyFlush<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_owed(cx))?;
        if this.unflushed >= HOLD_MAX {
            ready!(this.poll_pass_flush(cx))?;
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        match this.pings.step(buf) {
            Step::Pass(n) => {
                let n = ready!(this.poll_pass(cx, &buf[..n]))?;
                this.pings.passed(n);
                Poll::Ready(Ok(n))
            }
            Step::Drop(n) => Poll::Ready(Ok(n)),
            Step::Gather(n) => {
                this.owed = this.pings.gather(&buf[..n]).unwrap_or_default();
                Poll::Ready(Ok(n))
            }
        }
    }

    /// Holds on until [`HOLD_FOR`] has passed since the first unflushed write.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.unflushed == 0 || !this.owed.is_empty() || this.due.passed(cx) {
            return this.poll_pass_flush(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pass_flush(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

/// Yamux over a [`LazyFlush`] of the authenticated connection: the same protocol name
/// and muxer, only the flushes held back.
#[derive(Clone, Default)]
pub(crate) struct LazyYamux(pub(crate) yamux::Config);

impl UpgradeInfo for LazyYamux {
    type Info = <yamux::Config as UpgradeInfo>::Info;
    type InfoIter = <yamux::Config as UpgradeInfo>::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.protocol_info()
    }
}

impl<C> InboundConnectionUpgrade<C> for LazyYamux
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = yamux::Muxer<LazyFlush<C>>;
    type Error = io::Error;
    type Future = <yamux::Config as InboundConnectionUpgrade<LazyFlush<C>>>::Future;

    fn upgrade_inbound(self, io: C, info: Self::Info) -> Self::Future {
        self.0.upgrade_inbound(LazyFlush::new(io), info)
    }
}

impl<C> OutboundConnectionUpgrade<C> for LazyYamux
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = yamux::Muxer<LazyFlush<C>>;
    type Error = io::Error;
    type Future = <yamux::Config as OutboundConnectionUpgrade<LazyFlush<C>>>::Future;

    fn upgrade_outbound(self, io: C, info: Self::Info) -> Self::Future {
        self.0.upgrade_outbound(LazyFlush::new(io), info)
    }
}

#[cfg(test)]
#[path = "coalesce_tests.rs"]
mod tests;
