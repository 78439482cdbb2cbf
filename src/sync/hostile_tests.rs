//! A hostile peer, built from the crate's own wire module and speaking the real
//! protocol over an in-memory stream, against a real receiver and applier (no FUSE, no
//! sockets). After each attack the receiver answers with a clear refusal, applies
//! nothing unsafe, and still applies the valid traffic that follows.

use super::check::Checker;
use super::receiver::{serve, Receiver};
use super::{SyncConfig, SyncError};
use crate::apply::{Applier, NoHooks};
use crate::journal::op::{MetaOp, Timestamp};
use crate::journal::Journal;
use crate::net::PeerId;
use crate::path::RelPath;
use crate::sys;
use crate::wire::{
    compress_range, AckKind, Encoding, FileUpdate, FramedStream, Message, MetaItem, RangeData,
};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

pub(super) type Peer = FramedStream<Compat<tokio::io::DuplexStream>>;
const FOLDER: [u8; 16] = [7; 16];

fn rp(s: &str) -> RelPath {
    RelPath::from_bytes(s.as_bytes()).unwrap()
}

pub(super) struct Env {
    pub(super) _tmp: tempfile::TempDir,
    pub(super) data: PathBuf,
    pub(super) receiver: Receiver,
}

pub(super) fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let (data, staging) = (tmp.path().join("data"), tmp.path().join("staging"));
    std::fs::create_dir(&data).unwrap();
    std::fs::create_dir(&staging).unwrap();
    let mut applier = Applier::open(&data, &staging, Arc::new(NoHooks)).unwrap();
    applier.set_sync_ownership(true);
    applier.set_max_file_size(1 << 30);
    let applier = Arc::new(applier);
    let cfg = SyncConfig {
        folder_id: FOLDER,
        node_name: "victim".into(),
        settle: Duration::from_millis(10),
        level: 3,
        node: 1,
        peer_bytes: b"victim".to_vec(),
        peer_text: "victim".into(),
    };
    let check = Checker {
        journal: Journal::open(&tmp.path().join("journal")).unwrap(),
        root: Arc::new(sys::openat(&sys::AtCwd, data.as_os_str(), libc::O_PATH, 0).unwrap()),
        applier: applier.clone(),
        cfg: cfg.clone(),
    };
    let receiver = Receiver {
        applier,
        check,
        cfg,
        stats: Default::default(),
        lock: Default::default(),
        budgets: Default::default(),
        handoffs: Default::default(),
    };
    Env {
        _tmp: tmp,
        data,
        receiver,
    }
}

/// Starts the receiver on one end of a pipe; returns the other end after `Hello`.
pub(super) async fn connect(
    e: &Env,
    who: PeerId,
) -> (Peer, tokio::task::JoinHandle<Result<(), SyncError>>) {
    connect_buffered(e, who, 64 << 20).await
}

/// [`connect`] over a pipe that holds `buf` bytes each way.
async fn connect_buffered(
    e: &Env,
    who: PeerId,
    buf: usize,
) -> (Peer, tokio::task::JoinHandle<Result<(), SyncError>>) {
    let (ours, theirs) = tokio::io::duplex(buf);
    let r = e.receiver.clone();
    let task = tokio::spawn(async move { serve(who, theirs.compat(), &r).await });
    let mut fs = FramedStream::new(ours.compat());
    fs.send(Message::hello(FOLDER, "mallory")).await.unwrap();
    assert!(matches!(
        fs.recv().await.unwrap(),
        Some(Message::Hello { .. })
    ));
    fs.compress(3).unwrap();
    let staged = fs.recv().await.unwrap();
    assert!(
        matches!(staged, Some(Message::Staged { items, .. }) if items.is_empty()),
        "nothing kept for a new peer"
    );
    (fs, task)
}

async fn ask(fs: &mut Peer, m: Message) -> Message {
    fs.send(m).await.unwrap();
    fs.recv().await.unwrap().expect("a reply")
}

async fn op(fs: &mut Peer, seq: u64, op: MetaOp) -> Message {
    ask(fs, Message::MetaBatch(vec![item(seq, op)])).await
}

fn item(seq: u64, op: MetaOp) -> MetaItem {
    MetaItem {
        seq,
        op: op.into(),
        vv: vec![],
    }
}

fn refused(m: &Message) -> bool {
    matches!(m, Message::Nack { .. })
}

pub(super) fn valid_update(id: u64, path: &str, content: &[u8]) -> FileUpdate {
    FileUpdate {
        id,
        file: 1,
        path: rp(path),
        base: None,
        size: content.len() as u64,
        mode: 0o100644,
        mtime: Timestamp {
            secs: 1_700_000_000,
            nanos: 0,
        }
        .into(),
        ranges: vec![compress_range(0, content, 3)],
        hash: *blake3::hash(content).as_bytes(),
        vv: vec![(99, next_version())],
    }
}

