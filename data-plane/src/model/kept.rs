//! State that rules keep across snapshots: response stores (by rule name) and rate limiters
//! (by limit name). A new routing state takes over the previous state's store of a name while
//! its configuration stays the same, so a snapshot that changes something else loses no cached
//! answer and resets no client's count; every copy of a rule (one per match, one per virtual
//! host) shares it.

use std::collections::HashMap;
use std::sync::Arc;

use super::filters::basic_auth::BasicAuthRt;
use super::filters::jwt::JwtVerifier;
use super::global_limit::{GlobalConfig, GlobalLimiter};
use super::rate_limit::{LimitConfig, Limiter};
use super::response_store::{CacheConfig, ResponseStore};

/// A store made from a configuration and kept while that stays the same.
pub trait KeptStore {
    type Config: PartialEq;
    fn config(&self) -> &Self::Config;
}

/// A kept store any valid configuration makes.
pub trait MadeStore: KeptStore + Sized {
    fn made(name: &str, config: Self::Config) -> Self;
}

/// The stores of one kind in a routing state, by name.
#[derive(Debug)]
pub struct Kept<T> {
    by_name: HashMap<Box<str>, Arc<T>>,
    /// The previous state's stores, while a new state is built.
    previous: HashMap<Box<str>, Arc<T>>,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Kept {
            by_name: HashMap::new(),
            previous: HashMap::new(),
        }
    }
}

impl<T: KeptStore> Kept<T> {
    /// An empty set for a new state, which may take over `previous`'s stores.
    pub fn after(previous: &Kept<T>) -> Kept<T> {
        Kept {
            by_name: HashMap::new(),
            previous: previous.by_name.clone(),
        }
    }

    /// The store of a name: the one this state already made for it, the previous state's if
    /// its configuration is the same, else a new one.
    pub fn store_for(&mut self, name: &str, config: T::Config) -> Arc<T>
    where
        T: MadeStore,
    {
        let made = self.try_store_for(name, config, |c| {
            Ok::<T, std::convert::Infallible>(T::made(name, c))
        });
        match made {
            Ok(store) => store,
            Err(never) => match never {},
        }
    }

    /// [`Kept::store_for`], for stores whose making may fail (`make` is called only when
    /// neither this state nor the previous one has the store).
    pub fn try_store_for<E>(
        &mut self,
        name: &str,
        config: T::Config,
        make: impl FnOnce(T::Config) -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        if let Some(store) = self.by_name.get(name).filter(|s| *s.config() == config) {
            return Ok(Arc::clone(store));
        }
        let store = match self.previous.get(name).filter(|s| *s.config() == config) {
            Some(kept) => Arc::clone(kept),
            None => Arc::new(make(config)?),
        };
        self.by_name.insert(name.into(), Arc::clone(&store));
        Ok(store)
    }

    /// Whether this state already has a store for `name` other than `store`.
    pub fn has_other(&self, name: &str, store: &Arc<T>) -> bool {
        self.by_name
            .get(name)
            .is_some_and(|s| !Arc::ptr_eq(s, store))
    }

    /// Takes over the store of a rule reused as it was from the previous state.
    pub fn keep(&mut self, name: &str, store: &Arc<T>) {
        self.by_name.insert(name.into(), Arc::clone(store));
    }

    /// Lets go of the previous state's stores that were not taken over.
    pub fn finish(&mut self) {
        self.previous = HashMap::new();
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<T>)> {
        self.by_name.iter().map(|(k, v)| (&**k, v))
    }
}

/// Every kept store of a routing state.
#[derive(Debug, Default)]
pub struct RuleStores {
    /// Response stores, by rule name.
    pub caches: Kept<ResponseStore>,
    /// Rate limiters, by limit name (with the route's, for limits counted per route).
    pub limiters: Kept<Limiter>,
    /// Global rate limits' local state, the same way.
    pub global_limiters: Kept<GlobalLimiter>,
    /// JWT verifiers (keys, verified tokens), by policy.
    pub jwt: Kept<JwtVerifier>,
    /// Basic auth users (and passwords that passed), by policy.
    pub basic_auth: Kept<BasicAuthRt>,
}

impl RuleStores {
    pub fn after(previous: &RuleStores) -> RuleStores {
        RuleStores {
            caches: Kept::after(&previous.caches),
            limiters: Kept::after(&previous.limiters),
            global_limiters: Kept::after(&previous.global_limiters),
            jwt: Kept::after(&previous.jwt),
            basic_auth: Kept::after(&previous.basic_auth),
        }
    }

    pub fn finish(&mut self) {
        self.caches.finish();
        self.limiters.finish();
        self.global_limiters.finish();
        self.jwt.finish();
        self.basic_auth.finish();
    }
}

impl KeptStore for JwtVerifier {
    type Config = rauta_common::api::v1::JwtAuth;

    fn config(&self) -> &Self::Config {
        JwtVerifier::config(self)
    }
}

impl KeptStore for BasicAuthRt {
    type Config = rauta_common::api::v1::BasicAuth;

    fn config(&self) -> &Self::Config {
        BasicAuthRt::config(self)
    }
}

impl KeptStore for ResponseStore {
    type Config = CacheConfig;

    fn config(&self) -> &CacheConfig {
        &self.config
    }
}

impl MadeStore for ResponseStore {
    fn made(_name: &str, config: CacheConfig) -> ResponseStore {
        ResponseStore::new(config)
    }
}

impl KeptStore for Limiter {
    type Config = LimitConfig;

    fn config(&self) -> &LimitConfig {
        &self.config
    }
}

impl MadeStore for Limiter {
    fn made(name: &str, config: LimitConfig) -> Limiter {
        Limiter::new(name, config)
    }
}

impl KeptStore for GlobalLimiter {
    type Config = GlobalConfig;

    fn config(&self) -> &GlobalConfig {
        &self.config
    }
}

impl MadeStore for GlobalLimiter {
    fn made(name: &str, config: GlobalConfig) -> GlobalLimiter {
        GlobalLimiter::new(name, config)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::StatusCode;

    use super::*;

    fn store(max_entries: usize) -> ResponseStore {
        ResponseStore::new(CacheConfig {
            max_ttl: Duration::from_secs(60),
            max_body_bytes: 100,
            statuses: Box::new([StatusCode::OK]),
            max_entries,
        })
    }

    #[test]
    fn a_rule_keeps_its_answers_across_snapshots_while_its_configuration_stays() {
        let config = store(8).config;
        let mut first = Kept::<ResponseStore>::default();
        let a = first.store_for("rule-a", config.clone());
        assert!(Arc::ptr_eq(&a, &first.store_for("rule-a", config.clone())));
        first.finish();
        let mut second = Kept::<ResponseStore>::after(&first);
        assert!(Arc::ptr_eq(&a, &second.store_for("rule-a", config.clone())));
        let changed = CacheConfig {
            max_entries: 9,
            ..config
        };
        let mut third = Kept::<ResponseStore>::after(&second);
        assert!(!Arc::ptr_eq(&a, &third.store_for("rule-a", changed)));
    }

    #[test]
    fn a_rule_reused_with_its_store_may_not_split_from_a_copy_built_anew() {
        let mut caches = Kept::<ResponseStore>::after(&Kept::default());
        let kept = Arc::new(store(10));
        assert!(!caches.has_other("r", &kept), "nothing there yet");
        let built = caches.store_for("r", store(10).config);
        assert!(
            caches.has_other("r", &kept),
            "the new state has its own store for r"
        );
        assert!(!caches.has_other("r", &built));
        caches.keep("s", &kept);
        assert!(!caches.has_other("s", &kept));
    }
}
