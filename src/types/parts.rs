//! Buffers written in order with vectored writes (to a socket, or to a file): which slices
//! are still to go, and how far each write got. No I/O here: the writer makes the call and
//! reports how many bytes it took.

use bytes::Bytes;
use std::io::IoSlice;

/// Slices per write: well under the kernel's IOV_MAX (1024).
pub const MAX_SLICES: usize = 64;

/// The buffers still to write, from where the last write stopped.
pub struct Parts<'a> {
    parts: &'a [Bytes],
    /// The first buffer not wholly written, and how much of it is.
    first: usize,
    skip: usize,
}

impl<'a> Parts<'a> {
    pub fn new(parts: &'a [Bytes]) -> Self {
        Parts { parts, first: 0, skip: 0 }
    }

    pub fn is_done(&self) -> bool {
        self.first >= self.parts.len()
    }

    /// Fills `out` with what is left, at most [`MAX_SLICES`]; returns how many it filled.
    pub fn slices(&self, out: &mut [IoSlice<'a>; MAX_SLICES]) -> usize {
        let mut n = 0;
        for (i, p) in self.parts[self.first..].iter().take(MAX_SLICES).enumerate() {
            out[i] = IoSlice::new(if i == 0 { &p[self.skip..] } else { p });
            n += 1;
        }
        n
    }

    /// Moves past `written` bytes.
    pub fn advance(&mut self, mut written: usize) {
        while written > 0 && self.first < self.parts.len() {
            let left = self.parts[self.first].len() - self.skip;
            if written >= left {
                written -= left;
                self.first += 1;
                self.skip = 0;
            } else {
                self.skip += written;
                written = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let parts = [Bytes::from_static(b"abc"), Bytes::from_static(b""), Bytes::from_static(b"defg")];
        let mut p = Parts::new(&parts);
        let mut out = [IoSlice::new(&[]); MAX_SLICES];
        let mut got = Vec::new();
        // Writes of 2 bytes at most, as a socket short of room might take.
        while !p.is_done() {
            let n = p.slices(&mut out);
            let flat: Vec<u8> = out[..n].iter().flat_map(|s| s.iter().copied()).collect();
            let took = flat.len().min(2);
            got.extend_from_slice(&flat[..took]);
            p.advance(took);
            if took == 0 {
                break;
            }
        }
        assert_eq!(got, b"abcdefg");
        assert!(p.is_done());
    }
}
