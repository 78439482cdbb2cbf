//! Tests of the wire format: round trips, pinned encodings and hostile input.

use super::*;
use crate::journal::op::{MetaOp, SetTime, Timestamp};
use crate::path::RelPath;
use futures::executor::block_on;
use futures::io::Cursor;
use proptest::prelude::*;

fn path(s: &str) -> RelPath {
    RelPath::from_bytes(s.as_bytes()).unwrap()
}

fn ts(secs: i64, nanos: u32) -> Timestamp {
    Timestamp { secs, nanos }
}

fn raw(offset: u64, bytes: &[u8]) -> RangeData {
    RangeData {
        offset,
        len: bytes.len() as u64,
        encoding: Encoding::Raw,
        data: bytes.to_vec(),
    }
}

fn update(p: &str, size: u64, ranges: Vec<RangeData>) -> FileUpdate {
    FileUpdate {
        id: 1,
        file: 2,
        path: path(p),
        base: None,
        size,
        mode: 0o100644,
        mtime: ts(5, 6).into(),
        ranges,
        hash: [0x22; 32],
        vv: vec![(3, 9)],
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn all_meta_ops() -> Vec<MetaOp> {
    vec![
        MetaOp::Create {
            path: path("a"),
            file: 9,
            mode: 0o644,
        },
        MetaOp::Mknod {
            path: path("f"),
            mode: 0o10644,
            rdev: 0,
        },
        MetaOp::Mkdir {
            path: path("d"),
            mode: 0o755,
        },
        MetaOp::Unlink {
            path: path("a"),
            file: 9,
            last_link: true,
        },
        MetaOp::Rmdir { path: path("d") },
        MetaOp::Rename {
            from: path("a"),
            to: path("d/b"),
            flags: 1,
        },
        MetaOp::Symlink {
            path: path("l"),
            target: b"../x".to_vec(),
        },
        MetaOp::Link {
            from: path("a"),
            to: path("b"),
        },
        MetaOp::Chmod {
            path: RelPath::root(),
            mode: 0o700,
        },
        MetaOp::Chown {
            path: path("a"),
            uid: Some(1),
            gid: None,
        },
        MetaOp::Truncate {
            path: path("a"),
            file: 9,
            size: 77,
        },
        MetaOp::Utimens {
            path: path("a"),
            atime: Some(SetTime::Now),
            mtime: Some(SetTime::At(ts(-1, 5))),
        },
        MetaOp::SetXattr {
            path: path("a"),
            name: b"user.x".to_vec(),
            value: vec![1, 2],
            flags: 0,
        },
        MetaOp::RemoveXattr {
            path: path("a"),
            name: b"user.x".to_vec(),
        },
    ]
}

fn all_messages() -> Vec<Message> {
    let mut u = update(
        "dir/file",
        10,
        vec![raw(0, b"ab"), compress_range(4, &[0; 6], 3)],
    );
    u.base = Some(0x0707_0707_0707_0707);
    let mut msgs = vec![
        Message::hello([1; 16], "laptop"),
        Message::Refused {
            reason: "folder mismatch".into(),
        },
        Message::FileUpdate(u),
        Message::FileUpdate(update("empty", 0, vec![])),
        Message::MetaBatch(
            all_meta_ops()
                .into_iter()
                .enumerate()
                .map(|(i, op)| MetaItem {
                    seq: i as u64 + 3,
                    op: op.into(),
                    vv: vec![(1, 2), (5, 1)],
                })
                .collect(),
        ),
        Message::Ack(AckKind::Update(1)),
        Message::Ack(AckKind::Meta(u64::MAX)),
        Message::Ping(42),
        Message::Pong(42),
    ];
    msgs.extend(all_meta_ops().into_iter().map(|op| {
        Message::Meta(MetaItem {
            seq: 1,
            op: op.into(),
            vv: vec![],
        })
    }));
    let reasons = [
        NackReason::HashMismatch,
        NackReason::UnknownBase,
        NackReason::MissingFile,
        NackReason::BadRequest("zstd-dict".into()),
        NackReason::Io("ENOSPC".into()),
    ];
    msgs.extend(reasons.into_iter().map(|reason| Message::Nack {
        of: AckKind::Update(3),
        reason,
    }));
    msgs
}

fn decode_err(bytes: &[u8]) -> WireError {
    decode(bytes).expect_err("hostile bytes decoded")
}

/// Encodes a valid update, then swaps `from` for `to` (same length) in the payload.
fn patched(u: FileUpdate, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut bytes = encode(&Message::FileUpdate(u)).unwrap();
    let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
    bytes[at..at + to.len()].copy_from_slice(to);
    bytes
}

#[test]
fn round_trips_every_message() {
    for msg in all_messages() {
        let bytes = encode(&msg).unwrap();
        assert_eq!(decode(&bytes).unwrap(), msg, "{}", msg.kind());
    }
}

#[test]
fn frames_round_trip_over_a_stream() {
    let msgs = all_messages();
    let mut out = Cursor::new(Vec::new());
    block_on(async {
        for m in &msgs {
            write_frame(&mut out, m).await.unwrap();
        }
    });
    let mut input = FramedStream::new(Cursor::new(out.into_inner()));
    let got: Vec<Message> = block_on(async {
        let mut got = Vec::new();
        while let Some(m) = input.recv().await.unwrap() {
            got.push(m);
        }
        got
    });
    assert_eq!(got, msgs);
}

#[test]
fn pinned_hello_encoding() {
    let msg = Message::Hello {
        version: 1,
        folder_id: [0x11; 16],
        node_name: "ab".into(),
    };
    let expected = concat!(
        "00000000",                         // variant 0: Hello
        "01000000",                         // version: u32 LE
        "11111111111111111111111111111111", // folder_id: 16 bytes, no length
        "0200000000000000",                 // node_name length: u64 LE
        "6162",                             // "ab"
    );
    assert_eq!(hex(&encode(&msg).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), msg);
}

#[test]
fn pinned_file_update_encoding() {
    let msg = Message::FileUpdate(update("a", 3, vec![raw(0, b"xyz")]));
    let expected = concat!(
        "02000000",         // variant 2: FileUpdate
        "0100000000000000", // id
        "0200000000000000", // file
        "0100000000000000", // path length
        "61",               // "a"
        "00",               // base: None
        "0300000000000000", // size
        "a4810000",         // mode 0o100644
        "0500000000000000", // mtime.secs: i64
        "06000000",         // mtime.nanos: u32
        "0100000000000000", // one range
        "0000000000000000", //   offset
        "0300000000000000", //   len
        "00000000",         //   encoding: Raw
        "0300000000000000", //   data length
        "78797a",           //   "xyz"
        "2222222222222222222222222222222222222222222222222222222222222222", // hash
        "0100000000000000", // vv: one pair
        "0300000000000000", //   node 3
        "0900000000000000", //   counter 9
    );
    assert_eq!(hex(&encode(&msg).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), msg);
}

#[test]
fn pinned_ack_encoding() {
    let msg = Message::Ack(AckKind::Update(7));
    let expected = concat!(
        "05000000",         // variant 5: Ack
        "00000000",         // AckKind::Update
        "0700000000000000", // id
    );
    assert_eq!(hex(&encode(&msg).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), msg);
}

#[test]
fn pinned_frame_prefix() {
    let mut out = Cursor::new(Vec::new());
    block_on(write_frame(&mut out, &Message::Ping(1))).unwrap();
    assert_eq!(hex(&out.into_inner()), "0c000000070000000100000000000000");
}

#[test]
fn clean_eof_is_none() {
    let mut r = Cursor::new(Vec::<u8>::new());
    assert!(block_on(read_frame(&mut r)).unwrap().is_none());
}

#[test]
fn rejects_oversized_length_prefix() {
    for len in [u32::MAX, MAX_FRAME as u32 + 1] {
        let mut r = Cursor::new(len.to_le_bytes().to_vec());
        let err = block_on(read_frame(&mut r)).unwrap_err();
        assert!(matches!(err, WireError::FrameTooLarge { .. }), "{err}");
    }
}

#[test]
fn rejects_truncated_frames() {
    let mut r = Cursor::new(vec![12, 0]);
    let err = block_on(read_frame(&mut r)).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::Truncated {
                expected: 4,
                got: 2
            }
        ),
        "{err}"
    );
    let mut bytes = 12u32.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[7, 0, 0]);
    let err = block_on(read_frame(&mut Cursor::new(bytes))).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::Truncated {
                expected: 12,
                got: 3
            }
        ),
        "{err}"
    );
}