/// A fresh counter: each update the fake peer sends is a new version of its file.
fn next_version() -> u64 {
    static CLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    CLOCK.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn a_hostile_peer_gets_refusals_and_valid_traffic_still_applies() {
    let e = env();
    let mallory = PeerId::random();
    let (mut fs, task) = connect(&e, mallory).await;
    let p = |n: &str| e.data.join(n);
    // a setuid mode: created without the bit
    let create = MetaOp::Create {
        path: rp("suid"),
        file: 1,
        mode: 0o4755,
    };
    assert_eq!(op(&mut fs, 1, create).await, Message::Ack(AckKind::Meta(1)));
    assert_eq!(std::fs::metadata(p("suid")).unwrap().mode() & 0o7777, 0o755);
    // chown to 0: refused (ownership on, but never root)
    let chown = |uid| MetaOp::Chown {
        path: rp("suid"),
        uid: Some(uid),
        gid: Some(uid),
    };
    assert_eq!(
        op(&mut fs, 2, chown(4242)).await,
        Message::Ack(AckKind::Meta(2))
    );
    assert!(refused(&op(&mut fs, 3, chown(0)).await));
    assert_eq!(std::fs::metadata(p("suid")).unwrap().uid(), 4242);
    // a security.capability xattr: refused
    let cap = MetaOp::SetXattr {
        path: rp("suid"),
        name: b"security.capability".to_vec(),
        value: vec![1, 0, 0, 2, 0xff, 0xff, 0xff, 0xff],
        flags: 0,
    };
    assert!(refused(&op(&mut fs, 4, cap).await));
    // sizes far past the file and the update: refused before any work
    let trunc = MetaOp::Truncate {
        path: rp("suid"),
        file: 1,
        size: 1 << 40,
    };
    assert!(refused(&op(&mut fs, 5, trunc).await));
    let mut huge = valid_update(10, "suid", b"abc");
    huge.size = 1 << 40;
    huge.hash = [0; 32];
    let start = std::time::Instant::now();
    assert!(refused(&ask(&mut fs, Message::FileUpdate(huge)).await));
    assert!(start.elapsed() < Duration::from_secs(2), "refused at once");
    assert_eq!(std::fs::metadata(p("suid")).unwrap().len(), 0);
    // 550,000 empty zstd ranges in one frame, then its update: refused, memory counted
    let empty: Vec<RangeData> = (0..550_000u64)
        .map(|i| RangeData {
            offset: i * 4,
            len: 4,
            encoding: Encoding::Zstd,
            data: Vec::new(),
        })
        .collect();
    fs.send(Message::UpdatePart {
        id: 11,
        ranges: empty,
    })
    .await
    .unwrap();
    let mut tail = valid_update(11, "bomb", b"");
    tail.size = 550_000 * 4;
    tail.ranges.clear();
    assert!(refused(&ask(&mut fs, Message::FileUpdate(tail)).await));
    assert!(!p("bomb").exists(), "nothing of it is visible");
    let peer_memory = e.receiver.budgets.of(mallory).held();
    assert_eq!(peer_memory, 0, "its memory was counted and given back");
    // a replayed metadata batch with renames: applied once
    std::fs::write(p("a"), b"precious").unwrap();
    let batch = [
        (
            20,
            MetaOp::Rename {
                from: rp("a"),
                to: rp("b"),
                flags: 0,
            },
        ),
        (
            21,
            MetaOp::Create {
                path: rp("a"),
                file: 2,
                mode: 0o644,
            },
        ),
    ];
    for _ in 0..2 {
        let items = batch.iter().map(|(s, o)| item(*s, o.clone())).collect();
        let reply = ask(&mut fs, Message::MetaBatch(items)).await;
        assert_eq!(reply, Message::Ack(AckKind::Meta(21)));
    }
    assert_eq!(std::fs::read(p("b")).unwrap(), b"precious");
    // and valid traffic still applies
    let ok = ask(
        &mut fs,
        Message::FileUpdate(valid_update(30, "fine", b"hello")),
    )
    .await;
    assert_eq!(ok, Message::Ack(AckKind::Update(30)));
    assert_eq!(std::fs::read(p("fine")).unwrap(), b"hello");
    drop(fs);
    assert!(
        task.await.unwrap().is_ok(),
        "the stream ended cleanly when closed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_ends_the_stream() {
    let e = env();
    let (fs, task) = connect(&e, PeerId::random()).await;
    let res = tokio::time::timeout(Duration::from_secs(120), task).await;
    let err = res.expect("ended by itself").unwrap().unwrap_err();
    assert!(matches!(err, SyncError::Silent(_)), "{err}");
    drop(fs);
}

/// A chunk exchange that breaks its rules ends in a decline, costs no memory after,
/// leaves the local file alone, and an honest one then rebuilds the file.
#[tokio::test]
async fn a_hostile_chunk_exchange_is_declined_and_an_honest_one_applies() {
    use crate::chunks::{Offers, Tree};
    let e = env();
    let mallory = PeerId::random();
    let (mut fs, task) = connect(&e, mallory).await;
    let old: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut new = old.clone();
    new[150_000..150_020].copy_from_slice(&[0xAA; 20]);
    write_older(&e.data.join("big"), &old);
    let tree = Tree::from_bytes(&new);
    let mut header = valid_update(40, "big", &new);
    header.ranges.clear();
    let top: Vec<_> = Offers::new(&tree).top().into_iter().map(node).collect();
    let declined = |m: &Message| matches!(m, Message::ChunkDecline(40));
    // a round of an exchange never opened
    let stray = Message::ChunkRound {
        id: 40,
        children: vec![],
        data: vec![1, 2, 3],
        blocks: vec![],
        matched: vec![],
    };
    assert!(declined(&ask(&mut fs, stray).await));
    // a top level that does not cover the file's size
    let mut short = top.clone();
    short[0].len += 1;
    let offer = |top| Message::ChunkOffer {
        update: header.clone(),
        top,
        from: vec![],
        sketch: vec![],
    };
    assert!(declined(&ask(&mut fs, offer(short)).await));
    // a path with no local version
    let mut elsewhere = header.clone();
    elsewhere.path = rp("nowhere");
    let m = Message::ChunkOffer {
        update: elsewhere,
        top: top.clone(),
        from: vec![],
        sketch: vec![],
    };
    assert!(matches!(ask(&mut fs, m).await, Message::ChunkDecline(_)));
    // leaves that do not match what was asked for
    let Message::ChunkAnswer { answers, .. } = ask(&mut fs, offer(top.clone())).await else {
        panic!("an answer to an honest offer");
    };
    assert!(answers.contains(&1), "the changed node is expanded");
    let bad = Message::ChunkRound {
        id: 40,
        children: vec![],
        data: vec![0; 5],
        blocks: vec![0; 6],
        matched: vec![],
    };
    assert!(declined(&ask(&mut fs, bad).await));
    assert_eq!(std::fs::read(e.data.join("big")).unwrap(), old, "untouched");
    assert_eq!(
        e.receiver.budgets.of(mallory).held(),
        0,
        "memory given back"
    );
    // blocks described as our own old bytes: they are found and copied, and the
    // rebuilt file fails its hash; nothing is applied
    let (reply, ..) = exchange_describing(&mut fs, header.clone(), &new, &old).await;
    assert!(matches!(reply, Message::Nack { .. }), "{reply:?}");
    assert_eq!(std::fs::read(e.data.join("big")).unwrap(), old, "untouched");
    // an honest exchange: rebuilt, applied, acked
    let (reply, sent, _) = honest_exchange(&mut fs, header, &new).await;
    assert_eq!(reply, Message::Ack(AckKind::Update(40)));
    assert_eq!(std::fs::read(e.data.join("big")).unwrap(), new);
    assert!(
        sent < 16 << 10,
        "{sent} bytes of leaves for a 20-byte change"
    );
    drop(fs);
    assert!(task.await.unwrap().is_ok());
}

/// A sketch that lies (it decodes to the leaves of other content of the same size)
/// leads the receiver to pick and rebuild that content, which fails the offered hash:
/// refused, nothing applied, the memory given back; so are matched ops that do not
/// fit their gap; the honest sketch and ops then apply.
#[tokio::test]
async fn a_lying_sketch_rebuilds_nothing_and_an_honest_one_applies() {
    use crate::chunks::{sketch, Offers, Tree};
    let e = env();
    let mallory = PeerId::random();
    let (mut fs, task) = connect(&e, mallory).await;
    let old = crate::chunks::tests::text(2 << 20, 11);
    let (mut new, mut lie) = (old.clone(), old.clone());
    new[1_000_000..1_000_020].copy_from_slice(&[b'N'; 20]);
    lie[300_000..300_020].copy_from_slice(&[b'L'; 20]);
    write_older(&e.data.join("big"), &old);
    let mut header = valid_update(41, "big", &new);
    header.ranges.clear();
    // the lie; the honest content with matched ops that run past the gap; the honest
    for (content, honest, bad_ops) in [
        (&lie, false, false),
        (&new, false, true),
        (&new, true, false),
    ] {
        let tree = Tree::from_bytes(content);
        let mut offers = Offers::new(&tree);
        let top = offers.top().into_iter().map(node).collect();
        let offer = Message::ChunkOffer {
            update: header.clone(),
            top,
            from: vec![],
            sketch: sketch::encode(&tree, sketch::CELLS),
        };
        let Message::ChunkPick {
            leaves,
            answers,
            holes,
            ..
        } = ask(&mut fs, offer).await
        else {
            panic!("the sketch decodes to a pick");
        };
        let a: Vec<_> = answers
            .iter()
            .map(|&b| super::chunked::answer_of(b).unwrap())
            .collect();
        let holes = crate::chunks::matching::decode_holes(&holes).unwrap();
        let round = offers.pick(&leaves, &a, holes).unwrap();
        assert!(round.children.is_empty(), "no tree walked");
        assert_eq!(round.matched.len(), 1, "the changed gap is matched");
        let mut msg = round_message(41, round, content, content).0;
        if let (Message::ChunkRound { matched, .. }, true) = (&mut msg, bad_ops) {
            matched.splice(0..0, [0x05, 0x01, 0x01]);
        }
        let mut reply = ask(&mut fs, msg).await;
        while let Message::ChunkAnswer { answers, .. } = reply {
            let (msg, _) = next_round(&mut offers, 41, &answers, content, content);
            reply = ask(&mut fs, msg).await;
        }
        let on_disk = std::fs::read(e.data.join("big")).unwrap();
        if honest {
            assert_eq!(reply, Message::Ack(AckKind::Update(41)));
            assert!(on_disk == new, "rebuilt and applied");
        } else {
            let refused = matches!(reply, Message::Nack { .. } | Message::ChunkDecline(41));
            assert!(refused, "{reply:?}");
            assert!(on_disk == old, "untouched");
            assert_eq!(
                e.receiver.budgets.of(mallory).held(),
                0,
                "memory given back"
            );
        }
    }
    drop(fs);
    assert!(task.await.unwrap().is_ok());
}

/// The `ChunkRound` of exchange `id` for `round`: bytes from `new`, leaves and blocks
/// described by the bytes of `described` (`new` itself, or a lie); and the bytes of
/// leaves and hashes it carries.
fn round_message(
    id: u64,
    round: crate::chunks::Round,
    new: &[u8],
    described: &[u8],
) -> (Message, usize) {
    let bytes = |s: &[u8], &(o, l): &(u64, u64)| s[o as usize..(o + l) as usize].to_vec();
    let mut data: Vec<u8> = round.send.iter().flat_map(|e| bytes(new, e)).collect();
    let mut matched = Vec::new();
    for (at, len, hole) in &round.matched {
        let (ops, literal) = crate::chunks::matching::encode(&bytes(new, &(*at, *len)), hole);
        matched.extend(ops);
        data.extend(literal);
    }
    let leaves =
        (round.describe.iter()).flat_map(|e| crate::chunks::block_hashes(&bytes(described, e)));
    let pieces = (round.fine.iter()).flat_map(|e| crate::chunks::fine_hashes(&bytes(described, e)));
    let blocks: Vec<u8> = (leaves.chain(pieces))
        .flat_map(crate::wire::hash48_bytes)
        .collect();
    let sent = data.len() + blocks.len();
    let children = (round.children.into_iter())
        .map(|c| c.into_iter().map(node).collect())
        .collect();
    let msg = Message::ChunkRound {
        id,
        children,
        data,
        blocks,
        matched,
    };
    (msg, sent)
}

/// Exchanges under way on one stream: up to [`MAX_EXCHANGES`] at once, each answered in
/// turn (their rounds may interleave); one more is declined and costs nothing; a
/// declined one gives its memory back, and the others still complete.
#[tokio::test]
async fn exchanges_interleave_and_one_too_many_is_declined() {
    use super::chunked::MAX_EXCHANGES;
    use crate::chunks::{Offers, Tree};
    let e = env();
    let mallory = PeerId::random();
    let (mut fs, task) = connect(&e, mallory).await;
    let old: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut new = old.clone();
    new[50_000..50_020].copy_from_slice(&[0xAA; 20]);
    let tree = Tree::from_bytes(&new);
    let top: Vec<_> = Offers::new(&tree).top().into_iter().map(node).collect();
    let header = |i: usize| {
        let name = format!("f{i}");
        write_older(&e.data.join(&name), &old);
        let mut h = valid_update(100 + i as u64, &name, &new);
        h.ranges.clear();
        h
    };
    let offer = |update| Message::ChunkOffer {
        update,
        top: top.clone(),
        from: vec![],
        sketch: vec![],
    };
    let mut replies = Vec::new();
    for i in 0..MAX_EXCHANGES {
        let m = ask(&mut fs, offer(header(i))).await;
        assert!(matches!(m, Message::ChunkAnswer { .. }), "offer {i}: {m:?}");
        replies.push(m);
    }
    let held = e.receiver.budgets.of(mallory).held();
    let each = new.len() + old.len() / 4; // the rebuild, and our version's tree
    assert_eq!(held, MAX_EXCHANGES * each, "each rebuild is charged");
    let m = ask(&mut fs, offer(header(MAX_EXCHANGES))).await;
    assert_eq!(
        m,
        Message::ChunkDecline(100 + MAX_EXCHANGES as u64),
        "one too many"
    );
    assert_eq!(
        e.receiver.budgets.of(mallory).held(),
        held,
        "and not charged"
    );
    // the sender declines all but the first two (no reply); their rounds alternate
    for i in 2..MAX_EXCHANGES {
        let decline = Message::ChunkDecline(100 + i as u64);
        fs.send(decline).await.unwrap();
    }
    replies.truncate(2);
    let mut offers: Vec<_> = (0..2).map(|_| Offers::new(&tree)).collect();
    offers.iter_mut().for_each(|o| drop(o.top()));
    while replies
        .iter()
        .any(|m| matches!(m, Message::ChunkAnswer { .. }))
    {
        for (i, o) in offers.iter_mut().enumerate() {
            let Message::ChunkAnswer { answers, .. } = &replies[i] else {
                continue;
            };
            let (msg, _) = next_round(o, 100 + i as u64, answers, &new, &new);
            replies[i] = ask(&mut fs, msg).await;
        }
    }
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply, Message::Ack(AckKind::Update(100 + i as u64)));
        assert_eq!(std::fs::read(e.data.join(format!("f{i}"))).unwrap(), new);
    }
    assert_eq!(
        e.receiver.budgets.of(mallory).held(),
        0,
        "memory given back"
    );
    for i in 2..=MAX_EXCHANGES {
        let name = e.data.join(format!("f{i}"));
        assert_eq!(std::fs::read(name).unwrap(), old, "f{i} untouched");
    }
    drop(fs);
    assert!(task.await.unwrap().is_ok());
}

