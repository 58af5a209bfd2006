//! RAID-Z geometry and parity: where a block's columns live on a raidz group's children,
//! P (XOR) and Q (GF(2^8), generator 2) parity, and reconstruction of up to `p` lost
//! columns.
//!
//! Owns: pure functions only (no I/O), so the property tests cover every loss pattern.
//! Invariants: a block of `s` data sectors at group sector `b` on `n` children with `p`
//! parity uses `ceil(s/(n-p))` rows, `p` parity sectors per row, and its allocation is
//! rounded up to a multiple of `p+1` sectors (as ZFS), so no two blocks share a stripe
//! row and a partial write never damages another block's parity (no write hole).
//! Parity columns are first and are as long as the longest data column; data is laid out
//! column after column, so each data column is one contiguous slice of the block.
//! Never: allocates or frees space; never reads devices.

use super::limits::SECTOR_BYTES;

/// One column of a block on a raidz group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaidzCol {
    /// Child index in the group.
    pub child: usize,
    /// Byte offset in the child's data region.
    pub offset: u64,
    /// Bytes in this column (a multiple of the sector size).
    pub size: u64,
}

/// The layout of one block on a raidz group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaidzMap {
    /// Columns: the first `parity` are parity, the rest data in block order.
    pub cols: Vec<RaidzCol>,
    /// Parity columns (1 or 2).
    pub parity: usize,
    /// Allocated bytes for the block, parity and padding included.
    pub asize: u64,
}

/// Allocated bytes for `psize` on a raidz group of `n` children with `p` parity.
pub fn raidz_asize(psize: u64, n: usize, p: usize) -> u64 {
    assert!(n > p && p >= 1);
    let s = psize.div_ceil(SECTOR_BYTES);
    let ndata = (n - p) as u64;
    let rows = s.div_ceil(ndata);
    let tot = s + p as u64 * rows;
    tot.div_ceil(p as u64 + 1) * (p as u64 + 1) * SECTOR_BYTES
}

impl RaidzMap {
    /// Map a block of `psize` bytes at group byte offset `offset` onto `n` children with
    /// `p` parity columns (ZFS's `vdev_raidz_map_alloc` without its parity rotation).
    pub fn new(offset: u64, psize: u64, n: usize, p: usize) -> RaidzMap {
        assert!(
            offset.is_multiple_of(SECTOR_BYTES) && psize.is_multiple_of(SECTOR_BYTES) && psize > 0
        );
        assert!(n > p && p >= 1);
        let b = offset / SECTOR_BYTES;
        let s = psize / SECTOR_BYTES;
        let ndata = (n - p) as u64;
        let f = (b % n as u64) as usize;
        let o = (b / n as u64) * SECTOR_BYTES;
        let q = s / ndata;
        let r = s - q * ndata;
        let bc = if r == 0 { 0 } else { r + p as u64 };
        let acols = if q == 0 { bc as usize } else { n };
        let mut cols = Vec::with_capacity(acols);
        for c in 0..acols {
            let mut child = f + c;
            let mut coff = o;
            if child >= n {
                child -= n;
                coff += SECTOR_BYTES;
            }
            let sectors = if (c as u64) < bc { q + 1 } else { q };
            cols.push(RaidzCol {
                child,
                offset: coff,
                size: sectors * SECTOR_BYTES,
            });
        }
        let map = RaidzMap {
            cols,
            parity: p,
            asize: raidz_asize(psize, n, p),
        };
        debug_assert_eq!(map.cols[p..].iter().map(|c| c.size).sum::<u64>(), psize);
        map
    }

    /// Byte range of data column `c` (an index into `cols`, `c >= parity`) in the block.
    pub fn data_range(&self, c: usize) -> std::ops::Range<usize> {
        assert!(c >= self.parity);
        let start: u64 = self.cols[self.parity..c].iter().map(|x| x.size).sum();
        start as usize..(start + self.cols[c].size) as usize
    }
}

/// GF(2^8) with polynomial 0x11d, as RAID-6 and RAID-Z.
struct Gf {
    exp: [u8; 512],
    log: [u8; 256],
}

