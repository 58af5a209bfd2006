//! Guards RAID-Z parity maths: for random block sizes, offsets and widths, every
//! combination of up to `p` lost columns reconstructs to the original bytes, and losing
//! more is refused rather than guessed.

use cstor_pool::spa::raidz::{generate_parity, reconstruct, RaidzMap};
use proptest::prelude::*;

fn columns(map: &RaidzMap, data: &[u8]) -> Vec<Vec<u8>> {
    let p = map.parity;
    let mut cols: Vec<Vec<u8>> = Vec::new();
    let mut parity = vec![vec![0u8; map.cols[0].size as usize]; p];
    let slices: Vec<&[u8]> = (p..map.cols.len())
        .map(|c| &data[map.data_range(c)])
        .collect();
    generate_parity(&slices, &mut parity);
    cols.extend(parity);
    for c in p..map.cols.len() {
        cols.push(data[map.data_range(c)].to_vec());
    }
    cols
}

fn combos(n: usize, k: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    if k == 0 {
        out.push(Vec::new());
        return out;
    }
    for first in 0..n {
        for mut rest in combos(n, k - 1) {
            if rest.iter().all(|&r| r > first) {
                rest.insert(0, first);
                out.push(rest);
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn every_loss_pattern_reconstructs(
        n in 3usize..9,
        p in 1usize..3,
        sectors in 1u64..40,
        start in 0u64..1000,
        seed in any::<u64>(),
    ) {
        prop_assume!(n > p + 1 || (p == 1 && n >= 3));
        let map = RaidzMap::new(start * 4096, sectors * 4096, n, p);
        let mut data = vec![0u8; (sectors * 4096) as usize];
        let mut rng = cstor_pool::spa::testdev::SeededRng::new(seed);
        rng.fill(&mut data);
        let original = columns(&map, &data);
        let sizes: Vec<u64> = map.cols.iter().map(|c| c.size).collect();
        for k in 1..=p {
            for lost in combos(map.cols.len(), k) {
                let mut cols = original.clone();
                for &l in &lost {
                    cols[l] = vec![0xEE; 7];
                }
                prop_assert!(reconstruct(&mut cols, &sizes, p, &lost), "lost {:?}", lost);
                prop_assert_eq!(&cols, &original, "lost {:?}", lost);
            }
        }
        if map.cols.len() > p {
            let lost: Vec<usize> = (0..=p).collect();
            let mut cols = original.clone();
            prop_assert!(!reconstruct(&mut cols, &sizes, p, &lost));
        }
    }
}

#[test]
fn capacity_approaches_n_minus_p_over_n_for_large_blocks() {
    let a = cstor_pool::spa::raidz::raidz_asize(1024 * 1024, 5, 1);
    let ratio = (1024.0 * 1024.0) / a as f64;
    assert!(ratio > 0.79 && ratio <= 0.8, "ratio {ratio}");
    let a = cstor_pool::spa::raidz::raidz_asize(1024 * 1024, 6, 2);
    let ratio = (1024.0 * 1024.0) / a as f64;
    assert!(ratio > 0.66 && ratio <= 0.667, "ratio {ratio}");
}
