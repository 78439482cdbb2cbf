//! Protocol rules that the serde layout alone cannot express. Applied to every message
//! decoded from the wire and to every message before it is encoded.

use super::{
    ChunkNode, Encoding, FileUpdate, IndexItem, ItemKind, Message, MetaItem, NackReason, RangeData,
    Violation, WireOp, WireSetTime, WireTime, BLOCK_HASH, INPLACE_SYMBOL, MAX_CHUNK_NODES,
    MAX_CHUNK_SOURCES, MAX_FILE_LEAVES, MAX_FILE_SIZE, MAX_INDEX_ITEMS, MAX_INPLACE_SYMBOLS,
    MAX_MATCH_BYTES, MAX_NODE_NAME, MAX_RANGE_LEN, MAX_REASON, MAX_SKETCH, MAX_STAGED_ITEMS,
    MAX_SYMLINK_TARGET, MAX_UPDATE_RANGES, MAX_UPDATE_SPAN, MAX_VV_PAIRS, MAX_XATTR_NAME,
    MAX_XATTR_VALUE, SKETCH_LEAVES, SKETCH_PIECES, SKETCH_SAMPLE,
};
use crate::chunks::{leaves, pieces, sketch};
use crate::path::RelPath;

/// Most pieces a `LeafDelta` may mark: every whole piece of the most leaves asked
/// about, each of the largest size.
const MAX_PIECES: usize = pieces::MAX_ASKED * leaves::MAX as usize / pieces::PIECE;

