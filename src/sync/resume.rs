//! Resuming multi-part updates after a cut: every multi-part update is announced by
//! `UpdateStart`, so the receiver keeps its parts on disk; at the next session's
//! handshake the receiver lists what it kept (`Staged`), and an update of the same
//! path, base and content hash leaves out the ranges the receiver already holds.

use crate::path::RelPath;
use crate::wire::{Encoding, Message, RangeData, StagedItem};
use std::collections::HashMap;

/// What the receiver said it holds, by path (for this session).
pub type Held = HashMap<RelPath, StagedItem>;

/// The receiver's parts list as a map.
pub fn held(items: Vec<StagedItem>) -> Held {
    items.into_iter().map(|i| (i.path.clone(), i)).collect()
}

/// Announces a multi-part update (`frames`: its `UpdatePart`s, then its `FileUpdate`)
/// with an `UpdateStart`, leaving out the leading ranges `held` has for the same
/// base and hash. Returns the data bytes left out.
pub fn announce(frames: &mut Vec<Message>, held: &mut Held) -> u64 {
    let Some(Message::FileUpdate(u)) = frames.last() else {
        return 0;
    };
    if frames.len() < 2 {
        return 0;
    }
    let (id, path, base, hash) = (u.id, u.path.clone(), u.base, u.hash);
    let upto = held
        .remove(&path)
        .filter(|s| s.base == base && s.hash == hash && !joint(frames.as_mut_slice()))
        .map_or(0, |s| s.upto);
    let dropped = if upto > 0 { leave_out(frames, upto) } else { 0 };
    let from = match dropped {
        0 => 0,
        _ => first_offset(frames).unwrap_or(upto).min(upto),
    };
    let start = Message::UpdateStart {
        id,
        path,
        base,
        hash,
        from,
    };
    frames.insert(0, start);
    dropped
}

fn ranges_mut(m: &mut Message) -> Option<&mut Vec<RangeData>> {
    match m {
        Message::UpdatePart { ranges, .. } => Some(ranges),
        Message::FileUpdate(u) => Some(&mut u.ranges),
        _ => None,
    }
}

/// A joint delta spans all its ranges: it cannot be cut.
fn joint(frames: &mut [Message]) -> bool {
    frames
        .iter_mut()
        .filter_map(ranges_mut)
        .any(|rs| rs.iter().any(|r| r.encoding == Encoding::Joint))
}

/// Drops every range ending at or before `upto` (and parts left empty); returns the
/// data bytes dropped.
fn leave_out(frames: &mut Vec<Message>, upto: u64) -> u64 {
    let mut dropped = 0u64;
    for ranges in frames.iter_mut().filter_map(ranges_mut) {
        ranges.retain(|r| {
            let held = r.end().is_some_and(|e| e <= upto);
            if held {
                dropped += r.data.len() as u64;
            }
            !held
        });
    }
    frames.retain(|m| !matches!(m, Message::UpdatePart { ranges, .. } if ranges.is_empty()));
    dropped
}

fn first_offset(frames: &mut [Message]) -> Option<u64> {
    frames
        .iter_mut()
        .filter_map(ranges_mut)
        .find_map(|r| r.first().map(|r| r.offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FileUpdate;

    fn r(offset: u64, len: u64, encoding: Encoding) -> RangeData {
        let data = vec![1; len as usize];
        RangeData {
            offset,
            len,
            encoding,
            data,
        }
    }

    fn frames(enc: Encoding) -> Vec<Message> {
        let u = FileUpdate {
            id: 9,
            file: 1,
            path: RelPath::from_bytes(b"big").unwrap(),
            base: None,
            size: 40,
            mode: 0o644,
            mtime: crate::wire::WireTime { secs: 0, nanos: 0 },
            ranges: vec![r(30, 10, enc)],
            hash: [3; 32],
            vv: vec![],
        };
        vec![
            Message::UpdatePart {
                id: 9,
                ranges: vec![r(0, 10, enc), r(10, 10, enc)],
            },
            Message::UpdatePart {
                id: 9,
                ranges: vec![r(20, 10, enc)],
            },
            Message::FileUpdate(u),
        ]
    }

    fn item(hash: u8, upto: u64) -> Held {
        let path = RelPath::from_bytes(b"big").unwrap();
        held(vec![StagedItem {
            path,
            base: None,
            hash: [hash; 32],
            upto,
        }])
    }

    fn start_from(f: &[Message]) -> u64 {
        match &f[0] {
            Message::UpdateStart { from, .. } => *from,
            other => panic!("{other:?} first"),
        }
    }

    #[test]
    fn held_ranges_of_the_same_content_are_left_out() {
        let mut f = frames(Encoding::Raw);
        assert_eq!(announce(&mut f, &mut item(3, 20)), 20);
        assert_eq!(start_from(&f), 20);
        assert_eq!(f.len(), 3, "start, the last part, the update");
        let mut f = frames(Encoding::Raw);
        assert_eq!(
            announce(&mut f, &mut item(4, 20)),
            0,
            "other content: all of it"
        );
        assert_eq!((start_from(&f), f.len()), (0, 4));
        let mut f = frames(Encoding::Joint);
        assert_eq!(
            announce(&mut f, &mut item(3, 20)),
            0,
            "a joint delta is whole"
        );
        let mut f = frames(Encoding::Raw);
        assert_eq!(announce(&mut f, &mut item(3, 25)), 20);
        assert_eq!(start_from(&f), 20, "a part held in part goes again");
    }

    #[test]
    fn single_frame_updates_are_not_announced() {
        let mut f = frames(Encoding::Raw).split_off(2);
        assert_eq!(announce(&mut f, &mut item(3, 40)), 0);
        assert_eq!(f.len(), 1);
    }
}