/// Writes `bytes` at `path` with an mtime older than any peer's: the peer's wins.
fn write_older(path: &std::path::Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    let older = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(older).unwrap();
}

fn node(n: crate::chunks::Offer) -> crate::wire::ChunkNode {
    super::chunked::to_wire(n)
}

/// Offers `new` honestly under `header` until the peer stops answering; returns its
/// last reply, the leaf bytes sent and the rounds.
async fn honest_exchange(
    fs: &mut Peer,
    header: crate::wire::FileUpdate,
    new: &[u8],
) -> (Message, usize, usize) {
    exchange_describing(fs, header, new, new).await
}

/// Offers `new` under `header`, describing leaves by the blocks of `described` (at
/// the same offsets: `new` itself, or a lie).
async fn exchange_describing(
    fs: &mut Peer,
    header: crate::wire::FileUpdate,
    new: &[u8],
    described: &[u8],
) -> (Message, usize, usize) {
    let (tree, id) = (crate::chunks::Tree::from_bytes(new), header.id);
    let mut offers = crate::chunks::Offers::new(&tree);
    let top = offers.top().into_iter().map(node).collect();
    let mut reply = ask(
        fs,
        Message::ChunkOffer {
            update: header,
            top,
            from: vec![],
            sketch: vec![],
        },
    )
    .await;
    let (mut sent, mut rounds) = (0, 1);
    while let Message::ChunkAnswer { answers, .. } = reply {
        let (msg, n) = next_round(&mut offers, id, &answers, new, described);
        sent += n;
        rounds += 1;
        reply = ask(fs, msg).await;
    }
    (reply, sent, rounds)
}