#[test]
fn rejects_garbage_and_trailing_bytes() {
    assert!(matches!(decode_err(&[]), WireError::Decode(_)));
    assert!(matches!(decode_err(&[0xff; 40]), WireError::Decode(_)));
    let mut ok = encode(&Message::Ping(1)).unwrap();
    ok.push(0);
    assert!(matches!(decode_err(&ok), WireError::Decode(_)));
}

#[test]
fn rejects_huge_declared_collection_without_allocating() {
    // A FileUpdate whose range count claims u64::MAX entries.
    let mut bytes = encode(&Message::FileUpdate(update("a", 0, vec![]))).unwrap();
    let count_at = bytes.len() - 24 - 32 - 8; // before the hash and the vv
    assert_eq!(bytes[count_at..count_at + 8], [0; 8]);
    bytes[count_at..count_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(decode_err(&bytes), WireError::Decode(_)));
}

#[test]
fn rejects_escaping_paths_inside_valid_updates() {
    let u = update("xx", 3, vec![raw(0, b"xyz")]);
    assert!(matches!(
        decode_err(&patched(u, b"xx", b"..")),
        WireError::Decode(_)
    ));
    let u = update("aaaaaa", 3, vec![raw(0, b"xyz")]);
    assert!(matches!(
        decode_err(&patched(u, b"aaaaaa", b"a/../b")),
        WireError::Decode(_)
    ));
    let u = update("aaaa", 3, vec![raw(0, b"xyz")]);
    assert!(matches!(
        decode_err(&patched(u, b"aaaa", b"/etc")),
        WireError::Decode(_)
    ));
}

#[test]
fn rejects_root_path_update() {
    let mut u = update("a", 3, vec![raw(0, b"xyz")]);
    u.path = RelPath::root();
    let err = encode(&Message::FileUpdate(u)).unwrap_err();
    assert!(
        matches!(err, WireError::Invalid(Violation::RootPath("path"))),
        "{err}"
    );
}

#[test]
fn rejects_bad_ranges() {
    let cases: Vec<(FileUpdate, Violation)> = vec![
        (
            update("a", 2, vec![raw(0, b"xyz")]),
            Violation::RangeBeyondSize { index: 0, size: 2 },
        ),
        (
            update("a", u64::MAX, vec![raw(u64::MAX - 1, b"xyz")]),
            Violation::RangeBeyondSize {
                index: 0,
                size: u64::MAX,
            },
        ),
        (
            update("a", 9, vec![raw(4, b"x"), raw(0, b"y")]),
            Violation::RangeOrder { index: 1 },
        ),
        (
            update("a", 9, vec![raw(0, b"xyz"), raw(2, b"y")]),
            Violation::RangeOrder { index: 1 },
        ),
        (
            update("a", 9, vec![raw(0, b"")]),
            Violation::EmptyRange { index: 0 },
        ),
    ];
    for (u, want) in cases {
        assert_eq!(validated(u), want);
    }
}

/// Encodes without validation (as a hostile peer would) and returns the decode violation.
fn validated(u: FileUpdate) -> Violation {
    use bincode::Options;
    let bytes = bincode::DefaultOptions::new()
        .with_little_endian()
        .with_fixint_encoding()
        .serialize(&Message::FileUpdate(u))
        .unwrap();
    match decode_err(&bytes) {
        WireError::Invalid(v) => v,
        other => panic!("expected a violation, got {other}"),
    }
}

#[test]
fn rejects_length_lies() {
    let mut r = raw(0, b"xyz");
    r.len = 2;
    assert_eq!(
        validated(update("a", 9, vec![r])),
        Violation::RawLength {
            index: 0,
            declared: 2,
            actual: 3
        }
    );
    let r = RangeData {
        offset: 0,
        len: 2,
        encoding: Encoding::Zstd,
        data: vec![0; 3],
    };
    assert!(matches!(
        validated(update("a", 9, vec![r])),
        Violation::CompressedTooLarge { .. }
    ));
    let big = RangeData {
        offset: 0,
        len: MAX_RANGE_LEN as u64 + 1,
        encoding: Encoding::Zstd,
        data: vec![0; 3],
    };
    assert!(matches!(
        validated(update("a", u64::MAX, vec![big])),
        Violation::RangeTooLong { .. }
    ));
}

#[test]
fn rejects_update_span_over_limit() {
    let step = MAX_RANGE_LEN as u64;
    let ranges = (0..=(MAX_UPDATE_SPAN / step))
        .map(|i| RangeData {
            offset: i * step,
            len: step,
            encoding: Encoding::Zstd,
            data: vec![0; 8],
        })
        .collect();
    assert_eq!(
        validated(update("a", u64::MAX, ranges)),
        Violation::UpdateTooLarge {
            max: MAX_UPDATE_SPAN
        }
    );
}

