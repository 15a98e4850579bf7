//! What one translation built, kept for the next to reuse: the shape both the `RouteRules`
//! memo and the endpoints memo share.

use std::collections::HashMap;
use std::hash::Hash;

/// Entries the previous translation built or reused, and those this one has built or reused
/// so far, in one map: each stamped with the last translation that used it, so reusing an
/// entry is one lookup rather than a move from one generation's map to the next's.
pub struct Generations<K, V> {
    entries: HashMap<K, Stamped<V>, foldhash::fast::RandomState>,
    /// The translation under way, counted from 0.
    current: u64,
}

struct Stamped<V> {
    /// The last translation that built or reused the entry.
    used_in: u64,
    value: V,
}

impl<K, V> Default for Generations<K, V> {
    fn default() -> Self {
        Generations {
            entries: HashMap::default(),
            current: 0,
        }
    }
}

impl<K: Hash + Eq, V> Generations<K, V> {
    /// The entry under `key` that `fits`: built already in this translation (for another
    /// Gateway), or by the previous one, then kept for this one's.
    pub fn reused(&mut self, key: &K, fits: impl Fn(&V) -> bool) -> Option<&V> {
        let entry = self.entries.get_mut(key).filter(|e| fits(&e.value))?;
        entry.used_in = self.current;
        Some(&entry.value)
    }

    /// Records what this translation built.
    pub fn insert(&mut self, key: K, value: V) {
        let used_in = self.current;
        self.entries.insert(key, Stamped { used_in, value });
    }

    /// What this translation built or reused becomes what the next one may reuse; the rest
    /// is dropped.
    pub fn advance(&mut self) {
        let current = self.current;
        self.entries.retain(|_, e| e.used_in == current);
        self.current += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::Generations;

    #[test]
    fn an_entry_lives_while_each_translation_uses_it_and_no_longer() {
        let mut memo: Generations<&str, u32> = Generations::default();
        memo.insert("a", 1);
        memo.insert("b", 2);
        memo.advance();
        // Reused by the second translation: kept for the third. "b" is not.
        assert_eq!(memo.reused(&"a", |_| true), Some(&1));
        assert_eq!(memo.reused(&"b", |v| *v == 3), None);
        memo.advance();
        assert_eq!(memo.reused(&"a", |_| true), Some(&1));
        assert_eq!(memo.reused(&"b", |_| true), None);
        memo.advance();
        memo.advance();
        // Not used by the fourth translation: gone in the fifth.
        assert_eq!(memo.reused(&"a", |_| true), None);
    }
}