/// The `ChunkRound` of exchange `id` after `answers`, describing leaves by the blocks
/// of `described`, and the bytes of leaves and hashes it carries.
fn next_round(
    offers: &mut crate::chunks::Offers<'_>,
    id: u64,
    answers: &[u8],
    new: &[u8],
    described: &[u8],
) -> (Message, usize) {
    let a: Vec<_> = answers
        .iter()
        .map(|b| super::chunked::answer_of(*b).expect("an answer"))
        .collect();
    let round = offers.next(&a).unwrap();
    round_message(id, round, new, described)
}

/// Changes scattered all over a file leave no node found in the top levels; the
/// exchange goes on down to where the unchanged parts are, and pays for the changes.
/// Content unrelated to ours is declined a level or two further down, for a few
/// thousand hashes instead of the whole tree.
#[tokio::test]
async fn scattered_changes_pair_by_chunks_and_unrelated_content_is_declined() {
    let e = env();
    let peer = PeerId::random();
    let (mut fs, task) = connect(&e, peer).await;
    let old = noise(4 << 20, 1);
    let mut new = old.clone();
    for w in 0..200 {
        let at = (w * 2_654_435_761u64 % ((4 << 20) - 4096)) as usize & !4095;
        new[at..at + 4096].copy_from_slice(&noise(4096, 100 + w));
    }
    let unrelated = noise(4 << 20, 2);
    for name in ["scattered", "unrelated"] {
        write_older(&e.data.join(name), &old);
    }
    let mut header = valid_update(41, "scattered", &new);
    header.ranges.clear();
    let (reply, sent, rounds) = honest_exchange(&mut fs, header, &new).await;
    assert_eq!(
        reply,
        Message::Ack(AckKind::Update(41)),
        "after {rounds} rounds"
    );
    assert_eq!(std::fs::read(e.data.join("scattered")).unwrap(), new);
    assert!(
        sent < 1_300_000,
        "{sent} bytes of leaves for 800 KiB of changes"
    );
    let mut header = valid_update(42, "unrelated", &unrelated);
    header.ranges.clear();
    let (reply, _, rounds) = honest_exchange(&mut fs, header, &unrelated).await;
    assert_eq!(reply, Message::ChunkDecline(42));
    assert!(rounds <= 4, "declined after {rounds} rounds");
    assert_eq!(std::fs::read(e.data.join("unrelated")).unwrap(), old);
    drop(fs);
    assert!(task.await.unwrap().is_ok());
}

