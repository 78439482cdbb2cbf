//! The write-ahead intent log: an append-only file of framed, checksummed records.
//!
//! Frame: `u32 LE payload length`, `u32 LE checksum` (first 4 bytes of BLAKE3 of the
//! payload), then the bincode-encoded [`Record`]. Each frame is appended with one
//! `write(2)` on an `O_APPEND` descriptor, so once the call returns the record is in
//! the kernel page cache and survives a kill of the process. Every log file starts
//! with a [`Record::Header`] naming its generation, then a [`Record::Format`] naming
//! the format of the records after it ([`FORMAT`]). A log without a `Format` record
//! (written before formats were recorded) is format 1; a log of a format above
//! [`FORMAT`] is refused ([`read_log`] fails naming the file and both formats) rather
//! than misread. Every future format must keep `Header` and `Format` (variants 0 and 7)
//! as they are.
//!
//! Reading stops at the first torn or corrupt frame; everything before it is kept.

use super::op::{FileId, MetaOp};
use super::JournalError;
use crate::path::RelPath;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the active intent log inside the journal directory.
pub const ACTIVE_NAME: &str = "intent.log";
/// Name a fresh log is prepared under before it becomes active.
const NEW_NAME: &str = "intent.log.new";
/// Largest payload accepted when reading (guards against garbage lengths).
const MAX_RECORD: u32 = 64 * 1024 * 1024;
/// Frame header size: length + checksum.
const FRAME_HEADER: usize = 8;
/// Format of the records this build writes and reads. A log without a
/// [`Record::Format`] is format 1.
pub const FORMAT: u32 = 1;

/// One entry of the intent log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// First record of every log file: its generation number.
    Header { gen: u64 },
    /// `file` is known at `path`.
    Track { file: FileId, path: RelPath },
    /// Bytes `[start, end)` of `file` are about to be written.
    Write { file: FileId, start: u64, end: u64 },
    /// `file` was truncated or extended to `size`.
    Size { file: FileId, size: u64 },
    /// Metadata operation number `seq`.
    Meta { seq: u64, op: MetaOp },
    /// The last link of `file` is gone.
    Forget { file: FileId },
    /// Metadata ops made void before they were sent (a file created and removed, an
    /// attribute set again): removed from the pending log. Logged, so that a replay
    /// drops exactly what the live journal dropped. Added after the variants above:
    /// older logs still decode.
    Drop { seqs: Vec<u64> },
    /// Second record of every log since formats were recorded: the format of the
    /// records after it. Kept last, so the variant indices of the others never change.
    Format { version: u32 },
}

/// The active log: an `O_APPEND` file plus its generation and size.
pub struct Wal {
    file: Arc<File>,
    gen: u64,
    bytes: u64,
    /// The end of the blocks allocated ahead of the log (see [`ROOM`]).
    room: u64,
}

/// Bytes of disk the log keeps allocated ahead of its end (`fallocate`, the size
/// unchanged): thousands of records (about 8,000 deletes) still fit once the disk is
/// full, so that a user can delete files through the mount to free space, and no
/// change goes unrecorded.
const ROOM: u64 = 512 << 10;

/// What was read back from one log file.
pub struct LogContents {
    /// Generation from the header, or `None` for an empty/headerless file.
    pub gen: Option<u64>,
    /// The log's format: from its [`Record::Format`], 1 when it has none. Records of a
    /// format above [`FORMAT`] are not read.
    pub format: u32,
    /// Records after the header, up to the first torn or corrupt frame.
    pub records: Vec<Record>,
    /// True when reading stopped at a torn or corrupt frame.
    pub torn: bool,
}

impl Wal {
    /// Creates a fresh log of generation `gen` and installs it as `dir/intent.log`.
    /// The current active log, if any, must already have been renamed away.
    pub fn create(dir: &Path, gen: u64) -> Result<Wal, JournalError> {
        let wal = Wal::prepare(dir, gen)?;
        Wal::install(dir)?;
        Ok(wal)
    }

    /// Writes a fresh log of generation `gen` under a temporary name, leaving the
    /// active log alone: a failure here (no fds, no space) changes nothing.
    pub fn prepare(dir: &Path, gen: u64) -> Result<Wal, JournalError> {
        let file = create_append(&dir.join(NEW_NAME))?;
        let mut wal = Wal {
            file: Arc::new(file),
            gen,
            bytes: 0,
            room: 0,
        };
        wal.make_room();
        wal.append(&Record::Header { gen })?;
        wal.append(&Record::Format { version: FORMAT })?;
        Ok(wal)
    }

