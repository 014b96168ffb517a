//! Small shared pieces, some of them for store implementations.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes the integer ids used as map keys: they are dense, assigned by
/// herd, never chosen by an attacker, so SipHash's protection buys nothing
/// and costs a measurable share of the hot path.
#[derive(Default, Clone, Copy, Debug)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_i64(&mut self, n: i64) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by herd ids ([`TaskId`](crate::TaskId),
/// [`BatchId`](crate::BatchId)), hashed with [`IdHasher`]; make one with
/// `IdMap::default()`.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::*;
    use crate::TaskId;

    #[test]
    fn ids_hash_apart_and_maps_find_them() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let hashes: HashSet<u64> = (0..10_000).map(|n| build.hash_one(TaskId(n))).collect();
        assert_eq!(hashes.len(), 10_000, "every id its own hash");

        let mut map: IdMap<TaskId, i64> = IdMap::default();
        map.extend((0..1_000).map(|n| (TaskId(n * 7), n)));
        assert_eq!(map.get(&TaskId(700)), Some(&100));
        assert_eq!(map.get(&TaskId(701)), None);
    }
}