/// The sender's side of sixteen exchanges at once (`exchanges::run`) against a
/// receiver over a pipe of 16 KiB each way, far less than the rounds' leaves: the
/// sender's writes wait on the receiver, never for good, and every file is rebuilt.
/// (The answers it may be owed, 64 KiB at most, are compressed; yamux gives a stream
/// 256 KiB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_exchanges_over_a_small_pipe_all_complete() {
    use super::chunked::{read_for_offer, Offered, Ready, MAX_EXCHANGES};
    let e = env();
    let (mut fs, task) = connect_buffered(&e, PeerId::random(), 16 << 10).await;
    let ours = tempfile::tempdir().unwrap();
    let root = std::fs::File::open(ours.path()).unwrap();
    let (mut batch, mut news) = (Vec::new(), Vec::new());
    for i in 0..MAX_EXCHANGES as u64 {
        let old = noise(1 << 20, 10 + i);
        let mut new = old.clone();
        for w in 0..40 {
            let at = ((w * 2_654_435_761 + i * 7919) % ((1 << 20) - 512)) as usize;
            new[at..at + 200].copy_from_slice(&noise(200, 1000 + w));
        }
        let name = format!("f{i}");
        write_older(&e.data.join(&name), &old);
        std::fs::write(ours.path().join(&name), &new).unwrap();
        let read = read_for_offer(&root, &rp(&name), 1..=1 << 30);
        let mut update = valid_update(200 + i, &name, &new);
        update.ranges.clear();
        let (version, read, described) = (1, read.unwrap().unwrap(), None);
        batch.push(Ready {
            version,
            update,
            read,
            described,
            from: vec![],
            patch: false,
        });
        news.push(new);
    }
    let (stats, mut ended) = (super::Stats::default(), Vec::new());
    let run = super::exchanges::run(&mut fs, &stats, &batch, |at, outcome, _| {
        ended.push((at, outcome));
        Ok(())
    });
    let ran = tokio::time::timeout(Duration::from_secs(120), run).await;
    ran.expect("no side blocked for good").unwrap();
    assert_eq!(ended.len(), MAX_EXCHANGES, "each booked once");
    let acked = |o: &Offered| matches!(o, Offered::Acked(..));
    assert!(ended.iter().all(|(_, o)| acked(o)), "{ended:?}");
    for (i, new) in news.iter().enumerate() {
        let name = e.data.join(format!("f{i}"));
        assert!(std::fs::read(name).unwrap() == *new, "f{i} rebuilt");
    }
    drop(fs);
    assert!(task.await.unwrap().is_ok());
}