    /// Makes the log written by [`Wal::prepare`] the active one.
    pub fn install(dir: &Path) -> Result<(), JournalError> {
        let active = dir.join(ACTIVE_NAME);
        std::fs::rename(dir.join(NEW_NAME), &active)
            .map_err(|e| JournalError::io(format!("install {}", active.display()), e))
    }

    /// Removes a prepared log that was never installed.
    pub fn discard_prepared(dir: &Path) {
        let _ = std::fs::remove_file(dir.join(NEW_NAME));
    }

    /// Appends one record with a single `write(2)`. A failed write is cut off again:
    /// a torn frame would hide every later record from the replay.
    pub fn append(&mut self, rec: &Record) -> Result<(), JournalError> {
        let buf = encode_frame(rec)?;
        if let Err(e) = (&*self.file).write_all(&buf) {
            if self.file.metadata().is_ok_and(|m| m.len() > self.bytes) {
                let _ = self.file.set_len(self.bytes); // (frees the room too)
                self.room = 0;
                self.make_room();
            }
            return Err(JournalError::io(
                format!("append to intent log gen {}", self.gen),
                e,
            ));
        }
        self.bytes += buf.len() as u64;
        if self.bytes + ROOM / 2 > self.room {
            self.make_room();
        }
        Ok(())
    }

    /// Gives back the room past the end (the log is no longer appended to).
    pub fn shed_room(&self) {
        if self.room > 0 {
            let _ = self.file.set_len(self.bytes);
        }
    }

    /// Allocates [`ROOM`] bytes past the end, if the disk has them.
    fn make_room(&mut self) {
        match crate::sys::fallocate(&*self.file, libc::FALLOC_FL_KEEP_SIZE, self.bytes, ROOM) {
            Ok(()) => self.room = self.bytes + ROOM,
            Err(e) => tracing::debug!("no room allocated ahead of the intent log: {e}"),
        }
    }

    /// The generation of this log.
    pub fn gen(&self) -> u64 {
        self.gen
    }

    /// Bytes appended so far (including the header).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A shared handle to the file, for `fdatasync` outside the journal lock.
    pub fn handle(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }
}

/// Path an old log of generation `gen` is renamed to while it is folded into sled.
pub fn old_path(dir: &Path, gen: u64) -> PathBuf {
    dir.join(format!("intent.{gen}.old"))
}

/// Generation encoded in an old log's file name, if `name` is one.
pub fn parse_old_name(name: &str) -> Option<u64> {
    name.strip_prefix("intent.")?
        .strip_suffix(".old")?
        .parse()
        .ok()
}