#[test]
fn rejects_bad_meta() {
    let bad_time = MetaOp::Utimens {
        path: path("a"),
        atime: Some(SetTime::At(ts(0, 1_000_000_000))),
        mtime: None,
    };
    assert!(encode(&Message::Meta(item(1, bad_time))).is_err());
    let bad_link = MetaOp::Symlink {
        path: path("l"),
        target: b"a\0b".to_vec(),
    };
    assert!(encode(&Message::Meta(item(1, bad_link))).is_err());
    let root_mkdir = MetaOp::Mkdir {
        path: RelPath::root(),
        mode: 0o755,
    };
    assert!(encode(&Message::Meta(item(1, root_mkdir))).is_err());
    let rmdir = MetaOp::Rmdir { path: path("d") };
    let unordered = vec![item(2, rmdir.clone()), item(2, rmdir.clone())];
    let err = encode(&Message::MetaBatch(unordered)).unwrap_err();
    assert!(
        matches!(err, WireError::Invalid(Violation::SeqOrder { seq: 2 })),
        "{err}"
    );
    assert!(encode(&Message::MetaBatch(vec![])).is_err());
    for bad in [vec![(2, 1), (1, 1)], vec![(1, 1), (1, 2)], vec![(1, 0)]] {
        let m = Message::Meta(MetaItem {
            seq: 1,
            op: rmdir.clone().into(),
            vv: bad,
        });
        let err = encode(&m).unwrap_err();
        assert!(
            matches!(err, WireError::Invalid(Violation::BadVersion)),
            "{err}"
        );
    }
}

fn item(seq: u64, op: MetaOp) -> MetaItem {
    MetaItem {
        seq,
        op: op.into(),
        vv: vec![],
    }
}

#[test]
fn refuses_oversized_messages_on_encode() {
    let big = vec![7u8; MAX_FRAME];
    let msg = Message::FileUpdate(update("a", big.len() as u64, vec![raw(0, &big)]));
    assert!(matches!(
        encode(&msg).unwrap_err(),
        WireError::MessageTooLarge { .. }
    ));
}

#[test]
fn compress_picks_the_smaller_encoding() {
    let zeros = compress_range(10, &[0; 4096], 3);
    assert_eq!(zeros.encoding, Encoding::Zstd);
    assert!(zeros.data.len() < 4096);
    assert_eq!(decompress_range(&zeros).unwrap(), vec![0; 4096]);
    let noise: Vec<u8> = (0..64u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let r = compress_range(0, &noise, 3);
    assert_eq!(r.encoding, Encoding::Raw);
    assert_eq!(decompress_range(&r).unwrap(), noise);
}

#[test]
fn decompression_bomb_is_an_error() {
    let mut r = compress_range(0, &[0; 100_000], 3);
    r.len = 1000;
    assert!(matches!(
        decompress_range(&r).unwrap_err(),
        WireError::Decompress(_)
    ));
    r.len = 200_000;
    assert!(matches!(
        decompress_range(&r).unwrap_err(),
        WireError::LengthMismatch { .. }
    ));
    r.len = u64::MAX;
    assert!(decompress_range(&r).is_err());
    let corrupt = RangeData {
        offset: 0,
        len: 10,
        encoding: Encoding::Zstd,
        data: vec![1, 2, 3],
    };
    assert!(matches!(
        decompress_range(&corrupt).unwrap_err(),
        WireError::Decompress(_)
    ));
}

#[test]
fn deltas_need_the_old_bytes() {
    for encoding in [Encoding::ZstdDict, Encoding::Joint] {
        let r = RangeData {
            offset: 0,
            len: 4,
            encoding,
            data: vec![1],
        };
        assert!(matches!(
            decompress_range(&r).unwrap_err(),
            WireError::Unsupported(_)
        ));
    }
}

#[test]
fn handshake_checks() {
    let folder = [3; 16];
    assert_eq!(
        check_hello(&Message::hello(folder, "peer"), &folder).unwrap(),
        "peer"
    );
    assert!(matches!(
        check_hello(&Message::hello([4; 16], "p"), &folder),
        Err(WireError::FolderMismatch)
    ));
    let other = Message::Hello {
        version: PROTOCOL_VERSION + 1,
        folder_id: folder,
        node_name: "p".into(),
    };
    assert!(matches!(
        check_hello(&other, &folder),
        Err(WireError::VersionMismatch { ours, theirs })
            if ours == PROTOCOL_VERSION && theirs == ours + 1
    ));
    let refused = Message::Refused {
        reason: "no".into(),
    };
    assert!(matches!(
        check_hello(&refused, &folder),
        Err(WireError::Refused(_))
    ));
    assert!(matches!(
        check_hello(&Message::Ping(1), &folder),
        Err(WireError::Unexpected { .. })
    ));
}

fn arb_update() -> impl Strategy<Value = FileUpdate> {
    let ranges = prop::collection::vec(
        (
            0u64..1000,
            prop::collection::vec(any::<u8>(), 1..64),
            any::<bool>(),
        ),
        0..8,
    );
    let fields = (
        any::<u64>(),
        any::<u64>(),
        "[a-z.]{1,8}(/[a-z]{1,8}){0,3}",
        any::<Option<u64>>(),
        0u64..1000,
    );
    (
        fields,
        any::<u32>(),
        any::<i64>(),
        0u32..1_000_000_000,
        ranges,
        any::<[u8; 32]>(),
    )
        .prop_filter_map(
            "valid path",
            |((id, file, p, base, extra), mode, secs, nanos, spec, hash)| {
                let path = RelPath::from_bytes(p.as_bytes()).ok()?;
                let (ranges, end) = build_ranges(spec);
                let mtime = ts(secs, nanos).into();
                Some(FileUpdate {
                    id,
                    file,
                    path,
                    base,
                    size: end + extra,
                    mode,
                    mtime,
                    ranges,
                    hash,
                    vv: vec![],
                })
            },
        )
}

fn build_ranges(spec: Vec<(u64, Vec<u8>, bool)>) -> (Vec<RangeData>, u64) {
    let mut end = 0;
    let mut ranges = Vec::new();
    for (gap, bytes, squeeze) in spec {
        let r = if squeeze {
            compress_range(end + gap, &bytes, 1)
        } else {
            raw(end + gap, &bytes)
        };
        end = r.end().unwrap();
        ranges.push(r);
    }
    (ranges, end)
}

proptest! {
    #[test]
    fn prop_file_update_round_trips(u in arb_update()) {
        let msg = Message::FileUpdate(u);
        let bytes = encode(&msg).unwrap();
        prop_assert_eq!(decode(&bytes).unwrap(), msg);
    }

    #[test]
    fn prop_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes);
        let _ = block_on(read_frame(&mut Cursor::new(bytes)));
    }

    #[test]
    fn prop_mutated_updates_never_panic(u in arb_update(), at in any::<prop::sample::Index>(), b in any::<u8>()) {
        let mut bytes = encode(&Message::FileUpdate(u)).unwrap();
        let i = at.index(bytes.len());
        bytes[i] = b;
        let _ = decode(&bytes);
    }
}

