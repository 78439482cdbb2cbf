//! Fuzz target: the frame and block decoder. Streams of valid messages, compressed as
//! the sender writes them, are mutated (bytes overwritten, cut short) or replaced by
//! garbage, and read back as the receiver reads them: no panic, every message read
//! passes validation, and an unmutated stream reads back exactly.

use super::*;
use crate::fuzzing::fuzz;
use crate::path::RelPath;
use futures::executor::block_on;
use futures::io::Cursor;
use proptest::prelude::*;

fn arb_message() -> impl Strategy<Value = Message> {
    let bytes = prop::collection::vec(any::<u8>(), 1..200);
    prop_oneof![
        any::<u64>().prop_map(Message::Ping),
        (any::<u64>(), any::<u64>()).prop_map(|(files, bytes)| Message::Queue { files, bytes }),
        (any::<u64>(), 0u64..1 << 20, bytes.clone()).prop_map(|(id, offset, data)| {
            let len = data.len() as u64;
            let r = RangeData {
                offset,
                len,
                encoding: Encoding::Raw,
                data,
            };
            Message::UpdatePart {
                id,
                ranges: vec![r],
            }
        }),
        (any::<u64>(), 0u64..1 << 20, bytes).prop_map(|(id, offset, data)| {
            let r = compress_range(offset, &data, 1);
            Message::UpdatePart {
                id,
                ranges: vec![r],
            }
        }),
        ("[a-z]{1,12}", any::<u64>()).prop_map(|(p, upto)| {
            let path = RelPath::from_bytes(p.as_bytes()).unwrap();
            let item = StagedItem {
                path,
                base: None,
                hash: [1; 32],
                upto: upto >> 24,
            };
            Message::Staged {
                items: vec![item],
                lead: upto & 1 == 1,
            }
        }),
    ]
}

/// The bytes a compressing sender writes for `msgs`, flushed after every `every`.
fn stream_of(msgs: &[Message], every: usize) -> Vec<u8> {
    let mut fs = FramedStream::new(Cursor::new(Vec::new()));
    fs.compress(3).unwrap();
    block_on(async {
        for (i, m) in msgs.iter().enumerate() {
            fs.queue(m.clone()).unwrap();
            if (i + 1) % every == 0 {
                fs.flush().await.unwrap();
            }
        }
        fs.flush().await.unwrap();
    });
    fs.into_inner().into_inner()
}

/// Every message a compressing receiver reads from `bytes` before an error or the end.
fn read_all(bytes: Vec<u8>) -> (Vec<Message>, bool) {
    let mut fs = FramedStream::new(Cursor::new(bytes));
    fs.compress(3).unwrap();
    let mut got = Vec::new();
    block_on(async {
        loop {
            match fs.recv().await {
                Ok(Some(m)) => got.push(m),
                Ok(None) => return (got, true),
                Err(_) => return (got, false),
            }
        }
    })
}

#[test]
fn fuzz_block_decoder() {
    let case = (
        prop::collection::vec(arb_message(), 1..12),
        1usize..4,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        prop::option::of(any::<prop::sample::Index>()),
    );
    fuzz("block decoder", case, |(msgs, every, edits, cut)| {
        let mut bytes = stream_of(&msgs, every);
        let pristine = edits.is_empty() && cut.is_none();
        for (at, b) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = *b;
        }
        if let Some(at) = cut {
            bytes.truncate(at.index(bytes.len()));
        }
        let (got, clean) = read_all(bytes);
        for m in &got {
            prop_assert!(encode(m).is_ok(), "a message read fails validation: {m:?}");
        }
        if pristine {
            prop_assert!(clean);
            prop_assert_eq!(got, msgs);
        }
        Ok(())
    });
}

#[test]
fn fuzz_garbage_streams() {
    let case = prop::collection::vec(any::<u8>(), 0..2048);
    fuzz("garbage streams", case, |bytes| {
        let (got, _) = read_all(bytes.clone());
        for m in &got {
            prop_assert!(encode(m).is_ok(), "a message read fails validation: {m:?}");
        }
        let mut plain = FramedStream::new(Cursor::new(bytes));
        let _ = block_on(plain.recv());
        Ok(())
    });
}
