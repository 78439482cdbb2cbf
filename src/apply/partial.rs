//! Parts of multi-part updates kept on disk, so that a session cut mid-transfer resumes
//! where it stopped instead of sending the file again.
//!
//! Each update announced by `UpdateStart` gets `staging/<32 hex>.part` (0600, opened
//! relative to the staging fd without following links): [`MAGIC`], a length-prefixed
//! header (peer, path, base, hash), then one record per `UpdatePart`: its length, the
//! first 16 bytes of the BLAKE3 of its payload, and the payload (the part's ranges in
//! bincode). Records are not fsynced: a torn or corrupt tail ends the file where it
//! starts, and the update's whole-content hash checks whatever is resumed. A file goes
//! when its update is applied or refused, when the same peer starts another update of
//! the same path, or when it is a week old.

use super::{os_err, Applier, ApplyError};
use crate::path::RelPath;
use crate::sys;
use crate::wire::{RangeData, StagedItem, MAX_FRAME, MAX_STAGED_ITEMS};
use bincode::Options;
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::time::{Duration, SystemTime};

/// First bytes of a parts file (format version 2: the base by its id; a file of
/// another version is dropped like any unreadable one).
const MAGIC: &[u8; 8] = b"SYNCFSp2";
const SUFFIX: &str = ".part";
/// Longest header or record payload read back.
const MAX_RECORD: usize = 2 * MAX_FRAME;
/// Parts files older than this are removed.
const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Which update a parts file belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartKey {
    /// The sending peer (its PeerId as text).
    pub peer: String,
    /// The file.
    pub path: RelPath,
    /// The update's base (its id).
    pub base: Option<u64>,
    /// The update's content hash.
    pub hash: [u8; 32],
}

/// An open parts file.
#[derive(Debug)]
pub struct Parts {
    file: File,
    name: String,
    /// Ranges held (for the per-update cap).
    pub ranges: usize,
}

fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_little_endian()
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

fn name_of(k: &PartKey) -> String {
    let bytes = codec().serialize(k).expect("a key serializes");
    let h = blake3::hash(&bytes);
    format!("{}{SUFFIX}", crate::store::hex(&h.as_bytes()[..16]))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Reads one length-prefixed, checksummed payload; `None` at a clean or torn end.
fn read_record(r: &mut impl Read) -> Option<Vec<u8>> {
    let mut head = [0u8; 20];
    r.read_exact(&mut head).ok()?;
    let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
    if len > MAX_RECORD {
        return None;
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).ok()?;
    (blake3::hash(&payload).as_bytes()[..16] == head[4..]).then_some(payload)
}

fn write_record(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let mut head = Vec::with_capacity(20 + payload.len());
    head.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    head.extend_from_slice(&blake3::hash(payload).as_bytes()[..16]);
    head.extend_from_slice(payload);
    w.write_all(&head)
}

/// A parts file read back: its key and its records' ranges, up to the first bad one,
/// with the byte offset where the good records end.
struct Loaded {
    key: PartKey,
    records: Vec<Vec<RangeData>>,
    ends: Vec<u64>,
}

/// The key, and where the records start.
fn read_key(r: &mut impl Read) -> io::Result<(PartKey, u64)> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(bad("not a parts file"));
    }
    let head = read_record(r).ok_or_else(|| bad("bad parts header"))?;
    let key = codec()
        .deserialize(&head)
        .map_err(|_| bad("bad parts header"))?;
    Ok((key, 8 + 20 + head.len() as u64))
}

fn read_all(file: &File) -> io::Result<Loaded> {
    let mut r = BufReader::new(file);
    r.seek(SeekFrom::Start(0))?;
    let (key, mut at) = read_key(&mut r)?;
    let (mut records, mut ends) = (Vec::new(), Vec::new());
    while let Some(p) = read_record(&mut r) {
        let Ok(ranges) = codec().deserialize::<Vec<RangeData>>(&p) else {
            break;
        };
        at += 20 + p.len() as u64;
        records.push(ranges);
        ends.push(at);
    }
    Ok(Loaded { key, records, ends })
}

/// The end of the last range of the last record.
fn upto(records: &[Vec<RangeData>]) -> Option<u64> {
    records
        .iter()
        .rev()
        .find_map(|r| r.last())
        .and_then(|r| r.end())
}

impl Applier {
    fn part_err(&self, what: &'static str, name: &str, e: io::Error) -> ApplyError {
        ApplyError::io(what, self.staging_path.join(name).display(), e)
    }

    fn open_part(&self, name: &str, flags: i32) -> Result<File, ApplyError> {
        let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        sys::openat(&self.staging, OsStr::new(name), flags, 0o600)
            .map(File::from)
            .map_err(|e| self.part_err("opening", name, os_err(e)))
    }