#[test]
fn compressed_streams_round_trip_and_shrink_repeats() {
    let path = RelPath::from_bytes(b"dir/a-long-file-name-that-every-op-repeats.txt").unwrap();
    let ops: Vec<Message> = (0..200u64)
        .map(|seq| {
            let op = MetaOp::Unlink {
                path: path.clone(),
                file: seq,
                last_link: true,
            };
            Message::Meta(item(seq, op))
        })
        .collect();
    let mut plain = FramedStream::new(Cursor::new(Vec::new()));
    let mut packed = FramedStream::new(Cursor::new(Vec::new()));
    packed.compress(3).unwrap();
    block_on(async {
        plain.send(Message::Ping(9)).await.unwrap();
        packed.send(Message::Ping(9)).await.unwrap();
        for m in &ops {
            plain.queue(m.clone()).unwrap();
            packed.queue(m.clone()).unwrap();
        }
        plain.flush().await.unwrap();
        packed.flush().await.unwrap();
    });
    let (a, b) = (
        plain.into_inner().into_inner(),
        packed.into_inner().into_inner(),
    );
    assert!(
        b.len() * 2 < a.len(),
        "compressed {} vs {}",
        b.len(),
        a.len()
    );
    let mut r = FramedStream::new(Cursor::new(b.clone()));
    r.compress(1).unwrap();
    block_on(async {
        assert_eq!(r.recv().await.unwrap(), Some(Message::Ping(9)));
        for m in &ops {
            assert_eq!(r.recv().await.unwrap().as_ref(), Some(m));
        }
        assert_eq!(r.recv().await.unwrap(), None);
    });
    // A reader that did not switch compression on cannot take these frames for plain ones.
    let mut wrong = FramedStream::new(Cursor::new(b));
    assert_eq!(
        block_on(wrong.recv()).unwrap(),
        Some(Message::Ping(9)),
        "tiny: raw"
    );
    assert!(block_on(wrong.recv()).is_err());
}

#[test]
fn a_block_ending_inside_a_frame_is_an_error() {
    let mut frames = Vec::new();
    for i in 0..6 {
        encode_frame(&Message::Ping(i), &mut frames).unwrap();
    }
    frames.extend_from_slice(&100u32.to_le_bytes());
    frames.extend_from_slice(&[0; 10]); // a frame of 100 bytes cut after 10
    let mut block = (frames.len() as u32).to_le_bytes().to_vec(); // the frames' length
    block.extend_from_slice(&frames);
    let mut c = compress::Compressor::new(3).unwrap();
    let mut body = Vec::new();
    c.block(&block, &mut body).unwrap();
    let mut wire = (body.len() as u32 | 1 << 31).to_le_bytes().to_vec();
    wire.extend_from_slice(&body);
    let mut r = FramedStream::new(Cursor::new(wire));
    r.compress(3).unwrap();
    block_on(async {
        for i in 0..6 {
            assert_eq!(r.recv().await.unwrap(), Some(Message::Ping(i)));
        }
        assert!(matches!(r.recv().await, Err(WireError::Truncated { .. })));
    });
}

#[test]
fn rejects_sizes_past_the_file_size_limit() {
    assert_eq!(
        validated(update("a", 1 << 62, vec![raw(0, b"xyz")])),
        Violation::TooLarge {
            field: "size",
            value: 1 << 62,
            max: MAX_FILE_SIZE,
        }
    );
    let t = Message::Meta(item(
        1,
        MetaOp::Truncate {
            path: path("a"),
            file: 1,
            size: 1 << 62,
        },
    ));
    assert!(encode(&t).is_err(), "a truncate to 2^62 is refused");
}

#[test]
fn pinned_meta_item_encoding() {
    let msg = Message::Meta(MetaItem {
        seq: 1,
        op: WireOp::Rmdir { path: path("d") },
        vv: vec![(7, 2)],
    });
    let expected = concat!(
        "03000000",         // variant 3: Meta
        "0100000000000000", // seq
        "04000000",         // op: variant 4, Rmdir
        "0100000000000000", // path length
        "64",               // "d"
        "0100000000000000", // vv: one pair
        "0700000000000000", //   node 7
        "0200000000000000", //   counter 2
    );
    assert_eq!(hex(&encode(&msg).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), msg);
}

#[test]
fn wire_ops_mirror_the_journal_ops_byte_for_byte() {
    use bincode::Options;
    for op in all_meta_ops() {
        let wire = WireOp::from(op.clone());
        assert_eq!(MetaOp::from(wire.clone()), op, "{}", op.kind());
        // Before the wire had its own types it shipped `MetaOp` itself: the bytes of a
        // `Meta` message must be exactly what they were then.
        let journal_bytes = codec::codec().serialize(&op).unwrap();
        assert_eq!(
            codec::codec().serialize(&wire).unwrap(),
            journal_bytes,
            "{}",
            op.kind()
        );
        let mut before = unhex("030000000500000000000000"); // Meta, seq 5
        before.extend_from_slice(&journal_bytes);
        before.extend_from_slice(&[0; 8]); // vv: no pairs
        let msg = Message::Meta(MetaItem {
            seq: 5,
            op: wire,
            vv: vec![],
        });
        assert_eq!(encode(&msg).unwrap(), before, "{}", op.kind());
        assert_eq!(decode(&before).unwrap(), msg, "{}", op.kind());
    }
}

#[test]
fn pinned_utimens_encoding() {
    let msg = Message::Meta(MetaItem {
        seq: 1,
        op: WireOp::Utimens {
            path: path("a"),
            atime: Some(WireSetTime::Now),
            mtime: Some(WireSetTime::At(WireTime { secs: -1, nanos: 5 })),
        },
        vv: vec![],
    });
    let expected = concat!(
        "03000000",         // variant 3: Meta
        "0100000000000000", // seq
        "0b000000",         // op: variant 11, Utimens
        "0100000000000000", // path length
        "61",               // "a"
        "01",               // atime: Some
        "01000000",         //   variant 1: Now
        "01",               // mtime: Some
        "00000000",         //   variant 0: At
        "ffffffffffffffff", //   secs: -1
        "05000000",         //   nanos
        "0000000000000000", // vv: no pairs
    );
    assert_eq!(hex(&encode(&msg).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), msg);
}

#[test]
fn pinned_index_encoding() {
    let msg = Message::Index {
        entries: vec![IndexItem {
            path: path("d"),
            kind: ItemKind::Dir,
            size: 0,
            mtime: ts(1, 2).into(),
            mode: 0o755,
            hash: [0; 16],
            target: vec![],
            vv: vec![(7, 1)],
            deleted: false,
        }],
        upto: 9,
        last: true,
    };
    let expected = concat!(
        "0a000000",                         // variant 10: Index
        "0100000000000000",                 // one entry
        "0100000000000000",                 //   path length
        "64",                               //   "d"
        "01000000",                         //   kind: Dir
        "0000000000000000",                 //   size
        "0100000000000000",                 //   mtime.secs
        "02000000",                         //   mtime.nanos
        "ed010000",                         //   mode 0o755
        "00000000000000000000000000000000", //   content id: 16 bytes
        "0000000000000000",                 //   target: empty
        "0100000000000000",                 //   vv: one pair
        "0700000000000000",                 //     node 7
        "0100000000000000",                 //     counter 1
        "00",                               //   deleted: false
        "0900000000000000",                 // upto
        "01",                               // last: true
    );
    assert_eq!(hex(&encode(&msg).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), msg);
    let ack = Message::IndexAck {
        upto: 5,
        want: vec![0b10],
        leaves: vec![vec![0xC3D4, 0x01]],
    };
    let expected = concat!(
        "0b000000",         // variant 11: IndexAck
        "0500000000000000", // upto
        "0100000000000000", // a bitmap of one byte:
        "02",               //   the second entry is wanted
        "0100000000000000", // leaves of one file:
        "0400000000000000", //   4 bytes, two leaves
        "d4c3",             //     the first one's short hash
        "0100",             //     the second one's
    );
    assert_eq!(hex(&encode(&ack).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), ack);
}