/// Old logs in `dir` as `(generation from name, path)`, in ascending order.
pub fn list_old(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| JournalError::io(format!("list {}", dir.display()), e))?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| JournalError::io(format!("list {}", dir.display()), e))?;
        if let Some(gen) = ent.file_name().to_str().and_then(parse_old_name) {
            out.push((gen, ent.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Encodes one frame: length, checksum, payload.
pub fn encode_frame(rec: &Record) -> Result<Vec<u8>, JournalError> {
    let payload = bincode::serialize(rec).map_err(|e| JournalError::encode("intent record", e))?;
    let mut buf = Vec::with_capacity(FRAME_HEADER + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&checksum(&payload).to_le_bytes());
    buf.extend_from_slice(&payload);
    Ok(buf)
}

/// Reads a log file; a missing file reads as empty. A log of a format newer than
/// [`FORMAT`] is an error.
pub fn read_log(path: &Path) -> Result<LogContents, JournalError> {
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut data)
                .map_err(|e| JournalError::io(format!("read {}", path.display()), e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(JournalError::io(format!("open {}", path.display()), e)),
    }
    let log = decode_log(&data);
    if log.format > FORMAT {
        return Err(JournalError::UnknownFormat {
            what: format!("intent log {}", path.display()),
            found: log.format,
            known: FORMAT,
        });
    }
    Ok(log)
}

/// Decodes frames from `data` until the end, the first bad frame, or a [`Record::Format`]
/// above [`FORMAT`] (the caller refuses such a log).
pub fn decode_log(data: &[u8]) -> LogContents {
    let mut out = LogContents {
        gen: None,
        format: 1,
        records: Vec::new(),
        torn: false,
    };
    let mut pos = 0;
    let mut after_header = false; // the last record read was the header
    while pos < data.len() {
        let Some((rec, used)) = decode_frame(&data[pos..]) else {
            out.torn = true;
            break;
        };
        pos += used;
        let next_to_header = std::mem::replace(&mut after_header, false);
        match (out.gen, rec) {
            (None, Record::Header { gen }) => {
                out.gen = Some(gen);
                after_header = true;
            }
            (Some(_), Record::Format { version }) if next_to_header => {
                out.format = version;
                if version > FORMAT {
                    break; // not ours to read
                }
            }
            (None, _) | (Some(_), Record::Header { .. } | Record::Format { .. }) => {
                out.torn = true;
                break;
            }
            (Some(_), rec) => out.records.push(rec),
        }
    }
    out
}

/// Decodes one frame at the start of `data`: the record and the bytes it used.
fn decode_frame(data: &[u8]) -> Option<(Record, usize)> {
    let len = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?);
    let sum = u32::from_le_bytes(data.get(4..8)?.try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let payload = data.get(FRAME_HEADER..FRAME_HEADER + len as usize)?;
    if checksum(payload) != sum {
        return None;
    }
    let rec = bincode::deserialize(payload).ok()?;
    Some((rec, FRAME_HEADER + len as usize))
}

/// First four bytes of the payload's BLAKE3 hash.
fn checksum(payload: &[u8]) -> u32 {
    let h = blake3::hash(payload);
    u32::from_le_bytes(h.as_bytes()[0..4].try_into().expect("4 bytes"))
}

/// Creates `path` afresh (replacing a leftover) and opens it for appending.
fn create_append(path: &Path) -> Result<File, JournalError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(JournalError::io(format!("remove {}", path.display()), e));
        }
        _ => {}
    }
    OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| JournalError::io(format!("create {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_stop_at_torn_tail() {
        let recs = [
            Record::Header { gen: 7 },
            Record::Write {
                file: 1,
                start: 0,
                end: 10,
            },
            Record::Size { file: 1, size: 5 },
        ];
        let mut data = Vec::new();
        for r in &recs {
            data.extend(encode_frame(r).unwrap());
        }
        let full = decode_log(&data);
        assert_eq!(full.gen, Some(7));
        assert_eq!(full.records, recs[1..].to_vec());
        assert!(!full.torn);
        let cut = decode_log(&data[..data.len() - 1]);
        assert_eq!(cut.records, recs[1..2].to_vec());
        assert!(cut.torn);
        let mut flipped = data.clone();
        let n = flipped.len();
        flipped[n - 1] ^= 0xff;
        assert_eq!(decode_log(&flipped).records.len(), 1);
    }

    #[test]
    fn the_format_follows_the_header_or_the_log_is_format_1() {
        let frames = |recs: &[Record]| -> Vec<u8> {
            recs.iter().flat_map(|r| encode_frame(r).unwrap()).collect()
        };
        let (header, write) = (Record::Header { gen: 3 }, Record::Size { file: 1, size: 5 });
        let format = |version| Record::Format { version };
        let log = decode_log(&frames(&[header.clone(), format(FORMAT), write.clone()]));
        assert_eq!(
            (log.format, &log.records, log.torn),
            (FORMAT, &vec![write.clone()], false)
        );
        let log = decode_log(&frames(&[header.clone(), write.clone()]));
        assert_eq!(
            (log.format, &log.records, log.torn),
            (1, &vec![write.clone()], false)
        );
        // anywhere else it is out of place: read as the end of the log
        let log = decode_log(&frames(&[
            header.clone(),
            write.clone(),
            format(1),
            write.clone(),
        ]));
        assert_eq!((log.records.len(), log.torn), (1, true));
        let log = decode_log(&frames(&[header, format(99), write]));
        assert_eq!((log.format, log.records.len()), (99, 0));
    }

    #[test]
    fn old_names_parse() {
        assert_eq!(parse_old_name("intent.12.old"), Some(12));
        assert_eq!(parse_old_name("intent.log"), None);
        assert_eq!(parse_old_name("intent.x.old"), None);
    }
}