    /// Every parts file: name, key, and how old it is. Unreadable ones are removed.
    fn part_files(&self) -> Result<Vec<(String, PartKey, Duration)>, ApplyError> {
        let entries = sys::read_dir(&self.staging)
            .map_err(|e| ApplyError::io("listing", self.staging_path.display(), os_err(e)))?;
        let mut out = Vec::new();
        for e in entries {
            let Some(name) = std::str::from_utf8(&e.name)
                .ok()
                .filter(|n| n.ends_with(SUFFIX))
            else {
                continue;
            };
            let key = self.open_part(name, libc::O_RDONLY).and_then(|f| {
                let age = f.metadata().and_then(|m| m.modified()).ok();
                let age = age.and_then(|t| SystemTime::now().duration_since(t).ok());
                let k = read_key(&mut BufReader::new(&f));
                let (k, _) = k.map_err(|e| self.part_err("reading", name, e))?;
                Ok((k, age.unwrap_or_default()))
            });
            match key {
                Ok((k, age)) if age < MAX_AGE => out.push((name.to_string(), k, age)),
                _ => self.drop_part(name),
            }
        }
        Ok(out)
    }

    fn drop_part(&self, name: &str) {
        if let Err(e) = sys::unlinkat(&self.staging, OsStr::new(name), false) {
            if e.0 != libc::ENOENT {
                tracing::warn!("cannot remove kept parts {name}: {e}");
            }
        }
    }

    /// The updates from `peer` this node holds parts of (for `Message::Staged`).
    pub fn parts_held(&self, peer: &str) -> Result<Vec<StagedItem>, ApplyError> {
        let mut out = Vec::new();
        for (name, key, _) in self.part_files()? {
            if key.peer != peer || out.len() >= MAX_STAGED_ITEMS {
                continue;
            }
            let f = self.open_part(&name, libc::O_RDONLY)?;
            let r = read_all(&f).map_err(|e| self.part_err("reading", &name, e))?;
            if let Some(upto) = upto(&r.records) {
                let (path, base, hash) = (key.path, key.base, key.hash);
                out.push(StagedItem {
                    path,
                    base,
                    hash,
                    upto,
                });
            }
        }
        Ok(out)
    }

    /// Starts keeping the parts of update `key`. With `from` > 0 the parts kept earlier
    /// whose ranges end at or before `from` stay (an error if there are none); other
    /// parts files of the same peer and path go.
    pub fn parts_begin(&self, key: &PartKey, from: u64) -> Result<Parts, ApplyError> {
        let name = name_of(key);
        let mine = |k: &PartKey| k.peer == key.peer;
        let files = self.part_files()?;
        for (n, k, _) in files.iter().filter(|(n, k, _)| *n != name && mine(k)) {
            if k.path == key.path {
                self.drop_part(n);
            }
        }
        let mut others: Vec<_> = files
            .iter()
            .filter(|(n, k, _)| *n != name && mine(k))
            .collect();
        others.sort_by_key(|(_, _, age)| std::cmp::Reverse(*age));
        for (n, _, _) in others
            .iter()
            .take(others.len().saturating_sub(MAX_STAGED_ITEMS - 1))
        {
            self.drop_part(n);
        }
        if from > 0 {
            return self.resume_part(key, name, from);
        }
        let mut file = self.open_part(&name, libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC)?;
        let head = codec().serialize(key).expect("a key serializes");
        (file
            .write_all(MAGIC)
            .and_then(|_| write_record(&mut file, &head)))
        .map_err(|e| self.part_err("writing", &name, e))?;
        Ok(Parts {
            file,
            name,
            ranges: 0,
        })
    }

    fn resume_part(&self, key: &PartKey, name: String, from: u64) -> Result<Parts, ApplyError> {
        let gone = || ApplyError::BadRequest(format!("{}: no parts kept to resume", key.path));
        let file = self.open_part(&name, libc::O_RDWR).map_err(|_| gone())?;
        let r = read_all(&file).map_err(|e| self.part_err("reading", &name, e))?;
        if &r.key != key {
            return Err(gone());
        }
        let keep = r
            .records
            .iter()
            .take_while(|rs| rs.last().and_then(|x| x.end()).is_some_and(|e| e <= from))
            .count();
        if keep == 0 {
            return Err(gone());
        }
        let end = r.ends[keep - 1];
        sys::ftruncate(&file, end).map_err(|e| self.part_err("truncating", &name, os_err(e)))?;
        let mut file = file;
        file.seek(SeekFrom::Start(end))
            .map_err(|e| self.part_err("seeking", &name, e))?;
        let ranges = r.records[..keep].iter().map(Vec::len).sum();
        Ok(Parts { file, name, ranges })
    }

    /// Appends one part's ranges.
    pub fn parts_append(&self, p: &mut Parts, ranges: &[RangeData]) -> Result<(), ApplyError> {
        let payload = codec().serialize(ranges).map_err(io::Error::other);
        payload
            .and_then(|b| write_record(&mut p.file, &b))
            .map_err(|e| self.part_err("writing", &p.name, e))?;
        p.ranges += ranges.len();
        Ok(())
    }