#[test]
fn bitmaps_round_trip_and_refuse_what_does_not_fit() {
    let bits = crate::wire::bitmap(10, [0, 7, 9, 12]);
    assert_eq!(bits, [0b1000_0001, 0b10], "a bit past n is left out");
    assert_eq!(crate::wire::bitmap_ones(&bits, 10), Some(vec![0, 7, 9]));
    assert_eq!(
        crate::wire::bitmap_ones(&bits, 9),
        None,
        "bit 9 is past 9 bits"
    );
    assert_eq!(crate::wire::bitmap_ones(&bits, 17), None, "too short");
    assert_eq!(crate::wire::bitmap_ones(&[], 0), Some(vec![]));
}

#[test]
fn an_index_ack_describes_no_more_files_than_it_wants() {
    let ack = |want: Vec<u8>, files: usize| Message::IndexAck {
        upto: 1,
        want,
        leaves: vec![vec![1]; files],
    };
    assert!(encode(&ack(vec![0b11], 2)).is_ok());
    assert!(
        encode(&ack(vec![0b01], 2)).is_err(),
        "two described, one wanted"
    );
    assert!(
        encode(&ack(vec![0; 2049], 0)).is_err(),
        "a bitmap past the index limit"
    );
    let wide = Message::IndexAck {
        upto: 1,
        want: vec![1],
        leaves: vec![vec![0x1_0000]],
    };
    assert!(encode(&wide).is_err(), "a leaf hash wider than 2 bytes");
    let ragged = concat!(
        "0b000000",         // IndexAck
        "0100000000000000", // upto
        "0100000000000000", // a bitmap of one byte:
        "01",               //   the first entry is wanted
        "0100000000000000", // leaves of one file:
        "0300000000000000", //   3 bytes: not a whole number of 2-byte hashes
        "010203",
    );
    assert!(decode(&unhex(ragged)).is_err(), "a partial leaf hash");
}

#[test]
fn queue_notice_encoding_is_pinned() {
    let msg = Message::Queue {
        files: 3,
        bytes: 0x1_0000,
    };
    let expected = concat!(
        "0e000000",         // variant 14: Queue
        "0300000000000000", // files
        "0000010000000000", // bytes
    );
    assert_eq!(hex(&encode(&msg).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), msg);
}

#[test]
fn rejects_bad_index_entries() {
    let good = IndexItem {
        path: path("l"),
        kind: ItemKind::Symlink,
        size: 0,
        mtime: ts(1, 2).into(),
        mode: 0o777,
        hash: [1; 16],
        target: b"t".to_vec(),
        vv: vec![],
        deleted: false,
    };
    let msg = |it: IndexItem| Message::Index {
        entries: vec![it],
        upto: 1,
        last: true,
    };
    assert!(encode(&msg(good.clone())).is_ok());
    let bad = [
        IndexItem {
            target: vec![],
            ..good.clone()
        },
        IndexItem {
            target: b"a\0b".to_vec(),
            ..good.clone()
        },
        IndexItem {
            kind: ItemKind::File,
            ..good.clone()
        },
        IndexItem {
            vv: vec![(1, 0)],
            ..good.clone()
        },
        IndexItem {
            path: RelPath::root(),
            ..good.clone()
        },
        IndexItem {
            size: u64::MAX,
            ..good.clone()
        },
    ];
    for b in bad {
        assert!(encode(&msg(b.clone())).is_err(), "{b:?}");
    }
}

#[test]
fn pinned_summary_encoding() {
    let msg = Message::Summary {
        dirs: vec![DirDigest {
            key: 0x0b_0c0d,
            digest: 0x0304_0506_0708,
        }],
        last: true,
        list: false,
        sketch: vec![],
        sum: 0,
    };
    let expected = concat!(
        "0c000000",         // variant 12: Summary
        "0100000000000000", // one directory
        "0d0c0b",           //   key: 3 bytes
        "080706050403",     //   digest: 6 bytes
        "01",               // last
        "00",               // list: a sketch may answer
        "0000000000000000", // no sketch of the directories
        "0000000000000000", // sum (of a sketch's set)
    );
    assert_eq!(hex(&encode(&msg).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), msg);
    let sketched = Message::Summary {
        dirs: vec![],
        last: true,
        list: false,
        sketch: crate::iblt::Table::new(4, 9).encode(),
        sum: 3,
    };
    let expected = concat!(
        "0c000000",
        "0000000000000000", // no directories listed:
        "01",
        "00",
        "3400000000000000", // a sketch of 4 cells of 13 bytes
        "00000000000000000000000000",
        "00000000000000000000000000",
        "00000000000000000000000000",
        "00000000000000000000000000",
        "0300000000000000", // its set's sum
    );
    assert_eq!(hex(&encode(&sketched).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), sketched);
    let both = Message::Summary {
        dirs: vec![DirDigest { key: 1, digest: 1 }],
        last: true,
        list: false,
        sketch: crate::iblt::Table::new(4, 9).encode(),
        sum: 3,
    };
    assert!(encode(&both).is_err(), "directories beside a sketch");
    let wide = |key| Message::Summary {
        dirs: vec![DirDigest { key, digest: 1 }],
        last: true,
        list: true,
        sketch: vec![],
        sum: 0,
    };
    assert!(encode(&wide(1 << 24)).is_err(), "a key wider than 3 bytes");
    let ack = Message::SummaryAck {
        differ: vec![0b0000_0101],
        same: vec![0x0000_0304_0506_0708, 0x0000_0a0b_0c0d_0e0f],
        held: vec![0b01],
        sketch: vec![],
        sum: 0,
        newest: None,
    };
    let expected = concat!(
        "0d000000",         // variant 13: SummaryAck
        "0100000000000000", // a bitmap of one byte:
        "05",               //   directories 0 and 2 differ
        "0c00000000000000", // entry digests: 12 bytes
        "080706050403",     //   6 bytes each, little-endian
        "0f0e0d0c0b0a",
        "0100000000000000", // held: a bitmap over the two that differ:
        "01",               //   the receiver holds directory 0, not 2
        "0000000000000000", // no sketch
        "0000000000000000", // sum (of a sketch's set)
        "00",               // newest: none (the receiver does not follow)
    );
    assert_eq!(hex(&encode(&ack).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), ack);
    let sketched = Message::SummaryAck {
        differ: vec![0b1],
        same: vec![],
        held: vec![0b1],
        sketch: crate::iblt::Table::new(4, 6).encode(),
        sum: 0x0102,
        newest: Some(WireTime {
            secs: 0x0102_0304,
            nanos: 5,
        }),
    };
    let expected = concat!(
        "0d000000",
        "0100000000000000",
        "01",
        "0000000000000000", // no list
        "0100000000000000",
        "01",
        "2800000000000000",     // a sketch of 4 cells of 10 bytes:
        "00000000000000000000", // count, key XOR (6 bytes), check XOR (3 bytes)
        "00000000000000000000",
        "00000000000000000000",
        "00000000000000000000",
        "0201000000000000", // its set's sum
        "01",               // newest (the receiver follows):
        "0403020100000000", //   seconds
        "05000000",         //   nanoseconds
    );
    assert_eq!(hex(&encode(&sketched).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), sketched);
    let ack_of = |same: Vec<u64>, held: Vec<u8>, sketch: Vec<u8>| Message::SummaryAck {
        differ: vec![0b1],
        same,
        held,
        sketch,
        sum: 0,
        newest: None,
    };
    let table = crate::iblt::Table::new(4, 6).encode();
    assert!(
        encode(&ack_of(vec![1], vec![1], table.clone())).is_err(),
        "a list beside a sketch"
    );
    assert!(
        encode(&ack_of(vec![], vec![1], vec![0; 30])).is_err(),
        "3 cells"
    );
    let unheld = ack_of(vec![], vec![], table);
    assert!(encode(&unheld).is_err(), "no held bitmap");
    let wide = Message::SummaryAck {
        differ: vec![1],
        same: vec![1 << 48],
        held: vec![1],
        sketch: vec![],
        sum: 0,
        newest: None,
    };
    assert!(encode(&wide).is_err(), "a digest wider than 6 bytes");
    let late = Message::SummaryAck {
        differ: vec![1],
        same: vec![1],
        held: vec![1],
        sketch: vec![],
        sum: 0,
        newest: Some(WireTime {
            secs: 1,
            nanos: 1_000_000_000,
        }),
    };
    assert!(
        encode(&late).is_err(),
        "a newest mtime of a whole second's nanos"
    );
    let torn = concat!(
        "0d000000",
        "0100000000000000",
        "01",
        "0500000000000000",
        "0807060504",
        "0100000000000000",
        "01",
        "0000000000000000",
        "0000000000000000",
    );
    assert!(decode(&unhex(torn)).is_err(), "digests of 6 bytes each");
}

