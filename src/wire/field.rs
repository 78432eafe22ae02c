//! Byte-field helpers shared by the layout tables.
//!
//! Reads and writes never panic: a field outside the slice reads as zeros and is not written.
//! Every caller has already proved the slice long enough (views are built with checked
//! lengths), so the fallback is unreachable in practice; it exists so that no input can turn
//! into an out-of-bounds panic.

#[inline(always)]
pub fn bytes<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(s) = b.get(off..off + N) {
        out.copy_from_slice(s);
    }
    out
}

#[inline(always)]
pub fn u8_at(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}

#[inline(always)]
pub fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes(bytes(b, off))
}

#[inline(always)]
pub fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(bytes(b, off))
}

#[inline(always)]
pub fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(bytes(b, off))
}

#[inline(always)]
pub fn put(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(d) = b.get_mut(off..off + v.len()) {
        d.copy_from_slice(v);
    }
}

#[inline(always)]
pub fn put_u8(b: &mut [u8], off: usize, v: u8) {
    if let Some(d) = b.get_mut(off) {
        *d = v;
    }
}

#[inline(always)]
pub fn put16(b: &mut [u8], off: usize, v: u16) {
    put(b, off, &v.to_be_bytes())
}

#[inline(always)]
pub fn put32(b: &mut [u8], off: usize, v: u32) {
    put(b, off, &v.to_be_bytes())
}

#[inline(always)]
pub fn put64(b: &mut [u8], off: usize, v: u64) {
    put(b, off, &v.to_be_bytes())
}

/// True if a NUL-padded name field contains its terminating NUL (kernels `strlcpy` it, and an
/// unterminated name makes FreeBSD's import read past the field).
#[inline]
pub fn name_terminated(raw: &[u8]) -> bool {
    raw.contains(&0)
}