    /// Every range kept, in order (the file stays until [`Applier::parts_done`]).
    pub fn parts_read(&self, p: &Parts) -> Result<Vec<RangeData>, ApplyError> {
        let r = read_all(&p.file).map_err(|e| self.part_err("reading", &p.name, e))?;
        let held: usize = r.records.iter().map(Vec::len).sum();
        if held != p.ranges {
            return Err(self.part_err("reading", &p.name, bad("parts lost")));
        }
        Ok(r.records.into_iter().flatten().collect())
    }

    /// The update was applied or refused: its parts go.
    pub fn parts_done(&self, p: Parts) {
        self.drop_part(&p.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::NoHooks;
    use crate::wire::Encoding;
    use std::sync::Arc;

    fn env() -> (tempfile::TempDir, Applier) {
        let t = tempfile::tempdir().unwrap();
        let (d, s) = (t.path().join("data"), t.path().join("staging"));
        std::fs::create_dir(&d).unwrap();
        std::fs::create_dir(&s).unwrap();
        let a = Applier::open(&d, &s, Arc::new(NoHooks)).unwrap();
        (t, a)
    }

    fn key(peer: &str, path: &str, hash: u8) -> PartKey {
        PartKey {
            peer: peer.into(),
            path: RelPath::from_bytes(path.as_bytes()).unwrap(),
            base: None,
            hash: [hash; 32],
        }
    }

    fn range(offset: u64, len: u64) -> RangeData {
        let data = vec![offset as u8; len as usize];
        RangeData {
            offset,
            len,
            encoding: Encoding::Raw,
            data,
        }
    }

    #[test]
    fn parts_survive_a_new_session_and_resume_where_they_ended() {
        let (t, a) = env();
        let k = key("p1", "big", 7);
        let mut p = a.parts_begin(&k, 0).unwrap();
        a.parts_append(&mut p, &[range(0, 10), range(10, 10)])
            .unwrap();
        a.parts_append(&mut p, &[range(20, 10)]).unwrap();
        drop(p); // the link is cut
        let held = a.parts_held("p1").unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!((held[0].upto, held[0].hash), (30, [7; 32]));
        assert!(
            a.parts_held("p2").unwrap().is_empty(),
            "another peer's parts are not offered"
        );
        // The sender resumes at 20: the record ending at 30 goes, the one ending at 20 stays.
        let mut p = a.parts_begin(&k, 20).unwrap();
        a.parts_append(&mut p, &[range(20, 5)]).unwrap();
        let got: Vec<_> = a
            .parts_read(&p)
            .unwrap()
            .iter()
            .map(|r| (r.offset, r.len))
            .collect();
        assert_eq!(got, vec![(0, 10), (10, 10), (20, 5)]);
        a.parts_done(p);
        assert!(a.parts_held("p1").unwrap().is_empty());
        assert_eq!(
            std::fs::read_dir(t.path().join("staging")).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_torn_tail_ends_the_parts_and_a_resume_without_parts_is_refused() {
        let (t, a) = env();
        let k = key("p1", "big", 7);
        assert!(a.parts_begin(&k, 5).is_err(), "nothing kept yet");
        let mut p = a.parts_begin(&k, 0).unwrap();
        a.parts_append(&mut p, &[range(0, 10)]).unwrap();
        a.parts_append(&mut p, &[range(10, 10)]).unwrap();
        drop(p);
        let f = std::fs::read_dir(t.path().join("staging"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let len = f.metadata().unwrap().len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(f.path())
            .unwrap();
        file.set_len(len - 3).unwrap(); // a crash tore the last record
        assert_eq!(a.parts_held("p1").unwrap()[0].upto, 10);
        let mut raw = std::fs::read(f.path()).unwrap();
        let first = 8 + 20 + codec().serialize(&k).unwrap().len() + 20;
        raw[first + 2] ^= 1; // and a flipped bit in the first
        std::fs::write(f.path(), raw).unwrap();
        assert!(
            a.parts_held("p1").unwrap().is_empty(),
            "corrupt records are not offered"
        );
        assert!(a.parts_begin(&k, 10).is_err());
    }

    #[test]
    fn a_new_update_of_the_path_drops_the_old_parts_and_files_stay_few() {
        let (t, a) = env();
        let mut p = a.parts_begin(&key("p1", "f", 1), 0).unwrap();
        a.parts_append(&mut p, &[range(0, 10)]).unwrap();
        let mut q = a.parts_begin(&key("p1", "f", 2), 0).unwrap();
        a.parts_append(&mut q, &[range(0, 10)]).unwrap();
        let held = a.parts_held("p1").unwrap();
        assert_eq!(held.iter().map(|h| h.hash[0]).collect::<Vec<_>>(), vec![2]);
        for i in 0..(MAX_STAGED_ITEMS + 5) {
            let mut p = a.parts_begin(&key("p1", &format!("g{i}"), 1), 0).unwrap();
            a.parts_append(&mut p, &[range(0, 1)]).unwrap();
        }
        let n = std::fs::read_dir(t.path().join("staging")).unwrap().count();
        assert!(n <= MAX_STAGED_ITEMS, "{n} parts files kept");
    }
}