#[test]
fn a_directory_digest_depends_on_its_path_and_children() {
    let (a, b) = (path("a"), path("b"));
    let d = DirDigest::of(&a, &[1; 16]);
    assert_eq!(d, DirDigest::of(&a, &[1; 16]));
    assert_eq!(d.key, DirDigest::key_of(&a));
    assert_ne!(
        d.digest,
        DirDigest::of(&a, &[2; 16]).digest,
        "other children"
    );
    assert_ne!(
        d.digest,
        DirDigest::of(&b, &[1; 16]).digest,
        "another directory"
    );
    // pinned: the first 3 and 6 bytes (LE) of the BLAKE3 hashes in PROTOCOL.md
    let mut key = [0u8; 4];
    key[..3].copy_from_slice(&blake3::hash(b"a").as_bytes()[..3]);
    assert_eq!(d.key, u32::from_le_bytes(key));
    let mut fed = 1u64.to_le_bytes().to_vec();
    fed.extend_from_slice(b"a");
    fed.extend_from_slice(&[1; 16]);
    let mut digest = [0u8; 8];
    digest[..6].copy_from_slice(&blake3::hash(&fed).as_bytes()[..6]);
    assert_eq!(d.digest, u64::from_le_bytes(digest));
}

#[test]
fn pinned_resume_encodings() {
    let msg = Message::UpdateStart {
        id: 7,
        path: RelPath::from_bytes(b"a").unwrap(),
        base: None,
        hash: [0x22; 32],
        from: 0x10_0000,
    };
    let expected = concat!(
        "0f000000",         // variant 15: UpdateStart
        "0700000000000000", // id
        "0100000000000000", // path length
        "61",               // "a"
        "00",               // base: None
        "2222222222222222222222222222222222222222222222222222222222222222", // hash
        "0000100000000000", // from: 1 MiB
    );
    assert_eq!(hex(&encode(&msg).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), msg);
    let msg = Message::Staged {
        items: vec![crate::wire::StagedItem {
            path: RelPath::from_bytes(b"a").unwrap(),
            base: Some(0x1111_1111_1111_1111),
            hash: [0x22; 32],
            upto: 5,
        }],
        lead: true,
    };
    let expected = concat!(
        "10000000",         // variant 16: Staged
        "0100000000000000", // one item
        "0100000000000000", //   path length
        "61",               //   "a"
        "01",               //   base: Some, its id
        "1111111111111111",
        "2222222222222222222222222222222222222222222222222222222222222222", // hash
        "0500000000000000",                                                 //   upto
        "01",                                                               // lead
    );
    assert_eq!(hex(&encode(&msg).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), msg);
    let root = Message::UpdateStart {
        id: 1,
        path: RelPath::root(),
        base: None,
        hash: [0; 32],
        from: 0,
    };
    assert!(encode(&root).is_err(), "an update of the root is refused");
}

#[test]
fn pinned_chunk_exchange_encodings() {
    let node = crate::wire::ChunkNode {
        hash: 0x0304_0506_0708,
        len: 512,
        leaf: true,
    };
    let msg = Message::ChunkAnswer {
        id: 9,
        answers: vec![0, 1, 2, 3, 4],
    };
    let expected = concat!(
        "12000000",         // variant 18: ChunkAnswer
        "0900000000000000", // id
        "0500000000000000", // five answers
        "0001020304",
    );
    assert_eq!(hex(&encode(&msg).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), msg);
    let msg = Message::ChunkRound {
        id: 9,
        children: vec![vec![node]],
        data: b"ab".to_vec(),
        blocks: vec![1, 2, 3, 4, 5, 6],
        matched: vec![0, 1, 1, 3, 0],
    };
    let expected = concat!(
        "13000000",         // variant 19: ChunkRound
        "0900000000000000", // id
        "0100000000000000", // one children list
        "0100000000000000", //   of one node
        "080706050403",     //     hash (48 bits)
        "00020000",         //     len 512 (u32)
        "01",               //     leaf
        "0200000000000000", // two bytes of leaves
        "6162",
        "0600000000000000", // one block hash
        "010203040506",
        "0500000000000000", // matched ops: no literal, block 0 alone, 3 bytes, end
        "0001010300",
    );
    assert_eq!(hex(&encode(&msg).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), msg);
    let msg = Message::ChunkDecline(9);
    assert_eq!(hex(&encode(&msg).unwrap()), "140000000900000000000000");
    // answers other than 0 to 4, empty nodes, block hashes not of 6 bytes each and
    // offers carrying ranges are refused
    let bad = Message::ChunkAnswer {
        id: 1,
        answers: vec![5],
    };
    assert!(encode(&bad).is_err());
    let wide = crate::wire::ChunkNode {
        hash: 1 << 48,
        ..node
    };
    let bad = Message::ChunkRound {
        id: 1,
        children: vec![vec![wide]],
        data: vec![],
        blocks: vec![],
        matched: vec![],
    };
    assert!(encode(&bad).is_err(), "a hash wider than 48 bits");
    let empty = crate::wire::ChunkNode { len: 0, ..node };
    let bad = Message::ChunkRound {
        id: 1,
        children: vec![vec![empty]],
        data: vec![],
        blocks: vec![],
        matched: vec![],
    };
    assert!(encode(&bad).is_err());
    let bad = Message::ChunkRound {
        id: 1,
        children: vec![],
        data: vec![],
        blocks: vec![0; 7],
        matched: vec![],
    };
    assert!(encode(&bad).is_err());
}

