//! [`PlanCache`]: the budget plans a model has made, by key (batch shape and budget, say), each
//! with the bytes the device held when it was made. Planning is exact but not free (a dry run,
//! or a dynamic program), and a training loop asks for the same plan every step; what the device
//! holds as a step starts is part of every prediction, and it changes (the optimizer's state
//! appears after the first step, another model is loaded), so a plan is made again when the
//! bytes held differ from those it was made for, and only then.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

/// Entries kept at most; past it the cache starts again empty (a model sees a handful of batch
/// shapes).
const MAX_ENTRIES: usize = 64;

/// Plans (or anything made for a budget: a chain's profile, per-layer modes) of type `P` by key
/// `K`, each valid for the bytes the device held when it was made. Shared by every model's
/// [`crate::Recompute::Budget`]; safe to use from several threads (a model is shared by
/// reference).
#[derive(Debug)]
pub struct PlanCache<K, P> {
    inner: Mutex<Entries<K, P>>,
}

#[derive(Debug)]
struct Entries<K, P> {
    by_key: HashMap<K, (u64, P)>,
    last: Option<K>,
}

impl<K, P> Default for PlanCache<K, P> {
    fn default() -> Self {
        PlanCache {
            inner: Mutex::new(Entries {
                by_key: HashMap::new(),
                last: None,
            }),
        }
    }
}

impl<K: Eq + Hash + Clone, P: Clone> PlanCache<K, P> {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Entries<K, P>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry for `key` if it was made with the device holding `held` bytes, else what
    /// `make` makes (then kept for `key` and `held`; an error is returned and nothing kept).
    /// The cache is locked while `make` runs: threads asking for the same plan wait for one
    /// planning (so `make` must not use this cache).
    pub fn get_or_make<E>(
        &self,
        key: K,
        held: u64,
        make: impl FnOnce() -> Result<P, E>,
    ) -> Result<P, E> {
        let mut entries = self.lock();
        if let Some((h, p)) = entries.by_key.get(&key) {
            if *h == held {
                let p = p.clone();
                entries.last = Some(key);
                return Ok(p);
            }
        }
        let p = make()?;
        if entries.by_key.len() >= MAX_ENTRIES && !entries.by_key.contains_key(&key) {
            entries.by_key.clear();
        }
        entries.by_key.insert(key.clone(), (held, p.clone()));
        entries.last = Some(key);
        Ok(p)
    }

    /// The entry for `key`, whatever the device held when it was made.
    pub fn get(&self, key: &K) -> Option<P> {
        self.lock().by_key.get(key).map(|(_, p)| p.clone())
    }

    /// The entry last made or used.
    pub fn last(&self) -> Option<P> {
        let entries = self.lock();
        let key = entries.last.as_ref()?;
        entries.by_key.get(key).map(|(_, p)| p.clone())
    }

    /// Forgets every entry.
    pub fn clear(&self) {
        let mut entries = self.lock();
        entries.by_key.clear();
        entries.last = None;
    }
}
