//! The inverse of `arbitrary`'s decoding for the fixed-size input types of the fuzz targets,
//! so seed corpora can be written from structured values.
//!
//! `arbitrary` 1.x reads integers as little-endian bytes (zero-padded when the input runs
//! out), `bool` as the low bit of one byte, fixed arrays element by element, and an enum's
//! variant from a `u32` `x` as `(x * variant_count) >> 32`. The round-trip tests of each
//! target pin this down, so a change in `arbitrary` shows up as a failing test, not as a
//! silently different corpus.

/// A value that can be written as the bytes `arbitrary` decodes it from.
pub(crate) trait Encode {
    /// Appends the encoding of `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>);
}

impl Encode for u8 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }
}

impl Encode for u16 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Encode for u32 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Encode for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(*self as u8);
    }
}

impl<T: Encode, const N: usize> Encode for [T; N] {
    fn encode(&self, out: &mut Vec<u8>) {
        for v in self {
            v.encode(out);
        }
    }
}

/// Writes the `u32` that makes a derived `Arbitrary` enum pick variant `index` of `count`.
pub(crate) fn variant(out: &mut Vec<u8>, index: u32, count: u32) {
    let x = ((index as u64) << 32).div_ceil(count as u64);
    (x as u32).encode(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_selector_round_trips() {
        for count in 1..=20u32 {
            for index in 0..count {
                let mut b = Vec::new();
                variant(&mut b, index, count);
                let x = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                assert_eq!(((x as u64 * count as u64) >> 32) as u32, index);
            }
        }
    }
}