/// A file over 256 MiB (the cap before protocol 13) pairs by its changed chunks too: a
/// 4 KiB edit in 300 MiB costs a few KB of leaves, not the file.
#[tokio::test]
async fn a_file_over_256_mib_pairs_by_its_changed_chunks() {
    let e = env();
    let (mut fs, task) = connect(&e, PeerId::random()).await;
    let mut new = noise(300 << 20, 3);
    write_older(&e.data.join("big"), &new);
    let at = 200 << 20;
    new[at..at + 4096].copy_from_slice(&noise(4096, 4));
    let mut header = valid_update(43, "big", &new);
    header.ranges.clear();
    let (reply, sent, rounds) = honest_exchange(&mut fs, header, &new).await;
    assert_eq!(
        reply,
        Message::Ack(AckKind::Update(43)),
        "after {rounds} rounds"
    );
    assert!(std::fs::read(e.data.join("big")).unwrap() == new, "rebuilt");
    assert!(sent < 32 << 10, "{sent} bytes of leaves for a 4 KiB edit");
    drop(fs);
    assert!(task.await.unwrap().is_ok());
}

/// Our version at the path stands for the offer even when it is far smaller (a log
/// that grew while apart): only the new bytes cross.
#[tokio::test]
async fn a_file_that_grew_past_twice_its_size_pairs_by_its_new_bytes() {
    let e = env();
    let (mut fs, task) = connect(&e, PeerId::random()).await;
    let old = noise(100 << 10, 5);
    let new = [old.clone(), noise(250 << 10, 6)].concat();
    write_older(&e.data.join("log"), &old);
    let mut header = valid_update(44, "log", &new);
    header.ranges.clear();
    let (reply, sent, rounds) = honest_exchange(&mut fs, header, &new).await;
    let ack = Message::Ack(AckKind::Update(44));
    assert_eq!(reply, ack, "after {rounds} rounds");
    assert!(std::fs::read(e.data.join("log")).unwrap() == new, "rebuilt");
    assert!(
        sent < 300 << 10,
        "{sent} B of leaves: the old 100 KiB crossed again"
    );
    drop(fs);
    assert!(task.await.unwrap().is_ok());
}

/// Random-looking bytes (xorshift), `seed` picks the sequence.
pub(super) fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A leaf delta whose bitmaps do not fit our leaves, or whose delta does not decode
/// against the base it names, is refused and leaves the file alone; an honest one
/// applies, with the pieces it asked about first.
#[tokio::test]
async fn a_leaf_delta_that_does_not_fit_is_refused_and_an_honest_one_applies() {
    use crate::chunks::{leaves, pieces};
    let e = env();
    let (mut fs, task) = connect(&e, PeerId::random()).await;
    let old: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i * 7 % 26) as u8).collect();
    let mut new = old.clone();
    new.splice(10_000..10_000, b"an inserted line\n".iter().copied());
    write_older(&e.data.join("small"), &old);
    let described = leaves::describe(&old);
    let asked = pieces::to_ask(&leaves::held(&new, &described));
    assert!(!asked.is_empty(), "the leaf around the insert is lacking");
    let path = RelPath::from_bytes(b"small").unwrap();
    let ask_for = |leaves: Vec<u16>| Message::LeafAsk {
        path: path.clone(),
        leaves,
    };
    let Message::LeafPieces(hashes) = ask(&mut fs, ask_for(asked.clone())).await else {
        panic!("a leaf ask is answered by pieces")
    };
    assert_eq!(hashes, pieces::describe(&old, &asked).unwrap());
    let past = ask(&mut fs, ask_for(vec![described.len() as u16])).await;
    assert_eq!(past, Message::LeafPieces(vec![]), "a leaf past ours: none");
    let elsewhere = Message::LeafAsk {
        path: RelPath::from_bytes(b"not-here").unwrap(),
        leaves: asked.clone(),
    };
    assert_eq!(ask(&mut fs, elsewhere).await, Message::LeafPieces(vec![]));
    let (used, found, base) = pieces::shared_base(&new, &described, &asked, &hashes);
    assert!(
        found.iter().any(|&b| b != 0),
        "pieces of the lacking leaf found"
    );
    let delta = crate::delta::encode(&new, &base, 3).unwrap();
    let mut header = valid_update(50, "small", &new);
    header.ranges.clear();
    let refused = |m: &Message| {
        matches!(
            m,
            Message::Nack {
                of: AckKind::Update(50),
                ..
            }
        )
    };
    let leaf_delta =
        |used: Vec<u8>, delta: Vec<u8>, asked: Vec<u16>, found: Vec<u8>| Message::LeafDelta {
            update: header.clone(),
            used,
            delta,
            asked,
            found,
        };
    let bad = [
        leaf_delta(
            vec![0xFF; used.len() + 1],
            delta.clone(),
            asked.clone(),
            found.clone(),
        ), // more leaves than ours
        leaf_delta(
            used.clone(),
            delta.clone(),
            asked.clone(),
            vec![0xFF; found.len() + 1],
        ), // more pieces
        leaf_delta(used.clone(), delta.clone(), vec![], found.clone()), // pieces of no leaf asked
        leaf_delta(
            used.clone(),
            crate::delta::encode(&new, b"another base", 3).unwrap(),
            asked.clone(),
            found.clone(),
        ),
        leaf_delta(
            used.clone(),
            vec![0xD1, 1, 2, 3],
            asked.clone(),
            found.clone(),
        ), // not a delta at all
    ];
    for m in bad {
        assert!(refused(&ask(&mut fs, m).await));
        assert_eq!(std::fs::read(e.data.join("small")).unwrap(), old);
    }
    let honest = leaf_delta(used, delta, asked, found);
    assert_eq!(
        ask(&mut fs, honest).await,
        Message::Ack(AckKind::Update(50))
    );
    assert_eq!(std::fs::read(e.data.join("small")).unwrap(), new);
    drop(fs);
    assert!(task.await.unwrap().is_ok());
}

