//! Fuzz target: the update applier. A valid update of a file (random edits and size
//! change over a random base) is encoded, mutated (bytes overwritten) and decoded as
//! the receiver would; whatever decodes goes through stage, verify and replay into a
//! temp store. Every file there is afterwards either untouched or exactly the content
//! the update's hash names, nothing is left in staging, and an unmutated update applies.

use super::*;
use crate::fuzzing::fuzz;
use crate::wire::{compress_range, decode, encode, Encoding, FileUpdate, Message, RangeData};
use proptest::prelude::*;
use std::path::Path;

fn hash(b: &[u8]) -> [u8; 32] {
    *blake3::hash(b).as_bytes()
}

/// (base, edits as (gap, bytes, compressed), bytes added or cut at the end, with base).
type Case = (Vec<u8>, Vec<(u16, Vec<u8>, bool)>, i16, bool);

fn arb_case() -> impl Strategy<Value = Case> {
    let edit = (
        0u16..3000,
        prop::collection::vec(any::<u8>(), 1..300),
        any::<bool>(),
    );
    (
        prop::collection::vec(any::<u8>(), 0..8192),
        prop::collection::vec(edit, 0..6),
        -2000i16..2000,
        any::<bool>(),
    )
}

/// The update turning `base` into the returned content.
fn update_of((base, edits, grow, with_base): &Case) -> (FileUpdate, Vec<u8>) {
    let mut new = base.clone();
    let (mut ranges, mut end) = (Vec::new(), 0u64);
    for (gap, bytes, squeeze) in edits {
        let at = end + u64::from(*gap);
        let stop = at as usize + bytes.len();
        if new.len() < stop {
            new.resize(stop, 0);
        }
        new[at as usize..stop].copy_from_slice(bytes);
        let r = match squeeze {
            true => compress_range(at, bytes, 1),
            false => RangeData {
                offset: at,
                len: bytes.len() as u64,
                encoding: Encoding::Raw,
                data: bytes.clone(),
            },
        };
        end = r.end().unwrap();
        ranges.push(r);
    }
    // The applier refuses a size past both the current size and the last range.
    let cap = base.len().max(end as usize) as i64;
    let size = (new.len() as i64 + i64::from(*grow))
        .min(cap)
        .max(end as i64) as usize;
    new.resize(size, 0);
    let u = FileUpdate {
        id: 1,
        file: 1,
        path: crate::path::RelPath::from_bytes(b"f").unwrap(),
        base: with_base.then(|| crate::wire::base_id(&hash(base))),
        size: size as u64,
        mode: 0o100644,
        mtime: crate::wire::WireTime {
            secs: 1_700_000_000,
            nanos: 0,
        },
        ranges,
        hash: hash(&new),
        vv: vec![(1, 1)],
    };
    (u, new)
}

/// Every regular file under `dir` (relative name, content).
fn files(dir: &Path, rel: &str, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = format!("{rel}{}", e.file_name().to_string_lossy());
        let t = e.file_type().unwrap();
        if t.is_dir() {
            files(&e.path(), &format!("{name}/"), out);
        } else {
            out.push((name, std::fs::read(e.path()).unwrap_or_default()));
        }
    }
}

#[test]
fn fuzz_update_applier() {
    let t = tempfile::tempdir().unwrap();
    let (data, staging) = (t.path().join("data"), t.path().join("staging"));
    std::fs::create_dir(&data).unwrap();
    std::fs::create_dir(&staging).unwrap();
    let mut a = Applier::open(&data, &staging, Arc::new(NoHooks)).unwrap();
    a.set_max_file_size(1 << 20); // as `max_file_mib` would: no 1 TiB of zeros to hash
    let edits = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3);
    fuzz("update applier", (arb_case(), edits), |(case, edits)| {
        for e in std::fs::read_dir(&data).unwrap() {
            let p = e.unwrap().path(); // the applier holds `data` open: empty it, keep it
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
        std::fs::write(data.join("f"), &case.0).unwrap();
        let (u, new) = update_of(&case);
        let mut bytes = encode(&Message::FileUpdate(u)).unwrap();
        for (at, b) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = *b;
        }
        let Ok(Message::FileUpdate(got)) = decode(&bytes) else {
            return Ok(()); // refused by the decoder: its own target
        };
        let result = a.apply_update(&got);
        let mut seen = Vec::new();
        files(&data, "", &mut seen);
        for (name, content) in &seen {
            let untouched = name == "f" && content == &case.0;
            prop_assert!(
                untouched || (result.is_ok() && hash(content) == got.hash),
                "{name} is neither untouched nor the update's content ({result:?})"
            );
        }
        prop_assert_eq!(
            std::fs::read_dir(&staging).unwrap().count(),
            0,
            "staging left behind"
        );
        if edits.is_empty() {
            prop_assert!(result.is_ok(), "a valid update was refused: {result:?}");
            prop_assert_eq!(std::fs::read(data.join("f")).unwrap(), new);
        }
        Ok(())
    });
}