/// Checks every rule for `msg`.
pub(super) fn validate(msg: &Message) -> Result<(), Violation> {
    match msg {
        Message::Hello { node_name, .. } => max_len("node_name", node_name.len(), MAX_NODE_NAME),
        Message::Refused { reason } => max_len("reason", reason.len(), MAX_REASON),
        Message::FileUpdate(u) => validate_update(u),
        Message::UpdatePart { ranges, .. } => validate_part(ranges),
        Message::Meta(item) => validate_batch(std::slice::from_ref(item)),
        Message::MetaBatch(ops) => validate_batch(ops),
        Message::Index { entries, .. } => validate_index(entries),
        Message::Summary { dirs, sketch, .. } => {
            max_len("summary dirs", dirs.len(), MAX_INDEX_ITEMS)?;
            let cell = crate::iblt::cell_bytes(super::DIR_KEY_BYTES);
            max_len("summary sketch", sketch.len(), MAX_INDEX_ITEMS * cell)?;
            whole_cells("summary sketch", sketch.len(), cell)?;
            match sketch.is_empty() || dirs.is_empty() {
                true => Ok(()),
                false => Err(Violation::Unpaired("directories beside a sketch of them")),
            }
        }
        Message::SummaryAck {
            differ,
            same,
            held,
            sketch,
            newest,
            ..
        } => {
            newest.as_ref().map_or(Ok(()), check_time)?;
            validate_summary_ack(differ, same, held, sketch)
        }
        Message::IndexAck { want, leaves, .. } => {
            max_len("want", want.len(), MAX_INDEX_ITEMS.div_ceil(8))?;
            let wanted = want.iter().map(|b| b.count_ones() as usize).sum();
            max_len("described files", leaves.len(), wanted)?;
            let most = leaves.iter().map(Vec::len).max().unwrap_or(0);
            max_len("leaves of a file", most, MAX_FILE_LEAVES)?;
            let top = leaves.iter().flatten().copied().max().unwrap_or(0);
            within("leaf hash", u64::from(top), 0xFFFF)
        }
        Message::LeafDelta {
            update,
            used,
            asked,
            found,
            ..
        } => {
            validate_update(update)?;
            max_len("leaf delta ranges", update.ranges.len(), 0)?;
            max_len("leaf delta bitmap", used.len(), MAX_FILE_LEAVES / 8)?;
            asked_leaves(asked)?;
            max_len("leaf delta pieces", found.len(), MAX_PIECES.div_ceil(8))
        }
        Message::LeafPatch {
            path,
            used,
            asked,
            found,
            vv,
            ..
        } => {
            not_root("leaf-patch path", path)?;
            check_vv(vv)?;
            max_len("leaf delta bitmap", used.len(), MAX_FILE_LEAVES / 8)?;
            asked_leaves(asked)?;
            max_len("leaf delta pieces", found.len(), MAX_PIECES.div_ceil(8))
        }
        Message::LeafAsk { path, leaves } => {
            not_root("leaf-ask path", path)?;
            asked_leaves(leaves)
        }
        Message::LeafPieces(lists) => {
            max_len("leaves described by pieces", lists.len(), pieces::MAX_ASKED)?;
            let most = leaves::MAX as usize / pieces::PIECE;
            let longest = lists.iter().map(Vec::len).max().unwrap_or(0);
            max_len("pieces of a leaf", longest, most)
        }
        Message::Nack { reason, .. } => validate_nack(reason),
        Message::UpdateStart { path, from, .. } => {
            not_root("update-start path", path)?;
            within("update-start from", *from, MAX_FILE_SIZE)
        }
        Message::IndexAsk { digests, .. } => {
            max_len("asked digests", digests.len(), super::MAX_SAME_DIGESTS)
        }
        Message::Staged { items, .. } => {
            max_len("staged", items.len(), MAX_STAGED_ITEMS)?;
            items.iter().try_for_each(|i| {
                not_root("staged path", &i.path)?;
                within("staged upto", i.upto, MAX_FILE_SIZE)
            })
        }
        Message::ChunkOffer {
            update,
            top,
            from,
            sketch,
        } => {
            validate_update(update)?;
            max_len("chunk sketch", sketch.len(), MAX_SKETCH)?;
            if !sketch.len().is_multiple_of(sketch::CELL) {
                let (field, len, item) = ("chunk sketch", sketch.len(), sketch::CELL);
                return Err(Violation::Ragged { field, len, item });
            }
            max_len("chunk sources", from.len(), MAX_CHUNK_SOURCES)?;
            from.iter().try_for_each(|p| not_root("chunk source", p))?;
            max_len("chunk offer ranges", update.ranges.len(), 0)?;
            chunk_nodes(top.len(), top)
        }
        Message::ChunkAnswer { answers, .. } => {
            max_len("chunk answers", answers.len(), MAX_CHUNK_NODES)?;
            let worst = answers.iter().copied().max().unwrap_or(0);
            within("chunk answer", u64::from(worst), 4)
        }
        Message::ChunkPick {
            leaves,
            answers,
            holes,
            ..
        } => {
            max_len("chunk picks", leaves.len(), MAX_CHUNK_NODES)?;
            max_len("chunk holes", holes.len(), MAX_MATCH_BYTES)?;
            if leaves.len() != answers.len() {
                return Err(Violation::Unpaired("chunk picks and their answers"));
            }
            if leaves.windows(2).any(|w| w[0] >= w[1]) {
                return Err(Violation::NotIncreasing("chunk picks"));
            }
            match answers.iter().find(|&&a| !matches!(a, 2 | 3 | 5)) {
                Some(&a) => Err(Violation::BadCode {
                    field: "chunk pick answer",
                    value: u64::from(a),
                }),
                None => Ok(()),
            }
        }
        Message::ChunkRound {
            children,
            blocks,
            matched,
            ..
        } => {
            max_len("chunk matched", matched.len(), MAX_MATCH_BYTES)?;
            let total = children.iter().map(Vec::len).sum();
            children.iter().try_for_each(|c| chunk_nodes(total, c))?;
            if blocks.len() % BLOCK_HASH != 0 {
                let (field, len, item) = ("chunk blocks", blocks.len(), BLOCK_HASH);
                return Err(Violation::Ragged { field, len, item });
            }
            max_len(
                "chunk blocks",
                total + blocks.len() / BLOCK_HASH,
                MAX_CHUNK_NODES,
            )
        }
        Message::SketchAsk {
            stream, from, to, ..
        } => {
            let most = match *stream {
                SKETCH_LEAVES => sketch::MAX_CELLS as u64,
                SKETCH_SAMPLE | SKETCH_PIECES => u64::from(MAX_INPLACE_SYMBOLS),
                s => {
                    let (field, value) = ("sketch stream", u64::from(s));
                    return Err(Violation::BadCode { field, value });
                }
            };
            if from >= to {
                return Err(Violation::NotIncreasing("sketch part asked for"));
            }
            within("sketch part asked for", u64::from(*to), most)
        }
        Message::SketchPart { bytes, .. } => {
            let most = MAX_INPLACE_SYMBOLS as usize * INPLACE_SYMBOL;
            max_len("sketch part", bytes.len(), most)
        }
        Message::Ack(_)
        | Message::Ping(_)
        | Message::Pong(_)
        | Message::Queue { .. }
        | Message::ChunkDecline(_) => Ok(()),
    }
}

/// At most [`MAX_CHUNK_NODES`] in the message (`total`); each node covers some bytes.
fn chunk_nodes(total: usize, nodes: &[ChunkNode]) -> Result<(), Violation> {
    max_len("chunk nodes", total, MAX_CHUNK_NODES)?;
    for n in nodes {
        if n.len == 0 {
            return Err(Violation::Empty("chunk node"));
        }
        within("chunk node hash", n.hash, (1 << 48) - 1)?;
    }
    Ok(())
}

