//! Delayed ACKs on the TCP socket: a connection's replies carry the ACKs of what they
//! answer instead of each segment being acknowledged alone.
//!
//! The kernel acknowledges every segment at once while a connection is in *quick-ack*
//! mode, which it enters at the start and again whenever data arrives after the
//! connection was quiet for longer than its retransmission timeout (about 200 ms): the
//! usual case for a sync, whose messages come in turns separated by reading and
//! hashing files. A 66-byte ACK then goes ahead of each reply. Turning quick-ack off
//! (`TCP_QUICKACK` 0) holds an ACK back up to the delayed-ACK timeout (40 ms or more)
//! for data to ride on; the kernel may turn it on again by itself, so [`Acks`] (kept by
//! the socket's layer, `coalesce::Held`, and told of each read) turns
//! it off each time a read finds nothing and the owner starts waiting for the peer, and
//! once more [`LATE`] after data came (an ACK that had to go alone, after the
//! delayed-ACK timeout, turns it on again while the owner waits). Bulk data is still
//! acknowledged every second full segment.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// After data came, quick-ack is turned off again this long after the owner started
/// waiting: past the kernel's delayed-ACK timeout (40 ms at least).
pub(crate) const LATE: Duration = Duration::from_millis(60);

/// One TCP socket's quick-ack keeping: turned off before each wait for the peer.
pub(crate) struct Acks {
    fd: RawFd,
    /// Data came since the last late turn-off (one is then owed).
    came: bool,
    late: Option<Pin<Box<Sleep>>>,
}

impl Acks {
    /// For the socket `fd` (which must outlive this).
    pub(crate) fn new(fd: &impl AsRawFd) -> Self {
        Self {
            fd: fd.as_raw_fd(),
            came: false,
            late: None,
        }
    }

    /// After a read of the socket: a wait for the peer turns quick-ack off.
    pub(crate) fn after_read(&mut self, read: &Poll<io::Result<usize>>, cx: &mut Context<'_>) {
        match read {
            Poll::Pending => self.waiting(cx),
            Poll::Ready(Ok(n)) if *n > 0 => self.came = true,
            Poll::Ready(_) => {}
        }
    }

    /// Turns quick-ack off now, and arms (or polls) the late turn-off owed.
    fn waiting(&mut self, cx: &mut Context<'_>) {
        // best effort: a socket that refuses keeps the kernel's default
        let _ = crate::sys::set_tcp_quickack(&self.fd, false);
        if std::mem::take(&mut self.came) {
            self.late = Some(Box::pin(tokio::time::sleep(LATE)));
        }
        if let Some(late) = &mut self.late {
            if late.as_mut().poll(cx).is_ready() {
                self.late = None; // this wake-up's poll was the late turn-off
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::coalesce::Held;
    use futures::io::AsyncRead;
    use futures::task::{waker, ArcWake};
    use futures::AsyncReadExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;

    struct Count(AtomicUsize);
    impl ArcWake for Count {
        fn wake_by_ref(me: &Arc<Self>) {
            me.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn quick(fd: RawFd) -> bool {
        crate::sys::tcp_quickack(&fd).unwrap()
    }

    /// Quick-ack goes off at each wait for the peer, and once more `LATE` after data
    /// came (the kernel turns it on again by itself; here the test does).
    #[tokio::test]
    async fn quick_ack_goes_off_at_each_wait_and_once_more_after_data() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let fd = server.as_raw_fd();
        let tcp = libp2p::tcp::tokio::TcpStream(server);
        let mut acks = Held::with_acks(tcp, Acks::new(&fd));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let w = waker(count.clone());
        let mut cx = Context::from_waker(&w);
        let mut buf = [0u8; 16];
        let mut poll = |acks: &mut Held<_>, cx: &mut Context<'_>| {
            Pin::new(acks).poll_read(cx, &mut buf).map(|r| r.unwrap())
        };

        crate::sys::set_tcp_quickack(&fd, true).unwrap();
        assert!(quick(fd));
        assert!(poll(&mut acks, &mut cx).is_pending());
        assert!(!quick(fd), "off once the owner waits");

        client.write_all(b"hello").await.unwrap();
        let n = acks.read(&mut [0u8; 16]).await.unwrap();
        assert_eq!(n, 5);
        assert!(poll(&mut acks, &mut cx).is_pending());
        crate::sys::set_tcp_quickack(&fd, true).unwrap(); // as a lone delayed ACK does
        let woken = count.0.load(Ordering::SeqCst);
        tokio::time::sleep(LATE * 2).await;
        assert!(
            count.0.load(Ordering::SeqCst) > woken,
            "the late turn-off wakes the owner"
        );
        assert!(poll(&mut acks, &mut cx).is_pending());
        assert!(!quick(fd), "off again after the late wake-up");

        // with no data since, waiting arms nothing more
        let woken = count.0.load(Ordering::SeqCst);
        tokio::time::sleep(LATE * 2).await;
        assert_eq!(count.0.load(Ordering::SeqCst), woken);
    }
}
