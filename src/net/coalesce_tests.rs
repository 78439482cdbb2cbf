//! Unit tests of the write-coalescing layers, over a recording I/O object whose reads
//! never complete (the peer is silent), polled by hand in paused time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::task::{waker, ArcWake};

use super::*;

/// Records each write and flush; reads wait forever.
#[derive(Default)]
struct Recorder {
    writes: Vec<Vec<u8>>,
    flushes: usize,
}

impl AsyncRead for Recorder {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Pending
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().writes.push(buf.to_vec());
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().flushes += 1;
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Counts its wake-ups.
#[derive(Default)]
struct Wakes(AtomicUsize);

impl ArcWake for Wakes {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Polls `f` once with a waker counting into `wakes`.
fn poll<T>(wakes: &Arc<Wakes>, f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
    let w = waker(wakes.clone());
    f(&mut Context::from_waker(&w))
}

fn write<S: AsyncWrite + Unpin>(s: &mut S, wakes: &Arc<Wakes>, bytes: &[u8]) {
    let r = poll(wakes, |cx| Pin::new(&mut *s).poll_write(cx, bytes));
    assert!(matches!(r, Poll::Ready(Ok(n)) if n == bytes.len()));
}

/// A Yamux data frame (stream 1) carrying `payload`: what Yamux writes into
/// [`LazyFlush`], which follows its frames.
fn data_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0, 0, 0, 0, 0, 0, 0, 1];
    f.extend((payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Our Yamux's pings after its first never leave; a pong, and the frames around, pass
/// as written.
#[tokio::test(start_paused = true)]
async fn lazy_flush_drops_our_pings_only() {
    let wakes = Arc::new(Wakes::default());
    let mut s = LazyFlush::new(Recorder::default());
    let ping = [0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 42];
    let pong = [0, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 43];
    for w in [
        &ping,
        &data_frame(b"one")[..],
        &ping,
        &pong,
        &data_frame(b"two"),
    ] {
        write(&mut s, &wakes, w);
    }
    let sent = s.inner.writes.concat();
    let kept = [&ping, &data_frame(b"one")[..], &pong, &data_frame(b"two")];
    assert_eq!(sent, kept.concat(), "the first ping passes, later ones go");
    assert_eq!(s.pings.dropped, 1);
}

fn flush<S: AsyncWrite + Unpin>(s: &mut S, wakes: &Arc<Wakes>) {
    let r = poll(wakes, |cx| Pin::new(&mut *s).poll_flush(cx));
    assert!(matches!(r, Poll::Ready(Ok(()))));
}

fn read<S: AsyncRead + Unpin>(s: &mut S, wakes: &Arc<Wakes>) {
    let r = poll(wakes, |cx| Pin::new(&mut *s).poll_read(cx, &mut [0; 8]));
    assert!(r.is_pending(), "the recorder never has anything to read");
}

#[tokio::test(start_paused = true)]
async fn held_writes_leave_together_when_due_and_the_timer_wakes_the_owner() {
    let wakes = Arc::new(Wakes::default());
    let mut s = Held::new(Recorder::default());
    write(&mut s, &wakes, b"ab");
    flush(&mut s, &wakes);
    write(&mut s, &wakes, b"cd");
    flush(&mut s, &wakes);
    read(&mut s, &wakes);
    assert!(s.inner.writes.is_empty(), "held until due");
    tokio::time::advance(HOLD_FOR).await;
    assert!(
        wakes.0.load(Ordering::SeqCst) > 0,
        "the timer wakes the owner"
    );
    read(&mut s, &wakes);
    assert_eq!(s.inner.writes, vec![b"abcd".to_vec()]);
    assert!(s.inner.flushes > 0);
}

#[tokio::test(start_paused = true)]
async fn a_large_write_sends_what_is_held_then_goes_through() {
    let wakes = Arc::new(Wakes::default());
    let mut s = Held::new(Recorder::default());
    write(&mut s, &wakes, b"x");
    let big = vec![7u8; HOLD_MAX];
    write(&mut s, &wakes, &big);
    assert_eq!(s.inner.writes, vec![b"x".to_vec(), big]);
}

#[tokio::test(start_paused = true)]
async fn close_sends_what_is_held() {
    let wakes = Arc::new(Wakes::default());
    let mut s = Held::new(Recorder::default());
    write(&mut s, &wakes, b"bye");
    let r = poll(&wakes, |cx| Pin::new(&mut s).poll_close(cx));
    assert!(matches!(r, Poll::Ready(Ok(()))));
    assert_eq!(s.inner.writes, vec![b"bye".to_vec()]);
}

#[tokio::test(start_paused = true)]
async fn lazy_flush_passes_one_flush_on_when_the_owner_reads() {
    let wakes = Arc::new(Wakes::default());
    let mut s = LazyFlush::new(Recorder::default());
    flush(&mut s, &wakes);
    assert_eq!(s.inner.flushes, 1, "nothing written: the flush passes");
    write(&mut s, &wakes, &data_frame(b"frame 1"));
    flush(&mut s, &wakes);
    write(&mut s, &wakes, &data_frame(b"frame 2"));
    flush(&mut s, &wakes);
    assert_eq!(s.inner.flushes, 1, "held back");
    read(&mut s, &wakes);
    assert_eq!(s.inner.flushes, 2);
    assert_eq!(s.inner.writes.len(), 2, "writes pass through at once");
}

#[tokio::test(start_paused = true)]
async fn lazy_flush_passes_a_flush_on_when_due() {
    let wakes = Arc::new(Wakes::default());
    let mut s = LazyFlush::new(Recorder::default());
    write(&mut s, &wakes, &data_frame(b"frame"));
    flush(&mut s, &wakes);
    assert_eq!(s.inner.flushes, 0);
    tokio::time::advance(HOLD_FOR).await;
    assert!(
        wakes.0.load(Ordering::SeqCst) > 0,
        "the timer wakes the owner"
    );
    flush(&mut s, &wakes);
    assert_eq!(s.inner.flushes, 1);
}

#[tokio::test(start_paused = true)]
async fn the_timer_wakes_whoever_polled_last_and_a_due_flush_sends() {
    // the upgrade's task writes, then the connection moves to another task
    let (first, second) = (Arc::new(Wakes::default()), Arc::new(Wakes::default()));
    let mut s = Held::new(Recorder::default());
    write(&mut s, &first, b"msg3");
    flush(&mut s, &first);
    flush(&mut s, &second);
    tokio::time::advance(HOLD_FOR).await;
    assert!(
        second.0.load(Ordering::SeqCst) > 0,
        "the task polling now is woken"
    );
    assert!(s.inner.writes.is_empty());
    flush(&mut s, &second);
    assert_eq!(
        s.inner.writes,
        vec![b"msg3".to_vec()],
        "a flush once due sends"
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_dropped_unclosed_still_tries_to_send_what_is_held() {
    let wakes = Arc::new(Wakes::default());
    let mut rec = Recorder::default();
    let mut s = Held::new(&mut rec);
    write(&mut s, &wakes, b"last ack");
    assert!(s.inner.writes.is_empty());
    drop(s);
    assert_eq!(rec.writes, vec![b"last ack".to_vec()]);
}