#[test]
fn pinned_chunk_offer_sources_encoding() {
    // version 14: the offer ends with the files named as its sources
    let node = crate::wire::ChunkNode {
        hash: 0x0304_0506_0708,
        len: 2,
        leaf: true,
    };
    let offer = |from| Message::ChunkOffer {
        update: update("a", 2, vec![]),
        top: vec![node],
        from,
        sketch: vec![],
    };
    let p = |s: &str| RelPath::from_bytes(s.as_bytes()).unwrap();
    let none = hex(&encode(&offer(vec![])).unwrap());
    let two = offer(vec![p("src/a"), p("b")]);
    let some = hex(&encode(&two).unwrap());
    assert!(none.starts_with("11000000"), "variant 17: ChunkOffer");
    let no_sketch = "0000000000000000";
    let head = none
        .strip_suffix(&format!("0000000000000000{no_sketch}"))
        .expect("no sources: a zero count");
    let expected = concat!(
        "0200000000000000", // two sources
        "0500000000000000", //   five bytes of path
        "7372632f61",       //   src/a
        "0100000000000000", //   one byte
        "62",               //   b
    );
    assert_eq!(some, format!("{head}{expected}{no_sketch}"));
    assert_eq!(decode(&unhex(&some)).unwrap(), two);
    assert!(
        encode(&offer(vec![RelPath::root()])).is_err(),
        "the root as a source"
    );
    let five = (0..5).map(|i| p(&format!("f{i}"))).collect();
    assert!(encode(&offer(five)).is_err(), "more than 4 sources");
}

#[test]
fn pinned_chunk_sketch_and_pick_encoding() {
    // version 17: the offer's sketch ends it; a pick answers leaves by index (cells of
    // 14 bytes since version 18)
    let cells = vec![0xab; 4 * 14];
    let offer = |sketch| Message::ChunkOffer {
        update: update("a", 2, vec![]),
        top: vec![],
        from: vec![],
        sketch,
    };
    let plain = hex(&encode(&offer(vec![])).unwrap());
    let head = plain.strip_suffix("0000000000000000").unwrap();
    let with = hex(&encode(&offer(cells.clone())).unwrap());
    assert_eq!(with, format!("{head}3800000000000000{}", "ab".repeat(56)));
    assert_eq!(decode(&unhex(&with)).unwrap(), offer(cells.clone()));
    // (any whole number of cells since version 21: the sketch is rateless)
    assert!(encode(&offer(cells[..14].to_vec())).is_ok(), "one cell");
    assert!(encode(&offer(cells[..15].to_vec())).is_err(), "ragged");
    let big = vec![0; crate::wire::MAX_SKETCH + 4 * 14];
    assert!(encode(&offer(big)).is_err(), "too many cells");

    let pick = |leaves, answers| Message::ChunkPick {
        id: 7,
        leaves,
        answers,
        holes: vec![],
    };
    let msg = pick(vec![2, 300], vec![2, 3]);
    let expected = concat!(
        "18000000",         // variant 24: ChunkPick
        "0700000000000000", // id
        "0200000000000000", // two leaves
        "02000000",         //   2
        "2c010000",         //   300
        "0200000000000000", // two answers
        "0203",             //   send, describe
        "0000000000000000", // no holes
    );
    assert_eq!(hex(&encode(&msg).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), msg);
    assert!(
        encode(&pick(vec![3, 3], vec![2, 2])).is_err(),
        "not increasing"
    );
    assert!(encode(&pick(vec![3], vec![2, 2])).is_err(), "unpaired");
    assert!(
        encode(&pick(vec![3], vec![0])).is_err(),
        "a leaf found is not picked"
    );
    assert!(
        encode(&pick(vec![3], vec![4])).is_err(),
        "a leaf is not expanded"
    );
}

#[test]
fn pinned_leaf_delta_encoding() {
    let u = update("a", 2, vec![]);
    let header = hex(&encode(&Message::FileUpdate(u.clone())).unwrap());
    let msg = Message::LeafDelta {
        update: u,
        used: vec![0x05],
        delta: vec![0xD1, 0x00],
        asked: vec![1, 0x102],
        found: vec![0x02],
    };
    let expected = format!(
        "{}{}{}",
        "15000000",   // variant 21: LeafDelta
        &header[8..], // the update, as in a FileUpdate (after its variant)
        concat!(
            "0100000000000000", // one byte of bitmap
            "05",               //   leaves 0 and 2
            "0200000000000000", // two bytes of delta
            "d100",
            "0200000000000000", // two leaves asked about (version 16):
            "0100",             //   1
            "0201",             //   258
            "0100000000000000", // one byte of bitmap:
            "02",               //   their second piece found
        )
    );
    assert_eq!(hex(&encode(&msg).unwrap()), expected);
    assert_eq!(decode(&unhex(&expected)).unwrap(), msg);
    // a bitmap for more leaves than a file may have, and ranges in the header, are refused
    let Message::LeafDelta { update, .. } = msg else {
        unreachable!()
    };
    let leaf_delta = |used: Vec<u8>, asked: Vec<u16>, found: Vec<u8>| Message::LeafDelta {
        update: update.clone(),
        used,
        delta: vec![],
        asked,
        found,
    };
    let most = crate::wire::MAX_FILE_LEAVES / 8;
    assert!(encode(&leaf_delta(vec![0; most + 1], vec![], vec![])).is_err());
    assert!(
        encode(&leaf_delta(vec![0; most], vec![2, 1], vec![])).is_err(),
        "unsorted"
    );
    assert!(
        encode(&leaf_delta(vec![], vec![1, 1], vec![])).is_err(),
        "twice"
    );
    let many: Vec<u16> = (0..=crate::chunks::pieces::MAX_ASKED as u16).collect();
    assert!(
        encode(&leaf_delta(vec![], many, vec![])).is_err(),
        "too many asked"
    );
    let past = crate::wire::MAX_FILE_LEAVES as u16;
    assert!(
        encode(&leaf_delta(vec![], vec![past], vec![])).is_err(),
        "past the last"
    );
    assert!(encode(&leaf_delta(vec![], vec![past - 1], vec![0; 32])).is_ok());
    assert!(
        encode(&leaf_delta(vec![], vec![], vec![0; 33])).is_err(),
        "pieces"
    );
    let ranged = Message::LeafDelta {
        update: FileUpdate {
            ranges: vec![RangeData {
                offset: 0,
                len: 1,
                encoding: Encoding::Raw,
                data: vec![1],
            }],
            ..update
        },
        used: vec![],
        delta: vec![],
        asked: vec![],
        found: vec![],
    };
    assert!(encode(&ranged).is_err());
}