const fn build_gf() -> Gf {
    let mut exp = [0u8; 512];
    let mut log = [0u8; 256];
    let mut x: u32 = 1;
    let mut i = 0;
    while i < 255 {
        exp[i] = x as u8;
        log[x as usize] = i as u8;
        x <<= 1;
        if x & 0x100 != 0 {
            x ^= 0x11d;
        }
        i += 1;
    }
    while i < 512 {
        exp[i] = exp[i - 255];
        i += 1;
    }
    Gf { exp, log }
}

static GF: Gf = build_gf();

fn gf_mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        return 0;
    }
    GF.exp[GF.log[a as usize] as usize + GF.log[b as usize] as usize]
}

fn gf_inv(a: u8) -> u8 {
    assert!(a != 0, "GF(2^8) zero has no inverse");
    GF.exp[255 - GF.log[a as usize] as usize]
}

fn gf_pow2(e: usize) -> u8 {
    GF.exp[e % 255]
}

/// `buf[i] = c * buf[i]` through a 256-entry product table.
fn mul_buf(buf: &mut [u8], c: u8) {
    let mut table = [0u8; 256];
    for (v, t) in table.iter_mut().enumerate() {
        *t = gf_mul(v as u8, c);
    }
    for b in buf {
        *b = table[*b as usize];
    }
}

/// `dst ^= src` over the length of `src`, 64 bits at a time.
fn xor_into(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    let (d8, dr) = dst[..n].split_at_mut(n / 8 * 8);
    let (s8, sr) = src.split_at(n / 8 * 8);
    for (d, s) in d8.chunks_exact_mut(8).zip(s8.chunks_exact(8)) {
        let v = u64::from_le_bytes(d[..8].try_into().unwrap_or([0; 8]))
            ^ u64::from_le_bytes(s[..8].try_into().unwrap_or([0; 8]));
        d.copy_from_slice(&v.to_le_bytes());
    }
    for (d, s) in dr.iter_mut().zip(sr) {
        *d ^= s;
    }
}

/// `buf = 2 * buf` in GF(2^8), eight bytes at a time (the RAID-Z trick).
fn mul2_buf(buf: &mut [u8]) {
    for d in buf.chunks_exact_mut(8) {
        let x = u64::from_le_bytes(d[..8].try_into().unwrap_or([0; 8]));
        let hi = x & 0x8080_8080_8080_8080;
        let mask = (hi << 1).wrapping_sub(hi >> 7);
        let v = ((x << 1) & 0xfefe_fefe_fefe_fefe) ^ (mask & 0x1d1d_1d1d_1d1d_1d1d);
        d.copy_from_slice(&v.to_le_bytes());
    }
}

/// Compute P (and Q when `parity == 2`) from the data columns `data`, into `out`, each
/// `out` buffer as long as the longest data column.
pub fn generate_parity(data: &[&[u8]], out: &mut [Vec<u8>]) {
    assert!(!out.is_empty() && out.len() <= 2);
    let len = out[0].len();
    for o in out.iter_mut() {
        assert_eq!(o.len(), len);
        o.fill(0);
    }
    for d in data {
        assert!(d.len() <= len);
        xor_into(&mut out[0], d);
    }
    if out.len() == 2 {
        for d in data {
            mul2_buf(&mut out[1]);
            xor_into(&mut out[1], d);
        }
    }
}

