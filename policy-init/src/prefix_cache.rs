//! Reuse of computed prefixes across calls: tree search expands many children of one node,
//! and each child's prompt is its parent's prompt plus one step. Finished sequences are kept
//! (least recently used first out, bounded by tokens) and indexed at every line boundary, so a
//! new prompt finds the longest cached prefix that ends a line and computes only the rest.

use std::collections::HashMap;

use crate::cpu::KvCache;

struct Snapshot {
    tokens: Vec<u32>,
    cache: KvCache,
    keys: Vec<u64>,
    last_used: u64,
}

/// A bounded store of KV caches keyed by token prefixes that end a line.
pub struct PrefixCache {
    capacity_tokens: usize,
    used_tokens: usize,
    snapshots: HashMap<u64, Snapshot>,
    index: HashMap<u64, u64>,
    next_id: u64,
    clock: u64,
    kv_dim: usize,
}

impl std::fmt::Debug for PrefixCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PrefixCache({} snapshots, {} tokens)",
            self.snapshots.len(),
            self.used_tokens
        )
    }
}

/// Hashes of every prefix of `tokens` that ends at a boundary: `(length, hash)`, shortest
/// first. Boundaries are after line-ending tokens and at the end.
fn boundary_hashes(tokens: &[u32], ends_line: &dyn Fn(u32) -> bool) -> Vec<(usize, u64)> {
    let mut out = Vec::new();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, &t) in tokens.iter().enumerate() {
        for byte in t.to_le_bytes() {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        if ends_line(t) || i + 1 == tokens.len() {
            out.push((i + 1, h));
        }
    }
    out
}

impl PrefixCache {
    pub fn new(capacity_tokens: usize, kv_dim: usize) -> PrefixCache {
        PrefixCache {
            capacity_tokens,
            used_tokens: 0,
            snapshots: HashMap::new(),
            index: HashMap::new(),
            next_id: 0,
            clock: 0,
            kv_dim,
        }
    }

    pub fn clear(&mut self) {
        self.snapshots.clear();
        self.index.clear();
        self.used_tokens = 0;
    }

    /// A copy of the longest cached prefix of `tokens` that ends at a line boundary, at most
    /// `max_len` tokens long.
    pub fn lookup(&mut self, tokens: &[u32], max_len: usize, ends_line: &dyn Fn(u32) -> bool) -> Option<KvCache> {
        self.clock += 1;
        for (len, hash) in boundary_hashes(tokens, ends_line).into_iter().rev() {
            let Some(id) = self.index.get(&hash) else {
                continue;
            };
            let Some(snap) = self.snapshots.get_mut(id) else {
                continue;
            };
            if snap.tokens.len() < len || snap.tokens[..len] != tokens[..len] {
                continue; // a hash collision
            }
            let usable = len.min(snap.cache.len).min(max_len);
            if usable == 0 {
                continue;
            }
            snap.last_used = self.clock;
            return Some(snap.cache.prefix(usable, self.kv_dim));
        }
        None
    }

    /// Keeps a finished sequence: `cache` holds the keys and values of `tokens[..cache.len]`.
    pub fn insert(&mut self, tokens: Vec<u32>, cache: KvCache, ends_line: &dyn Fn(u32) -> bool) {
        if cache.len == 0 || cache.len > self.capacity_tokens {
            return;
        }
        self.clock += 1;
        let id = self.next_id;
        self.next_id += 1;
        let keys: Vec<u64> = boundary_hashes(&tokens, ends_line)
            .into_iter()
            .map(|(_, h)| h)
            .collect();
        for &k in &keys {
            self.index.insert(k, id);
        }
        self.used_tokens += cache.len;
        self.snapshots.insert(
            id,
            Snapshot {
                tokens,
                cache,
                keys,
                last_used: self.clock,
            },
        );
        while self.used_tokens > self.capacity_tokens {
            let Some((&oldest, _)) = self.snapshots.iter().min_by_key(|(id, s)| (s.last_used, **id)) else {
                break;
            };
            if let Some(s) = self.snapshots.remove(&oldest) {
                self.used_tokens -= s.cache.len;
                for k in s.keys {
                    if self.index.get(&k) == Some(&oldest) {
                        self.index.remove(&k);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(len: usize) -> KvCache {
        KvCache {
            len,
            keys: vec![(0..len).map(|i| i as f32).collect()],
            values: vec![(0..len).map(|i| -(i as f32)).collect()],
            scores: Vec::new(),
            shared: None,
        }
    }

    #[test]
    fn finds_the_longest_line_prefix_and_evicts_by_age() {
        let nl = |t: u32| t == 0;
        let mut pc = PrefixCache::new(10, 1);
        // tokens: 5 6 \n 7 \n 8 ; cache covers the first 5
        pc.insert(vec![5, 6, 0, 7, 0, 8], cache(5), &nl);
        let hit = pc.lookup(&[5, 6, 0, 7, 0, 9, 9], 100, &nl).expect("hit");
        assert_eq!(hit.len, 5);
        let hit = pc.lookup(&[5, 6, 0, 1, 0], 100, &nl).expect("shorter hit");
        assert_eq!(hit.len, 3);
        assert_eq!(hit.keys[0], vec![0.0, 1.0, 2.0]);
        assert!(pc.lookup(&[4, 6, 0], 100, &nl).is_none());
        assert_eq!(pc.lookup(&[5, 6, 0, 7, 0], 4, &nl).expect("capped").len, 4);
        // A second snapshot pushes the first out (capacity 10 tokens).
        pc.insert(vec![1, 0, 2, 0, 3, 0], cache(6), &nl);
        assert!(pc.lookup(&[5, 6, 0], 100, &nl).is_none());
        assert_eq!(pc.lookup(&[1, 0, 2, 0], 100, &nl).expect("hit").len, 4);
    }
}
