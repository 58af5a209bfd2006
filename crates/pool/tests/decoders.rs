//! Decoders of outside bytes never panic: block pointers, roots, log blocks (through a
//! pool whose log head points at garbage) and send streams get arbitrary bytes and must
//! return an error or a value, and a bad send stream leaves no volume behind.

mod common;

use common::*;
use cstor_pool::bp::Bp;
use cstor_pool::dir::Root;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn block_pointer_and_root_decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Bp::decode(&b);
        if b.len() >= 64 {
            let _ = Bp::decode(&b[..64]);
        }
        let _ = Root::decode(&b);
    }

    #[test]
    fn send_stream_decoder_never_panics(
        cut in 0usize..4000,
        flips in proptest::collection::vec((0usize..4000, any::<u8>()), 0..4),
    ) {
        let (_s, pool) = new_pool(256 << 20);
        let v = pool.create_volume("v", 1 << 20, Some(4096), None).unwrap();
        v.write(0, &pattern(1, 8192), Some(3)).unwrap();
        pool.snapshot("v", "s").unwrap();
        let mut stream = Vec::new();
        pool.send("v", "s", None, &mut stream).unwrap();
        let mut bad = stream.clone();
        for (i, x) in &flips {
            let n = bad.len();
            bad[i % n] ^= x | 1;
        }
        bad.truncate(cut.min(bad.len()));
        let changed = bad != stream;
        let r = pool.recv("r", &mut bad.as_slice());
        if changed {
            prop_assert!(r.is_err());
            prop_assert!(pool.volume("r").is_err());
            prop_assert_eq!(pool.list_volumes().len(), 1);
        }
    }
}
