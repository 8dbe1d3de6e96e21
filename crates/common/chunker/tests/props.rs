//! Property tests: chunking is lossless, respects size bounds, is
//! deterministic, identical between the streaming and in-memory paths,
//! re-synchronises after edits, and depends on the boundary key.

mod common;

use std::collections::BTreeSet;

use cloudsync_chunker::{Boundaries, ChunkerParams, chunk_reader, chunk_slice};
use cloudsync_crypto::SecretKey;
use common::{ChoppyReader, random_data};
use proptest::prelude::*;

/// Valid small parameters (even `min`, `min <= avg <= max`).
fn small_params() -> impl Strategy<Value = ChunkerParams> {
    (32u32..=1024)
        .prop_flat_map(|half_min| {
            let min = half_min * 2;
            (Just(min), min.max(256)..=8192)
        })
        .prop_flat_map(|(min, avg)| (Just(min), Just(avg), avg.max(1024)..=32768))
        .prop_map(|(min, avg, max)| ChunkerParams { min, avg, max })
}

fn boundaries() -> impl Strategy<Value = Boundaries> {
    prop_oneof![Just(Boundaries::Public), any::<u64>().prop_map(Boundaries::Keyed)]
}

/// Random bytes, plus low-entropy inputs that force cuts at `max`.
fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (any::<u64>(), 0usize..200_000).prop_map(|(seed, len)| random_data(seed, len)),
        (any::<u8>(), 0usize..100_000).prop_map(|(b, len)| vec![b; len]),
        proptest::collection::vec(0u8..2, 0..20_000),
    ]
}

fn stream_pairs(data: &[u8], params: ChunkerParams, b: Boundaries, seed: u64) -> Vec<(usize, usize)> {
    chunk_reader(ChoppyReader::new(data, seed, 5000), params, b)
        .map(|c| {
            let c = c.unwrap();
            (usize::try_from(c.offset).unwrap(), c.data.len())
        })
        .collect()
}

proptest! {
    #[test]
    fn chunks_concatenate_to_input(data in data(), params in small_params(), b in boundaries()) {
        let mut rebuilt = Vec::with_capacity(data.len());
        for chunk in chunk_reader(&data[..], params, b) {
            let chunk = chunk.unwrap();
            prop_assert_eq!(chunk.offset, rebuilt.len() as u64);
            rebuilt.extend_from_slice(&chunk.data);
        }
        prop_assert_eq!(&rebuilt, &data);

        let mut next = 0;
        for (offset, len) in chunk_slice(&data, params, b) {
            prop_assert_eq!(offset, next);
            next += len;
        }
        prop_assert_eq!(next, data.len());
    }

    #[test]
    fn chunk_sizes_respect_bounds(data in data(), params in small_params(), b in boundaries()) {
        let chunks = chunk_slice(&data, params, b);
        prop_assert_eq!(chunks.is_empty(), data.is_empty());
        if let Some((&(_, last), rest)) = chunks.split_last() {
            for &(_, len) in rest {
                prop_assert!(params.min as usize <= len && len <= params.max as usize, "len {len} for {params:?}");
            }
            prop_assert!(last >= 1 && last <= params.max as usize);
        }
    }

    #[test]
    fn stream_and_slice_agree(data in data(), params in small_params(), b in boundaries(), seed in any::<u64>()) {
        prop_assert_eq!(stream_pairs(&data, params, b, seed), chunk_slice(&data, params, b));
    }

    #[test]
    fn chunking_is_deterministic(data in data(), params in small_params(), b in boundaries()) {
        prop_assert_eq!(chunk_slice(&data, params, b), chunk_slice(&data, params, b));
        prop_assert_eq!(stream_pairs(&data, params, b, 1), stream_pairs(&data, params, b, 2));
    }
}

proptest! {
    // Each case chunks 1 MiB twice; fewer cases keep the suite fast.
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn insertion_only_changes_nearby_boundaries(seed in any::<u64>(), b in boundaries()) {
        let params = ChunkerParams { min: 2 * 1024, avg: 8 * 1024, max: 32 * 1024 };
        let original = random_data(seed, 1 << 20);
        let mut edited = original[..1000].to_vec();
        edited.extend_from_slice(&random_data(!seed, 100));
        edited.extend_from_slice(&original[1000..]);

        // Chunk end positions, with the original's shifted into the edited
        // file's coordinates.
        let before: BTreeSet<usize> = chunk_slice(&original, params, b)
            .into_iter()
            .map(|(o, l)| if o + l > 1000 { o + l + 100 } else { o + l })
            .collect();
        let after: BTreeSet<usize> = chunk_slice(&edited, params, b)
            .into_iter()
            .map(|(o, l)| o + l)
            .collect();
        // Cuts before the edit are the same; past it, the two cut the same
        // from the first cut they share (a cut depends only on the bytes since
        // the one before), and they share one soon: the chance that none of
        // the next 32 average chunks lines up again is negligible.
        let below = |s: &BTreeSet<usize>| s.range(..1000).copied().collect::<Vec<_>>();
        prop_assert_eq!(below(&before), below(&after));
        let common = before.range(1100..).find(|c| after.contains(c)).copied();
        prop_assert!(common.is_some_and(|c| c < 1100 + 32 * params.avg as usize), "no shared cut soon after the edit: {common:?}");
        let from = |s: &BTreeSet<usize>| s.range(common.unwrap_or(0)..).copied().collect::<Vec<_>>();
        prop_assert_eq!(from(&before), from(&after));
    }

    #[test]
    fn boundary_keys_change_boundaries(seed in any::<u64>(), ka in any::<[u8; 32]>(), kb in any::<[u8; 32]>()) {
        prop_assume!(ka != kb);
        let params = ChunkerParams { min: 2 * 1024, avg: 8 * 1024, max: 32 * 1024 };
        let data = random_data(seed, 256 * 1024);
        let public = chunk_slice(&data, params, Boundaries::Public);
        let a = chunk_slice(&data, params, Boundaries::keyed(&SecretKey::from_bytes(ka)));
        let b = chunk_slice(&data, params, Boundaries::keyed(&SecretKey::from_bytes(kb)));
        prop_assert_ne!(&public, &a);
        prop_assert_ne!(&public, &b);
        prop_assert_ne!(&a, &b);
    }
}