/// A leaf patch applies only as an `Index` entry we wanted and described: for no such
/// entry it is refused, one whose result is not the entry's content is refused and
/// leaves the file alone, and an honest one applies.
#[tokio::test]
async fn a_leaf_patch_applies_only_as_the_entry_wanted() {
    use crate::chunks::{leaves, pieces};
    use crate::wire::{IndexItem, ItemKind};
    let e = env();
    let (mut fs, task) = connect(&e, PeerId::random()).await;
    let old: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i * 7 % 26) as u8).collect();
    let mut new = old.clone();
    new.splice(10_000..10_000, b"an inserted line\n".iter().copied());
    let mut other = new.clone();
    other[5] ^= 1; // the same size, other bytes
    write_older(&e.data.join("small"), &old);
    let described = leaves::describe(&old);
    let (used, found, base) = pieces::shared_base(&new, &described, &[], &[]);
    let patch = |id: u64, content: &[u8]| Message::LeafPatch {
        id,
        path: rp("small"),
        used: used.clone(),
        delta: crate::delta::encode_bare(content, &base, 3).unwrap(),
        asked: vec![],
        found: found.clone(),
        vv: vec![(7, 1)],
    };
    let refused = |m: &Message, id: u64| matches!(m, Message::Nack { of: AckKind::Update(i), .. } if *i == id);
    assert!(
        refused(&ask(&mut fs, patch(60, &new)).await, 60),
        "no entry"
    );
    let header = valid_update(61, "small", &new);
    let entry = IndexItem {
        path: rp("small"),
        kind: ItemKind::File,
        size: new.len() as u64,
        mtime: header.mtime,
        mode: 0o644,
        hash: crate::wire::content_id(&header.hash),
        target: vec![],
        vv: vec![(7, 1)],
        deleted: false,
    };
    for (upto, id, content, ok) in [(1, 61, &other, false), (2, 62, &new, true)] {
        let index = Message::Index {
            entries: vec![entry.clone()],
            upto,
            last: true,
        };
        let Message::IndexAck { want, leaves, .. } = ask(&mut fs, index).await else {
            panic!("an index is answered by an index ack")
        };
        assert_eq!((want, leaves), (vec![1], vec![described.clone()]));
        let reply = ask(&mut fs, patch(id, content)).await;
        match ok {
            false => assert!(refused(&reply, id), "not the entry's content"),
            true => assert_eq!(reply, Message::Ack(AckKind::Update(id))),
        }
        let want = if ok { &new } else { &old };
        assert_eq!(&std::fs::read(e.data.join("small")).unwrap(), want);
    }
    drop(fs);
    assert!(task.await.unwrap().is_ok());
}

/// 300,000 random bytes (`seed`) and the same with 20 bytes changed in the middle.
fn edited(seed: u64) -> (Vec<u8>, Vec<u8>) {
    let old = noise(300_000, seed);
    let mut new = old.clone();
    new[150_000..150_020].copy_from_slice(&[0xAA; 20]);
    (old, new)
}

/// An offer of `new` as a new file at `path`, naming `from` as its source.
fn named_offer(id: u64, path: &str, new: &[u8], from: &str) -> Message {
    use crate::chunks::{Offers, Tree};
    let mut update = valid_update(id, path, new);
    update.ranges.clear();
    let tree = Tree::from_bytes(new);
    Message::ChunkOffer {
        update,
        top: Offers::new(&tree).top().into_iter().map(node).collect(),
        from: vec![rp(from)],
        sketch: vec![],
    }
}

/// Puts a live file entry of `size` bytes at `path` in the receiver's index.
fn indexed(e: &Env, path: &str, size: usize) {
    use crate::journal::index::{Entry, Kind};
    let mut entry = Entry::new(Kind::File, 0o644);
    entry.size = size as u64;
    e.receiver
        .check
        .journal
        .index()
        .put(&rp(path), entry)
        .unwrap();
}

