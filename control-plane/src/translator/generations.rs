//! What one translation built, kept for the next to reuse: the shape both the `RouteRules`
//! memo and the endpoints memo share.

use std::collections::HashMap;
use std::hash::Hash;

/// Entries the previous translation built, and those this one has built or reused so far.
pub struct Generations<K, V> {
    previous: HashMap<K, V, foldhash::fast::RandomState>,
    next: HashMap<K, V, foldhash::fast::RandomState>,
}

impl<K, V> Default for Generations<K, V> {
    fn default() -> Self {
        Generations {
            previous: HashMap::default(),
            next: HashMap::default(),
        }
    }
}

impl<K: Hash + Eq, V> Generations<K, V> {
    /// The entry under `key` that `fits`: built already in this translation (for another
    /// Gateway), or by the previous one, then carried over to this one's.
    pub fn reused(&mut self, key: &K, fits: impl Fn(&V) -> bool) -> Option<&V> {
        if !self.next.get(key).is_some_and(&fits) {
            let (key, value) = self.previous.remove_entry(key).filter(|(_, v)| fits(v))?;
            self.next.insert(key, value);
        }
        self.next.get(key)
    }

    /// Records what this translation built.
    pub fn insert(&mut self, key: K, value: V) {
        self.next.insert(key, value);
    }

    /// What this translation built becomes what the next one may reuse.
    pub fn advance(&mut self) {
        let capacity = self.next.len();
        self.previous = std::mem::replace(
            &mut self.next,
            HashMap::with_capacity_and_hasher(capacity, Default::default()),
        );
    }
}
