//! Several files read as one: what the receiver of a chunk exchange rebuilds a new
//! file from when the sender named more than one source (data of several files moved
//! into one). Read-only, by offset, like a single file.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// Files joined end to end, each taken at the length it had when opened.
pub struct Joined {
    /// Each file and where it starts in the whole.
    parts: Vec<(File, u64)>,
    len: u64,
}

impl Joined {
    /// `files` (each with its length), end to end.
    pub fn new(files: Vec<(File, u64)>) -> Joined {
        let (mut parts, mut at) = (Vec::with_capacity(files.len()), 0);
        for (f, len) in files {
            parts.push((f, at));
            at += len;
        }
        Joined { parts, len: at }
    }

    /// Bytes in all.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True with no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads the whole, from the start.
    pub fn reader(&self) -> impl Read + '_ {
        Reader {
            joined: self,
            at: 0,
        }
    }

    /// The part holding `offset`: its file, its start, its end.
    fn part(&self, offset: u64) -> Option<(&File, u64, u64)> {
        let i = self.parts.partition_point(|(_, start)| *start <= offset);
        let (f, start) = self.parts.get(i.checked_sub(1)?)?;
        let end = self.parts.get(i).map_or(self.len, |(_, s)| *s);
        (offset < end).then_some((f, *start, end))
    }
}

impl FileExt for Joined {
    /// Reads from the part holding `offset`, never past its end (a short read; a
    /// file cut since it was opened reads as its end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let Some((f, start, end)) = self.part(offset) else {
            return Ok(0);
        };
        let n = buf.len().min((end - offset) as usize);
        f.read_at(&mut buf[..n], offset - start)
    }

    fn write_at(&self, _: &[u8], _: u64) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "joined files are read-only",
        ))
    }
}

struct Reader<'a> {
    joined: &'a Joined,
    at: u64,
}

impl Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.joined.read_at(buf, self.at)?;
        self.at += n as u64;
        if n == 0 && self.at < self.joined.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a joined file was cut",
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(bytes: &[u8]) -> (File, u64) {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        (f, bytes.len() as u64)
    }

    #[test]
    fn reads_by_offset_and_whole_across_the_joins() {
        let j = Joined::new(vec![
            file(b"hello "),
            file(b""),
            file(b"wide "),
            file(b"world"),
        ]);
        assert_eq!(j.len(), 16);
        let mut all = Vec::new();
        j.reader().read_to_end(&mut all).unwrap();
        assert_eq!(all, b"hello wide world");
        let mut buf = [0u8; 8];
        j.read_exact_at(&mut buf, 4).unwrap();
        assert_eq!(&buf, b"o wide w");
        assert_eq!(j.read_at(&mut buf, 16).unwrap(), 0, "past the end");
        assert!(j.read_exact_at(&mut buf, 12).is_err(), "only 4 bytes left");
    }

    #[test]
    fn a_part_cut_since_it_was_opened_is_an_error_not_other_bytes() {
        let (f, _) = file(b"abcdef");
        let j = Joined::new(vec![(f.try_clone().unwrap(), 6), file(b"xyz")]);
        f.set_len(2).unwrap();
        let mut buf = [0u8; 5];
        assert!(j.read_exact_at(&mut buf, 0).is_err());
        assert!(j.reader().read_to_end(&mut Vec::new()).is_err());
    }
}