/// Indexes of described leaves asked about: at most [`pieces::MAX_ASKED`], strictly
/// increasing, each below [`MAX_FILE_LEAVES`].
fn asked_leaves(asked: &[u16]) -> Result<(), Violation> {
    max_len("leaves asked about", asked.len(), pieces::MAX_ASKED)?;
    if asked.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Violation::NotIncreasing("leaves asked about"));
    }
    let last = asked.last().map_or(0, |&i| u64::from(i));
    within("leaf asked about", last, MAX_FILE_LEAVES as u64 - 1)
}

fn max_len(field: &'static str, len: usize, max: usize) -> Result<(), Violation> {
    if len > max {
        return Err(Violation::TooLong { field, len, max });
    }
    Ok(())
}

fn not_root(field: &'static str, path: &RelPath) -> Result<(), Violation> {
    if path.is_root() {
        return Err(Violation::RootPath(field));
    }
    Ok(())
}

fn check_time(t: &WireTime) -> Result<(), Violation> {
    if t.nanos >= 1_000_000_000 {
        return Err(Violation::BadNanos(t.nanos));
    }
    Ok(())
}

/// A non-empty byte name without NUL, at most `max` bytes.
fn check_name(field: &'static str, bytes: &[u8], max: usize) -> Result<(), Violation> {
    if bytes.is_empty() {
        return Err(Violation::Empty(field));
    }
    if bytes.contains(&0) {
        return Err(Violation::Nul(field));
    }
    max_len(field, bytes.len(), max)
}

fn validate_nack(reason: &NackReason) -> Result<(), Violation> {
    match reason {
        NackReason::BadRequest(s) | NackReason::Io(s) => max_len("reason", s.len(), MAX_REASON),
        _ => Ok(()),
    }
}

fn validate_update(u: &FileUpdate) -> Result<(), Violation> {
    not_root("path", &u.path)?;
    check_time(&u.mtime)?;
    max_len("ranges", u.ranges.len(), MAX_UPDATE_RANGES)?;
    let mut prev_end = 0u64;
    let mut total = 0u64;
    for (index, r) in u.ranges.iter().enumerate() {
        prev_end = check_range(index, r, prev_end, u.size)?;
        total = total
            .checked_add(r.len)
            .filter(|t| *t <= MAX_UPDATE_SPAN)
            .ok_or(Violation::UpdateTooLarge {
                max: MAX_UPDATE_SPAN,
            })?;
    }
    check_size(u.size)?;
    check_vv(&u.vv)
}

/// At most [`MAX_VV_PAIRS`] pairs, strictly sorted by node, no zero counter.
fn check_vv(vv: &[(u64, u64)]) -> Result<(), Violation> {
    max_len("version vector", vv.len(), MAX_VV_PAIRS)?;
    if vv.iter().any(|p| p.1 == 0) || vv.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(Violation::BadVersion);
    }
    Ok(())
}

/// An IBLT (`crate::iblt`) of `len` bytes: a whole number of cells of `cell` bytes, a
/// multiple of its ways of them.
fn whole_cells(field: &'static str, len: usize, cell: usize) -> Result<(), Violation> {
    let item = crate::iblt::WAYS * cell;
    match len.is_multiple_of(item) {
        true => Ok(()),
        false => Err(Violation::Ragged { field, len, item }),
    }
}

/// A `SummaryAck`: its bitmaps of their sizes, and a digest list or a sketch, not both.
fn validate_summary_ack(
    differ: &[u8],
    same: &[u64],
    held: &[u8],
    sketch: &[u8],
) -> Result<(), Violation> {
    max_len("differ", differ.len(), MAX_INDEX_ITEMS.div_ceil(8))?;
    max_len("same", same.len(), super::MAX_SAME_DIGESTS)?;
    let differing: usize = differ.iter().map(|b| b.count_ones() as usize).sum();
    if held.len() != differing.div_ceil(8) {
        return Err(Violation::Unpaired(
            "held bitmap and the directories that differ",
        ));
    }
    let cell = crate::iblt::cell_bytes(super::SAME_DIGEST_BYTES);
    max_len(
        "summary sketch",
        sketch.len(),
        super::MAX_SAME_DIGESTS * cell,
    )?;
    whole_cells("summary sketch", sketch.len(), cell)?;
    if !sketch.is_empty() && !same.is_empty() {
        return Err(Violation::Unpaired("a digest list beside a sketch"));
    }
    Ok(())
}

