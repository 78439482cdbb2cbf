//! The bandwidth limit (`bwlimit`, KiB/s): one token bucket per direction for the
//! whole node. Every sync stream is wrapped in [`Limited`]: what it writes to the peer
//! draws from the "up" bucket, what it reads from the "down" bucket.
//!
//! Buckets hold about 100 ms of rate, so bursts stay small, and each byte is charged
//! with an estimate of what it costs on the wire (TCP/IP and Ethernet headers per
//! segment, Yamux and Noise per write): the cap holds for what a network counter sees.

use futures::io::{AsyncRead, AsyncWrite};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Bytes a stream may move at once when the bucket is nearly empty (waits for at least
/// this much, or the whole request if smaller).
const MIN_GRANT: usize = 4 << 10;
/// The smallest bucket depth (one Yamux frame's worth, whatever the rate).
const MIN_DEPTH: f64 = 16384.0;
/// Headers per TCP segment (Ethernet 14, IPv4 20, TCP with timestamps 32)...
const SEGMENT_HEADERS: usize = 66;
/// ...of this much payload (MSS on a 1500-byte MTU with timestamps).
const SEGMENT_PAYLOAD: usize = 1448;
/// Yamux frame header, Noise length prefix and tag, per write.
const WRITE_OVERHEAD: usize = 30;

/// The node's limit: a bucket per direction, or none (unlimited).
#[derive(Debug)]
pub struct BwLimit {
    kib: u64,
    up: Option<Bucket>,
    down: Option<Bucket>,
}

impl BwLimit {
    /// A limit of `kib` KiB/s each way; 0 means unlimited.
    pub fn new(kib: u64) -> Arc<BwLimit> {
        let bucket = || (kib > 0).then(|| Bucket::new(kib as f64 * 1024.0));
        Arc::new(BwLimit {
            kib,
            up: bucket(),
            down: bucket(),
        })
    }

    /// The limit in KiB/s (0: unlimited).
    pub fn kib(&self) -> u64 {
        self.kib
    }

    /// `stream`, with its writes drawn from the up bucket and its reads from the down one.
    pub fn wrap<S>(self: &Arc<Self>, stream: S) -> Limited<S> {
        Limited {
            inner: stream,
            limit: self.clone(),
            read_wait: None,
            write_wait: None,
        }
    }
}

/// What `n` payload bytes cost on the wire, estimated.
fn wire_cost(n: usize) -> f64 {
    (n + n.div_ceil(SEGMENT_PAYLOAD) * SEGMENT_HEADERS + WRITE_OVERHEAD) as f64
}

/// A token bucket of bytes.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    depth: f64,
    /// Tokens (may go below zero: several streams share the bucket) and when counted.
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(rate: f64) -> Bucket {
        let depth = (rate / 10.0).max(MIN_DEPTH);
        Bucket {
            rate,
            depth,
            state: Mutex::new((depth, Instant::now())),
        }
    }

    /// How many of `want` bytes may go now, or how long to wait before asking again.
    fn grant(&self, want: usize) -> Result<usize, Duration> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        s.0 = (s.0 + (now - s.1).as_secs_f64() * self.rate).min(self.depth);
        s.1 = now;
        let need = wire_cost(want.min(MIN_GRANT));
        if want == 0 || s.0 >= need {
            // The largest count whose cost fits the tokens, at least the minimum grant.
            let per_byte = wire_cost(SEGMENT_PAYLOAD) / SEGMENT_PAYLOAD as f64;
            let fits = (s.0 / per_byte) as usize;
            return Ok(want.min(fits.max(MIN_GRANT)));
        }
        Err(Duration::from_secs_f64((need - s.0) / self.rate))
    }

    /// `n` bytes went.
    fn charge(&self, n: usize) {
        if n > 0 {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.0 -= wire_cost(n);
        }
    }
}

/// A byte stream under the node's limit (see [`BwLimit::wrap`]).
pub struct Limited<S> {
    inner: S,
    limit: Arc<BwLimit>,
    read_wait: Option<Pin<Box<Sleep>>>,
    write_wait: Option<Pin<Box<Sleep>>>,
}

/// Waits until `bucket` grants some of `want` bytes; returns how many.
fn poll_grant(
    bucket: &Bucket,
    wait: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
    want: usize,
) -> Poll<usize> {
    loop {
        if let Some(w) = wait {
            ready!(w.as_mut().poll(cx));
            *wait = None;
        }
        match bucket.grant(want) {
            Ok(n) => return Poll::Ready(n),
            Err(d) => *wait = Some(Box::pin(tokio::time::sleep(d))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(bucket) = &this.limit.down else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        let n = ready!(poll_grant(bucket, &mut this.read_wait, cx, buf.len()));
        let r = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf[..n]));
        if let Ok(got) = &r {
            bucket.charge(*got);
        }
        Poll::Ready(r)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(bucket) = &this.limit.up else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        let n = ready!(poll_grant(bucket, &mut this.write_wait, cx, buf.len()));
        let r = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..n]));
        if let Ok(put) = &r {
            bucket.charge(*put);
        }
        Poll::Ready(r)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::compat::TokioAsyncReadCompatExt;

    /// Seconds (on tokio's paused clock) to move `total` bytes through `limit`: written
    /// through it into a pipe, or read through it from memory.
    async fn time_to_move(limit: Arc<BwLimit>, total: usize, read: bool) -> f64 {
        let start = Instant::now();
        let mut buf = vec![7u8; 100_000];
        let mut moved = 0;
        if read {
            let mut r = limit.wrap(futures::io::Cursor::new(vec![7u8; total]));
            while moved < total {
                moved += r.read(&mut buf).await.unwrap();
            }
        } else {
            let (a, b) = tokio::io::duplex(1 << 20);
            let drain = tokio::spawn(async move {
                let mut b = b.compat();
                let mut sink = vec![0u8; 1 << 16];
                while b.read(&mut sink).await.unwrap() > 0 {}
            });
            let mut w = limit.wrap(a.compat());
            while moved < total {
                let n = buf.len().min(total - moved);
                w.write_all(&buf[..n]).await.unwrap();
                moved += n;
            }
            w.close().await.unwrap();
            drop(w);
            drain.await.unwrap();
        }
        (Instant::now() - start).as_secs_f64()
    }

    #[tokio::test(start_paused = true)]
    async fn writes_and_reads_hold_the_rate() {
        let total = 10 * 512 * 1024;
        for read in [false, true] {
            let secs = time_to_move(BwLimit::new(512), total, read).await;
            let wire = total as f64 * wire_cost(SEGMENT_PAYLOAD) / SEGMENT_PAYLOAD as f64;
            let rate = wire / secs / 1024.0;
            assert!(
                (rate - 512.0).abs() < 512.0 * 0.05,
                "read={read}: {rate:.1} KiB/s"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn zero_is_unlimited() {
        let secs = time_to_move(BwLimit::new(0), 50 << 20, false).await;
        assert!(secs < 0.01, "{secs}");
    }

    #[test]
    fn bursts_are_bounded() {
        let b = Bucket::new(512.0 * 1024.0);
        assert!(b.depth < 60_000.0);
        let n = b.grant(1 << 20).unwrap();
        assert!(n < 60_000, "{n}");
        b.charge(n);
        assert!(b.grant(1 << 20).is_err(), "empty after the burst");
    }
}
