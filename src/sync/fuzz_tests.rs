//! Fuzz target: the index decoder and the receiver's handling of a peer's index.
//! `Index` messages of random entries (paths, kinds, sizes, modes, hashes, targets,
//! versions, tombstones) are encoded, mutated and decoded; whatever decodes goes to a
//! real receiver over the real protocol. It answers each with an `IndexAck` (or ends
//! the stream on a message it refuses), nothing outside its folder changes, and a
//! valid update still applies afterwards.

use super::hostile_tests::{connect, env, valid_update, Peer};
use crate::fuzzing::fuzz;
use crate::net::PeerId;
use crate::path::RelPath;
use crate::wire::{decode, encode, AckKind, IndexItem, ItemKind, Message, WireTime};
use proptest::prelude::*;
use std::time::Duration;

fn arb_item() -> impl Strategy<Value = IndexItem> {
    let kind = prop_oneof![
        Just(ItemKind::File),
        Just(ItemKind::Dir),
        Just(ItemKind::Symlink)
    ];
    (
        (
            "[ab]{1,2}(/[ab]{1,2}){0,2}",
            kind,
            0u64..1 << 20,
            any::<u32>(),
        ),
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..12)),
        (
            prop::collection::vec((1u64..4, 1u64..50), 0..3),
            any::<bool>(),
        ),
    )
        .prop_map(|((p, kind, size, mode), (h, target), (mut vv, deleted))| {
            vv.sort();
            vv.dedup_by_key(|x| x.0);
            let mut target = target;
            if kind != ItemKind::Symlink || deleted {
                target.clear();
            } else if target.is_empty() || target.contains(&0) {
                target = b"t".to_vec();
            }
            IndexItem {
                path: RelPath::from_bytes(p.as_bytes()).unwrap(),
                kind,
                size,
                mtime: WireTime {
                    secs: 1_700_000_000,
                    nanos: 0,
                },
                mode,
                hash: [h; 16],
                target,
                vv,
                deleted,
            }
        })
}

async fn reply(fs: &mut Peer, m: Message) -> Option<Message> {
    fs.send(m).await.ok()?;
    tokio::time::timeout(Duration::from_secs(10), fs.recv())
        .await
        .ok()?
        .ok()?
}

#[test]
fn fuzz_index_decoder_and_receiver() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = env();
    let outside = e._tmp.path().join("outside");
    std::fs::write(&outside, b"untouched").unwrap();
    let who = PeerId::random();
    let peer = std::cell::RefCell::new(Some(rt.block_on(connect(&e, who)).0));
    let upto = std::cell::Cell::new(0u64);
    let edits = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3);
    let case = (prop::collection::vec(arb_item(), 1..8), edits);
    let seen = std::cell::Cell::new([0u32; 3]); // acked, refused, not decoded
    let count = |i: usize| {
        let mut c = seen.get();
        c[i] += 1;
        seen.set(c);
    };
    fuzz("index decoder", case, |(entries, edits)| {
        upto.set(upto.get() + 1);
        let msg = Message::Index {
            entries,
            upto: upto.get(),
            last: true,
        };
        let mut bytes = encode(&msg).expect("the generator makes valid entries");
        for (at, b) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = *b;
        }
        let Ok(m) = decode(&bytes) else {
            count(2);
            return Ok(());
        };
        let mut slot = peer.borrow_mut();
        let fs = match slot.as_mut() {
            Some(fs) => fs,
            None => slot.insert(rt.block_on(connect(&e, who)).0),
        };
        match rt.block_on(reply(fs, m.clone())) {
            Some(Message::IndexAck { .. }) => count(0),
            Some(other) => prop_assert!(false, "{other:?} in answer to {m:?}"),
            None => {
                count(1);
                *slot = None; // refused: the stream ended; the next case reconnects
            }
        }
        prop_assert_eq!(std::fs::read(&outside).unwrap(), b"untouched".to_vec());
        Ok(())
    });
    let [acked, refused, undecoded] = seen.get();
    eprintln!("index decoder: {acked} acked, {refused} ended the stream, {undecoded} not decoded");
    assert!(acked > 0, "no index was taken");
    let mut fs = peer
        .into_inner()
        .unwrap_or_else(|| rt.block_on(connect(&e, who)).0);
    let ok = rt.block_on(reply(
        &mut fs,
        Message::FileUpdate(valid_update(1, "after", b"still works")),
    ));
    assert_eq!(ok, Some(Message::Ack(AckKind::Update(1))));
    assert_eq!(std::fs::read(e.data.join("after")).unwrap(), b"still works");
}
