//! Our Yamux's round-trip pings after its first, dropped on their way out.
//!
//! Yamux 0.14 (under libp2p) pings at the first activity that comes 10 s or more after
//! its last pong (`yamux::connection::rtt`, not configurable), to let a stream's
//! receive window grow past 256 KiB on a link whose bandwidth times round trip is
//! larger. On a link that idles between edits, the ping, the pong and their ACKs cost
//! 150 to 300 bytes per edit (a 4 KiB edit: about 5,090 B instead of 4,780).
//! [`OwnPings`] follows the Yamux frames written through
//! [`super::coalesce::LazyFlush`]: the connection's first ping passes (it goes with
//! the handshake's bytes, and its round trip sizes the windows for the connection's
//! life); every later ping that asks for a pong (flag `SYN`) is dropped. Pongs to the
//! peer's pings (flag `ACK`) pass. Our Yamux, never answered, waits for that pong and
//! pings no more (it has no timeout for one), keeping the first measure. syncfs's own
//! keepalives watch the link.

/// A Yamux frame header: version (u8), type (u8), flags (u16), stream id (u32) and
/// length (u32), big-endian; only a data frame's length counts payload bytes after it.
const HEADER: usize = 12;
const DATA: u8 = 0;
const PING: u8 = 2;
const SYN: u16 = 1;

/// What to do with the start of the bytes written next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Pass up to this many bytes on, then tell [`OwnPings::passed`] how many went.
    Pass(usize),
    /// Take this many and drop them: a ping of ours.
    Drop(usize),
    /// Take this many and hand them to [`OwnPings::gather`]: the start of a header,
    /// decided once it is whole.
    Gather(usize),
}

/// Where the written bytes stand in Yamux's frames.
#[derive(Debug, Default)]
pub(crate) struct OwnPings {
    /// Bytes of the current frame still to pass (0: a frame starts next).
    passing: u64,
    /// The start of a frame header, kept until it is whole.
    head: Vec<u8>,
    /// The connection's first ping went (only the first passes).
    first_sent: bool,
    /// Pings dropped so far.
    pub(crate) dropped: u64,
}

impl OwnPings {
    /// What to do with `buf`, the next bytes written (not empty).
    pub(crate) fn step(&mut self, buf: &[u8]) -> Step {
        if self.passing > 0 {
            return Step::Pass(self.passing.min(buf.len() as u64) as usize);
        }
        if !self.head.is_empty() || buf.len() < HEADER {
            return Step::Gather((HEADER - self.head.len()).min(buf.len()));
        }
        match self.frame_len(&buf[..HEADER]) {
            None => Step::Drop(HEADER),
            Some(len) => {
                self.passing = len;
                Step::Pass(len.min(buf.len() as u64) as usize)
            }
        }
    }

    /// `n` bytes of the passing frame went on.
    pub(crate) fn passed(&mut self, n: usize) {
        self.passing -= n as u64;
    }

    /// Takes the next bytes of a header; once it is whole, returns it if it passes
    /// (the caller sends it on before anything else; the rest of its frame follows).
    pub(crate) fn gather(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        self.head.extend_from_slice(bytes);
        if self.head.len() < HEADER {
            return None;
        }
        let head = std::mem::take(&mut self.head);
        match self.frame_len(&head) {
            None => None,
            Some(len) => {
                self.passing = len - HEADER as u64;
                Some(head)
            }
        }
    }

    /// The whole length (header and payload) of the frame that `head` starts, or
    /// `None` for a ping that asks for a pong, after the first (counted dropped).
    fn frame_len(&mut self, head: &[u8]) -> Option<u64> {
        let (kind, flags) = (head[1], u16::from_be_bytes([head[2], head[3]]));
        if kind == PING && flags & SYN != 0 {
            if self.first_sent {
                self.dropped += 1;
                return None;
            }
            self.first_sent = true;
        }
        let len = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
        Some(HEADER as u64 + if kind == DATA { u64::from(len) } else { 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A frame: type, flags, stream, length field, payload (data frames only).
    fn frame(kind: u8, flags: u16, stream: u32, len: u32) -> Vec<u8> {
        let mut f = vec![0, kind];
        f.extend(flags.to_be_bytes());
        f.extend(stream.to_be_bytes());
        f.extend(len.to_be_bytes());
        if kind == DATA {
            f.extend((0..len).map(|i| (i * 7 + stream) as u8));
        }
        f
    }

    /// Runs `written` through the filter in writes of the given sizes (cycled), the
    /// layer below taking at most `below` bytes a write; returns what went below.
    fn run(written: &[u8], sizes: &[usize], below: usize) -> (Vec<u8>, u64) {
        let (mut p, mut out, mut at) = (OwnPings::default(), Vec::new(), 0);
        for size in sizes.iter().cycle() {
            if at == written.len() {
                break;
            }
            let buf = &written[at..(at + size).min(written.len())];
            at += match p.step(buf) {
                Step::Pass(n) => {
                    let w = n.min(below);
                    out.extend_from_slice(&buf[..w]);
                    p.passed(w);
                    w
                }
                Step::Drop(n) => n,
                Step::Gather(n) => {
                    out.extend(p.gather(&buf[..n]).unwrap_or_default());
                    n
                }
            };
        }
        (out, p.dropped)
    }

    #[test]
    fn our_pings_go_and_everything_else_passes_whole() {
        let ping = frame(PING, SYN, 0, 7);
        let pong = frame(PING, 2, 0, 9);
        let data = frame(DATA, 0, 3, 40);
        let window = frame(1, SYN, 5, 262_144);
        let written = [
            ping.clone(),
            data.clone(),
            ping.clone(),
            pong.clone(),
            window.clone(),
            ping.clone(),
            data.clone(),
        ];
        let kept = [ping, data.clone(), pong, window, data].concat();
        for (sizes, below) in [
            (vec![4096], 4096),
            (vec![5, 1, 12, 3], 2),
            (vec![11, 13], 7),
        ] {
            assert_eq!(
                run(&written.concat(), &sizes, below),
                (kept.clone(), 2),
                "{sizes:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn frames_pass_byte_exact_however_the_writes_are_cut(
            frames in prop::collection::vec((0u8..4, 0u16..16, 0u32..9, 0u32..300), 0..30),
            sizes in prop::collection::vec(1usize..40, 1..8),
            below in 1usize..50,
        ) {
            let all: Vec<_> = frames.iter().map(|&(k, f, s, l)| frame(k, f, s, l)).collect();
            let ours = |f: &Vec<u8>| f[1] == PING && f[3] & 1 == 1;
            let first = all.iter().position(ours);
            let dropped = |(i, f): &(usize, &Vec<u8>)| ours(f) && Some(*i) != first;
            let kept: Vec<u8> =
                all.iter().enumerate().filter(|x| !dropped(x)).flat_map(|x| x.1).copied().collect();
            let pings = all.iter().enumerate().filter(dropped).count() as u64;
            prop_assert_eq!(run(&all.concat(), &sizes, below), (kept, pings));
        }
    }
}