/// A chunk offer's named source is read only if it is a live file of the receiver's
/// index and not ignored: a file kept out of sync is never a basis.
#[tokio::test]
async fn a_named_source_outside_the_index_is_not_read() {
    let e = env();
    let (mut fs, _task) = connect(&e, PeerId::random()).await;
    let (old, new) = edited(5);
    write_older(&e.data.join("local-only"), &old);
    let offer = |id, from| named_offer(id, "copy", &new, from);
    let reply = ask(&mut fs, offer(50, "local-only")).await;
    assert!(matches!(reply, Message::ChunkDecline(50)), "{reply:?}");
    // an indexed file the ignore file now keeps local
    std::fs::write(e.data.join(".syncfsignore"), "*.secret\n").unwrap();
    (e.receiver.check.journal).set_ignores(crate::ignores::Ignores::load(&e.data));
    write_older(&e.data.join("keys.secret"), &old);
    indexed(&e, "keys.secret", old.len());
    let reply = ask(&mut fs, offer(51, "keys.secret")).await;
    assert!(matches!(reply, Message::ChunkDecline(51)), "{reply:?}");
    // a live file of the index stands for the new one
    indexed(&e, "local-only", old.len());
    let reply = ask(&mut fs, offer(52, "local-only")).await;
    assert!(
        matches!(reply, Message::ChunkAnswer { id: 52, .. }),
        "{reply:?}"
    );
}

/// A named source that shares nothing with the offer gives way to the next candidate
/// (here a similar file beside the new one), not to a decline.
#[tokio::test]
async fn a_named_source_sharing_nothing_gives_way_to_a_similar_file() {
    use crate::journal::index::{Entry, Kind};
    let e = env();
    let (mut fs, _task) = connect(&e, PeerId::random()).await;
    let (old, new) = edited(8);
    std::fs::create_dir(e.data.join("dir")).unwrap();
    write_older(&e.data.join("dir/old.bin"), &old);
    write_older(&e.data.join("unrelated.bin"), &noise(300_000, 9));
    let ix = e.receiver.check.journal.index();
    ix.put(&rp("dir"), Entry::new(Kind::Dir, 0o755)).unwrap();
    indexed(&e, "dir/old.bin", old.len());
    indexed(&e, "unrelated.bin", old.len());
    let offer = named_offer(60, "dir/new.bin", &new, "unrelated.bin");
    let reply = ask(&mut fs, offer).await;
    assert!(
        matches!(reply, Message::ChunkAnswer { id: 60, .. }),
        "{reply:?}"
    );
}

/// A peer whose sketch parts do not fit the ask, lie (they decode to other content
/// of the same size) or leave the field gets a decline or a refusal, nothing applied
/// and the memory given back; honest parts then rebuild the file: leaf cells first,
/// then, for too many changes, in-place symbols.
#[tokio::test]
async fn lying_sketch_parts_rebuild_nothing_and_honest_ones_apply() {
    use crate::chunks::inplace::{self, Stream};
    use crate::chunks::{sketch, Offers, Tree};
    use crate::wire::{SKETCH_LEAVES, SKETCH_SAMPLE};
    let e = env();
    let mallory = PeerId::random();
    let (mut fs, task) = connect(&e, mallory).await;
    let old = crate::chunks::tests::text(2 << 20, 12);
    let (mut new, mut lie) = (old.clone(), old.clone());
    for i in 1..200 {
        new[i * 10_000] = b'N'; // too many for the leaf sketch: in-place symbols
        lie[i * 10_000 + 1] = b'L';
    }
    write_older(&e.data.join("big"), &old);
    let mut header = valid_update(43, "big", &new);
    header.ranges.clear();
    let part = |content: &[u8], stream, from, to| {
        if stream == SKETCH_LEAVES {
            let cells = sketch::encode(&Tree::from_bytes(content), to as usize);
            return cells[from as usize * sketch::CELL..].to_vec();
        }
        let stream = if stream == SKETCH_SAMPLE {
            Stream::Sample
        } else {
            Stream::Full
        };
        let f = crate::chunks::tests::file_of(content);
        let s = inplace::symbols(&f, content.len() as u64, stream, from, to).unwrap();
        inplace::encode(&s)
    };
    // one cell or symbol short; a symbol outside the field; a lie; the honest parts
    for case in ["short", "outside", "lie", "honest"] {
        let content = if case == "lie" { &lie } else { &new };
        let tree = Tree::from_bytes(content);
        let offer = Message::ChunkOffer {
            update: header.clone(),
            top: vec![node(Offers::new(&tree).root())],
            from: vec![],
            sketch: sketch::encode(&tree, sketch::CELLS),
        };
        let mut reply = ask(&mut fs, offer).await;
        let mut streams = Vec::new();
        while let Message::SketchAsk {
            stream, from, to, ..
        } = reply
        {
            streams.push(stream);
            let mut bytes = part(content, stream, from, to);
            match case {
                "short" => bytes.truncate(bytes.len() - 1),
                "outside" if stream != SKETCH_LEAVES => {
                    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes())
                }
                _ => {}
            }
            let msg = Message::SketchPart { id: 43, bytes };
            reply = ask(&mut fs, msg).await;
        }
        let on_disk = std::fs::read(e.data.join("big")).unwrap();
        if case == "honest" {
            assert_eq!(streams, [0, 1, 2], "leaf cells, the sample, the pieces");
            assert_eq!(reply, Message::Ack(AckKind::Update(43)));
            assert!(on_disk == new, "rebuilt and applied");
        } else {
            let refused = matches!(reply, Message::Nack { .. } | Message::ChunkDecline(43));
            assert!(refused, "{case}: {reply:?}");
            assert!(on_disk == old, "{case}: untouched");
            let held = e.receiver.budgets.of(mallory).held();
            assert_eq!(held, 0, "{case}: memory given back");
        }
    }
    drop(fs);
    assert!(task.await.unwrap().is_ok());
}