fn validate_index(entries: &[IndexItem]) -> Result<(), Violation> {
    max_len("index entries", entries.len(), MAX_INDEX_ITEMS)?;
    for e in entries {
        not_root("path", &e.path)?;
        check_time(&e.mtime)?;
        check_size(e.size)?;
        check_vv(&e.vv)?;
        match e.kind {
            ItemKind::Symlink if !e.deleted => {
                check_name("symlink target", &e.target, MAX_SYMLINK_TARGET)?
            }
            _ => max_len("symlink target", e.target.len(), 0)?,
        }
    }
    Ok(())
}

/// A number at most `max`.
fn within(field: &'static str, value: u64, max: u64) -> Result<(), Violation> {
    if value > max {
        return Err(Violation::TooLarge { field, value, max });
    }
    Ok(())
}

/// A file size within the protocol's limit.
fn check_size(size: u64) -> Result<(), Violation> {
    if size > MAX_FILE_SIZE {
        return Err(Violation::TooLarge {
            field: "size",
            value: size,
            max: MAX_FILE_SIZE,
        });
    }
    Ok(())
}

fn validate_part(ranges: &[RangeData]) -> Result<(), Violation> {
    if ranges.is_empty() {
        return Err(Violation::Empty("ranges"));
    }
    max_len("ranges", ranges.len(), MAX_UPDATE_RANGES)?;
    let mut prev_end = 0u64;
    for (index, r) in ranges.iter().enumerate() {
        prev_end = check_range(index, r, prev_end, u64::MAX)?;
    }
    Ok(())
}

/// Checks one range that must start at or after `prev_end`; returns its end.
fn check_range(index: usize, r: &RangeData, prev_end: u64, size: u64) -> Result<u64, Violation> {
    if r.len == 0 {
        return Err(Violation::EmptyRange { index });
    }
    if r.len > MAX_RANGE_LEN as u64 {
        return Err(Violation::RangeTooLong {
            index,
            len: r.len,
            max: MAX_RANGE_LEN,
        });
    }
    if r.offset < prev_end {
        return Err(Violation::RangeOrder { index });
    }
    let end = r
        .end()
        .filter(|e| *e <= size)
        .ok_or(Violation::RangeBeyondSize { index, size })?;
    check_range_data(index, r)?;
    Ok(end)
}

fn check_range_data(index: usize, r: &RangeData) -> Result<(), Violation> {
    let actual = r.data.len();
    match r.encoding {
        Encoding::Raw if actual as u64 != r.len => Err(Violation::RawLength {
            index,
            declared: r.len,
            actual,
        }),
        Encoding::Zstd | Encoding::ZstdDict if actual as u64 > r.len => {
            Err(Violation::CompressedTooLarge {
                index,
                declared: r.len,
                actual,
            })
        }
        _ => Ok(()),
    }
}

fn validate_batch(ops: &[MetaItem]) -> Result<(), Violation> {
    if ops.is_empty() {
        return Err(Violation::EmptyBatch);
    }
    for pair in ops.windows(2) {
        if pair[1].seq <= pair[0].seq {
            return Err(Violation::SeqOrder { seq: pair[1].seq });
        }
    }
    ops.iter().try_for_each(|i| {
        check_vv(&i.vv)?;
        validate_op(&i.op)
    })
}

fn validate_op(op: &WireOp) -> Result<(), Violation> {
    match op {
        WireOp::Create { path, .. }
        | WireOp::Mknod { path, .. }
        | WireOp::Mkdir { path, .. }
        | WireOp::Unlink { path, .. }
        | WireOp::Rmdir { path } => not_root("path", path),
        WireOp::Rename { from, to, .. } | WireOp::Link { from, to } => {
            not_root("from", from)?;
            not_root("to", to)
        }
        WireOp::Symlink { path, target } => {
            not_root("path", path)?;
            check_name("symlink target", target, MAX_SYMLINK_TARGET)
        }
        WireOp::Utimens { atime, mtime, .. } => check_set_time(atime).and(check_set_time(mtime)),
        WireOp::SetXattr { name, value, .. } => {
            check_name("xattr name", name, MAX_XATTR_NAME)?;
            max_len("xattr value", value.len(), MAX_XATTR_VALUE)
        }
        WireOp::RemoveXattr { name, .. } => check_name("xattr name", name, MAX_XATTR_NAME),
        WireOp::Truncate { size, .. } => check_size(*size),
        WireOp::Chmod { .. } | WireOp::Chown { .. } => Ok(()),
    }
}

fn check_set_time(t: &Option<WireSetTime>) -> Result<(), Violation> {
    match t {
        Some(WireSetTime::At(ts)) => check_time(ts),
        _ => Ok(()),
    }
}