/// Rebuild the columns listed in `missing` (indices into `cols`, parity first) from the
/// others. `cols[i]` must be `sizes[i]` long for present columns; missing ones are
/// replaced. Returns false when the loss is beyond what parity covers.
pub fn reconstruct(cols: &mut [Vec<u8>], sizes: &[u64], parity: usize, missing: &[usize]) -> bool {
    assert_eq!(cols.len(), sizes.len());
    if missing.len() > parity {
        return false;
    }
    let len = sizes[0] as usize;
    let lost_data: Vec<usize> = missing.iter().copied().filter(|&c| c >= parity).collect();
    let p_ok = !missing.contains(&0);
    let q_ok = parity == 2 && !missing.contains(&1);
    let ndata = cols.len() - parity;
    // Parity of the data we have, with the lost columns as zeros.
    let partial = |cols: &[Vec<u8>]| -> Vec<Vec<u8>> {
        let data: Vec<&[u8]> = (parity..cols.len())
            .map(|c| {
                if lost_data.contains(&c) {
                    &[][..]
                } else {
                    &cols[c][..]
                }
            })
            .collect();
        let mut out = vec![vec![0u8; len]; parity];
        generate_parity(&data, &mut out);
        out
    };
    match lost_data.len() {
        0 => {}
        1 => {
            let x = lost_data[0];
            let part = partial(cols);
            let mut d = if p_ok {
                let mut d = cols[0].clone();
                xor_into(&mut d, &part[0]);
                d
            } else if q_ok {
                let mut d = cols[1].clone();
                xor_into(&mut d, &part[1]);
                mul_buf(&mut d, gf_inv(gf_pow2(ndata - 1 - (x - parity))));
                d
            } else {
                return false;
            };
            d.truncate(sizes[x] as usize);
            cols[x] = d;
        }
        2 => {
            if !(p_ok && q_ok) {
                return false;
            }
            let (x, y) = (lost_data[0], lost_data[1]);
            let part = partial(cols);
            let mut pxy = cols[0].clone();
            xor_into(&mut pxy, &part[0]);
            let mut qxy = cols[1].clone();
            xor_into(&mut qxy, &part[1]);
            let gx = gf_pow2(ndata - 1 - (x - parity));
            let gy = gf_pow2(ndata - 1 - (y - parity));
            // Dx = (Qxy + gy*Pxy) / (gx + gy); Dy = Pxy + Dx.
            let mut dx = pxy.clone();
            mul_buf(&mut dx, gy);
            xor_into(&mut dx, &qxy);
            mul_buf(&mut dx, gf_inv(gx ^ gy));
            let mut dy = pxy;
            xor_into(&mut dy, &dx);
            dx.truncate(sizes[x] as usize);
            dy.truncate(sizes[y] as usize);
            cols[x] = dx;
            cols[y] = dy;
        }
        _ => return false,
    }
    let lost_parity: Vec<usize> = missing.iter().copied().filter(|&c| c < parity).collect();
    if !lost_parity.is_empty() {
        let data: Vec<&[u8]> = (parity..cols.len()).map(|c| &cols[c][..]).collect();
        let mut out = vec![vec![0u8; len]; parity];
        generate_parity(&data, &mut out);
        for c in lost_parity {
            cols[c] = std::mem::take(&mut out[c]);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gf_inverse_roundtrip() {
        for a in 1..=255u8 {
            assert_eq!(gf_mul(a, gf_inv(a)), 1);
        }
    }

    #[test]
    fn mul2_matches_table() {
        let mut buf: Vec<u8> = (0..=255u8).collect();
        mul2_buf(&mut buf);
        for (i, b) in buf.iter().enumerate() {
            assert_eq!(*b, gf_mul(i as u8, 2));
        }
    }

    #[test]
    fn asize_matches_zfs_examples() {
        // 4 KiB on raidz1 of 3: 1 data + 1 parity = 2 sectors.
        assert_eq!(raidz_asize(4096, 3, 1), 8192);
        // 128 KiB on raidz1 of 5: 32 data + 8 parity = 40 sectors.
        assert_eq!(raidz_asize(128 * 1024, 5, 1), 40 * 4096);
        // 4 KiB on raidz2 of 6: 1 + 2 = 3 sectors.
        assert_eq!(raidz_asize(4096, 6, 2), 3 * 4096);
    }

    #[test]
    fn map_columns_cover_block() {
        let m = RaidzMap::new(7 * 4096, 5 * 4096, 4, 1);
        assert_eq!(m.cols.len(), 4);
        assert_eq!(m.cols[1..].iter().map(|c| c.size).sum::<u64>(), 5 * 4096);
        assert_eq!(m.cols[0].child, 3);
        assert_eq!(m.cols[1].child, 0);
        assert_eq!(m.cols[1].offset, m.cols[0].offset + 4096);
    }
}
