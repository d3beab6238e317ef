//! Little-endian encoding helpers shared by the state snapshots.
//!
//! Every snapshot in this crate is a fixed-size little-endian byte image. The
//! cursor types here write and read such images without ever panicking: a
//! write past the end or a read past the end only records a failure, which
//! the caller checks once at the end with `finish`. That keeps the encoders
//! free of per-field error plumbing while staying panic-free on any buffer.

/// Sequential little-endian writer over a caller-provided byte buffer.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
    overflow: bool,
}

impl<'a> Writer<'a> {
    /// Starts writing at the beginning of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Writer {
            buf,
            pos: 0,
            overflow: false,
        }
    }

    /// Appends raw bytes, or records an overflow if they do not fit.
    pub fn bytes(&mut self, data: &[u8]) {
        let end = match self.pos.checked_add(data.len()) {
            Some(end) => end,
            None => {
                self.overflow = true;
                return;
            }
        };
        match self.buf.get_mut(self.pos..end) {
            Some(dst) => {
                dst.copy_from_slice(data);
                self.pos = end;
            }
            None => self.overflow = true,
        }
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }

    /// Appends a boolean as one byte holding 0 or 1.
    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    /// Appends a little-endian `u16`.
    pub fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }

    /// Appends a little-endian `u32`.
    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }

    /// Appends a little-endian `u64`.
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    /// Appends `n` zero bytes, used for reserved fields.
    pub fn zeros(&mut self, n: usize) {
        for _ in 0..n {
            self.u8(0);
        }
    }

    /// Returns the number of bytes written, or `None` if anything overflowed.
    pub fn finish(self) -> Option<usize> {
        if self.overflow {
            None
        } else {
            Some(self.pos)
        }
    }
}

/// Sequential little-endian reader over a byte slice.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    short: bool,
    bad: bool,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            short: false,
            bad: false,
        }
    }

    /// Copies the next `N` bytes, yielding zeros (and recording the failure)
    /// when the buffer is too short.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let src = self
            .pos
            .checked_add(N)
            .and_then(|end| self.buf.get(self.pos..end).map(|s| (s, end)));
        match src {
            Some((s, end)) => {
                out.copy_from_slice(s);
                self.pos = end;
            }
            None => self.short = true,
        }
        out
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> u8 {
        let [b] = self.array::<1>();
        b
    }

    /// Reads a boolean stored as 0 or 1; any other value marks the input bad.
    pub fn bool(&mut self) -> bool {
        match self.u8() {
            0 => false,
            1 => true,
            _ => {
                self.bad = true;
                false
            }
        }
    }

    /// Reads a little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// Reads a little-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// Reads a little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// Skips `n` reserved bytes, which must all be zero so that a future
    /// version can give them a meaning without being misread by this one.
    pub fn zeros(&mut self, n: usize) {
        for _ in 0..n {
            if self.u8() != 0 {
                self.bad = true;
            }
        }
    }

    /// Records that a decoded value violated an invariant.
    pub fn reject(&mut self) {
        self.bad = true;
    }

    /// Checks `cond` and records a violation when it is false.
    pub fn check(&mut self, cond: bool) {
        if !cond {
            self.bad = true;
        }
    }

    /// Succeeds only if every read was in bounds and every value valid.
    pub fn finish(self) -> Option<usize> {
        if self.short || self.bad {
            None
        } else {
            Some(self.pos)
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, as used by zlib) of `data`.
///
/// The migration stream carries it so that a corrupted image is refused
/// instead of being loaded as a plausible but wrong device state. A bitwise
/// loop is used because the stream is a few hundred bytes and a table would
/// cost a kilobyte of kernel text.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc: u32 = !0;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
    use super::*;

    #[test]
    fn crc32_matches_the_reference_check_value() {
        // The standard check value of CRC-32/ISO-HDLC for "123456789".
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn writer_reports_overflow_and_reader_reports_short_input() {
        let mut buf = [0u8; 5];
        let mut w = Writer::new(&mut buf);
        w.u32(0x0403_0201);
        w.u16(7);
        assert_eq!(w.finish(), None);
        assert_eq!(buf, [1, 2, 3, 4, 0]);

        let mut r = Reader::new(&buf);
        assert_eq!(r.u32(), 0x0403_0201);
        assert_eq!(r.u16(), 0);
        assert_eq!(r.finish(), None);
    }

    #[test]
    fn round_trip_of_every_width() {
        let mut buf = [0u8; 17];
        let mut w = Writer::new(&mut buf);
        w.u8(0xAB);
        w.bool(true);
        w.u16(0xBEEF);
        w.u32(0xDEAD_BEEF);
        w.u64(0x0123_4567_89AB_CDEF);
        w.zeros(1);
        assert_eq!(w.finish(), Some(17));
        let mut r = Reader::new(&buf);
        assert_eq!(r.u8(), 0xAB);
        assert!(r.bool());
        assert_eq!(r.u16(), 0xBEEF);
        assert_eq!(r.u32(), 0xDEAD_BEEF);
        assert_eq!(r.u64(), 0x0123_4567_89AB_CDEF);
        r.zeros(1);
        assert_eq!(r.finish(), Some(17));
    }

    #[test]
    fn reader_rejects_non_boolean_and_non_zero_reserved_bytes() {
        let mut r = Reader::new(&[2]);
        let _ = r.bool();
        assert_eq!(r.finish(), None);
        let mut r = Reader::new(&[0, 1]);
        r.zeros(2);
        assert_eq!(r.finish(), None);
    }
}