#[test]
fn pinned_leaf_ask_and_pieces_encoding() {
    let ask = Message::LeafAsk {
        path: RelPath::from_bytes(b"a").unwrap(),
        leaves: vec![3],
    };
    let expected = concat!(
        "16000000",         // variant 22: LeafAsk
        "0100000000000000", // one byte of path
        "61",               //   a
        "0100000000000000", // one leaf:
        "0300",             //   3
    );
    assert_eq!(hex(&encode(&ask).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), ask);
    let pieces = Message::LeafPieces(vec![vec![0x03_0201, 5], vec![]]);
    let expected = concat!(
        "17000000",         // variant 23: LeafPieces
        "0200000000000000", // two leaves:
        "0600000000000000", //   6 bytes: two 3-byte hashes
        "010203050000",
        "0000000000000000", //   none (a leaf shorter than a piece)
    );
    assert_eq!(hex(&encode(&pieces).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), pieces);
    let root = Message::LeafAsk {
        path: RelPath::root(),
        leaves: vec![],
    };
    assert!(encode(&root).is_err(), "the root");
    let nine = Message::LeafPieces(vec![vec![]; crate::chunks::pieces::MAX_ASKED + 1]);
    assert!(
        encode(&nine).is_err(),
        "more leaves than may be asked about"
    );
    let long = Message::LeafPieces(vec![vec![0; 33]]);
    assert!(
        encode(&long).is_err(),
        "more pieces than the largest leaf has"
    );
    let ragged = concat!(
        "17000000",
        "0100000000000000",
        "0400000000000000",
        "01020304"
    );
    assert!(decode(&unhex(ragged)).is_err(), "a partial piece hash");
    let wide = Message::LeafPieces(vec![vec![0x100_0000]]);
    assert!(encode(&wide).is_err(), "a piece hash wider than 3 bytes");
}

#[test]
fn pinned_sketch_ask_and_part_encoding() {
    let ask = Message::SketchAsk {
        id: 7,
        stream: SKETCH_SAMPLE,
        from: 0,
        to: 96,
    };
    let expected = concat!(
        "19000000",         // variant 25: SketchAsk
        "0700000000000000", // id
        "01",               // the in-place sample
        "00000000",         // from
        "60000000",         // to: 96
    );
    assert_eq!(hex(&encode(&ask).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), ask);
    let part = Message::SketchPart {
        id: 7,
        bytes: [[1u8; 8], [2; 8]].concat(),
    };
    let expected = concat!(
        "1a000000",         // variant 26: SketchPart
        "0700000000000000", // id
        "1000000000000000", // 16 bytes: one symbol
        "0101010101010101", //   its sum
        "0202020202020202", //   its weighted sum
    );
    assert_eq!(hex(&encode(&part).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), part);
    let ask = |stream, from, to| Message::SketchAsk {
        id: 7,
        stream,
        from,
        to,
    };
    assert!(
        encode(&ask(SKETCH_PIECES, 5, 5)).is_err(),
        "nothing asked for"
    );
    let over = MAX_INPLACE_SYMBOLS + 1;
    assert!(encode(&ask(SKETCH_PIECES, 0, over)).is_err(), "too many");
    let cells = crate::chunks::sketch::MAX_CELLS as u32;
    assert!(encode(&ask(SKETCH_LEAVES, 16, cells)).is_ok());
    assert!(
        encode(&ask(SKETCH_LEAVES, 16, cells + 1)).is_err(),
        "too many cells"
    );
    assert!(encode(&ask(3, 0, 1)).is_err(), "no such sketch");
    let big = Message::SketchPart {
        id: 7,
        bytes: vec![0; MAX_INPLACE_SYMBOLS as usize * INPLACE_SYMBOL + 1],
    };
    assert!(encode(&big).is_err(), "too long");
}

#[test]
fn pinned_leaf_patch_encoding() {
    let patch = |vv: Vec<(u64, u64)>, path: &str| Message::LeafPatch {
        id: 9,
        path: RelPath::from_bytes(path.as_bytes()).unwrap(),
        used: vec![0b101],
        delta: vec![0x28, 0xb5],
        asked: vec![1],
        found: vec![0xff],
        vv,
    };
    let ok = patch(vec![(5, 2)], "a/b");
    let expected = concat!(
        "1b000000",         // variant 27: LeafPatch
        "0900000000000000", // id
        "0300000000000000", // path: 3 bytes
        "612f62",           //   "a/b"
        "0100000000000000", // used: 1 byte
        "05",               //   leaves 0 and 2
        "0200000000000000", // delta: 2 bytes
        "28b5",             //   (a bare delta's first bytes)
        "0100000000000000", // asked: 1 leaf
        "0100",             //   leaf 1
        "0100000000000000", // found: 1 byte
        "ff",               //   8 pieces
        "0100000000000000", // vv: 1 pair
        "0500000000000000", //   node 5
        "0200000000000000", //   at 2
    );
    assert_eq!(hex(&encode(&ok).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), ok);
    assert!(
        encode(&patch(vec![(5, 0)], "a/b")).is_err(),
        "a zero counter"
    );
    assert!(encode(&patch(vec![(5, 1)], "")).is_err(), "the root");
}

#[test]
fn pinned_index_ask_encoding() {
    let ask = Message::IndexAsk {
        digests: vec![0x0000_0605_0403_0201, 0x0000_BBAA_9988_7766],
        wait: true,
    };
    let expected = concat!(
        "1c000000",         // variant 28: IndexAsk
        "0c00000000000000", // digests: 12 bytes
        "010203040506",     //   the first, little-endian
        "66778899aabb",     //   the second
        "01",               // wait: the sender holds entries back
    );
    assert_eq!(hex(&encode(&ask).unwrap()), expected);
    assert_eq!(decode(&unhex(expected)).unwrap(), ask);
    let too_many = Message::IndexAsk {
        digests: vec![1; crate::wire::MAX_SAME_DIGESTS + 1],
        wait: false,
    };
    assert!(encode(&too_many).is_err(), "too many digests");
    assert!(
        decode(&unhex("1c000000050000000000000001020304ff")).is_err(),
        "not a whole number of digests"
    );
}
