//! The code TLB: for every linear page code was fetched through with
//! paging on, per privilege (user or not), the physical page it mapped.
//! Blocks are keyed by physical page, so this is what translated code
//! assumes about the guest's mappings; a CR3 load re-walks the entries
//! that are not global (a TLB keeps global ones), and only pages whose
//! mapping changed lose their chains.
//!
//! `HotState::code_ok` mirrors the ring-3 entries for translated code (a
//! byte per linear page, 1 while listed here): ring-3 blocks confirm their
//! page with it at entry (`translate::Options::probe`).

use crate::cpu::HotState;
use crate::fastmap::FastMap;

/// (user, linear page).
pub type Key = (bool, u32);

#[derive(Default)]
pub struct CodeTlb {
    /// Key -> physical page.
    pages: FastMap<Key, u32>,
    /// The keys whose mapping is not global (what a CR3 load re-walks).
    locals: FastMap<Key, ()>,
}

impl CodeTlb {
    pub fn get(&self, k: &Key) -> Option<u32> {
        self.pages.get(k).copied()
    }

    pub fn contains_key(&self, k: &Key) -> bool {
        self.pages.contains_key(k)
    }

    pub fn insert(&mut self, k: Key, phys: u32, global: bool, hot: &mut HotState) {
        self.pages.insert(k, phys);
        if global {
            self.locals.remove(&k);
        } else {
            self.locals.insert(k, ());
        }
        if k.0 {
            hot.code_ok[(k.1 >> 12) as usize] = 1;
        }
    }

    /// Forget `k`; returns the physical page it held.
    pub fn remove(&mut self, k: &Key, hot: &mut HotState) -> Option<u32> {
        self.locals.remove(k);
        if k.0 {
            hot.code_ok[(k.1 >> 12) as usize] = 0;
        }
        self.pages.remove(k)
    }

    /// Forget the pages of linear range `[lo, hi]`.
    pub fn remove_range(&mut self, lo: u32, hi: u32, hot: &mut HotState) {
        self.pages.retain(|&(user, p), _| {
            let keep = !(lo..=hi).contains(&p);
            if !keep && user {
                hot.code_ok[(p >> 12) as usize] = 0;
            }
            keep
        });
        self.locals.retain(|(_, p), _| !(lo..=hi).contains(p));
    }

    /// Is any page of `[lo, hi]` listed?
    pub fn any_in(&self, lo: u32, hi: u32) -> bool {
        self.pages.keys().any(|&(_, p)| (lo..=hi).contains(&p))
    }

    pub fn clear(&mut self, hot: &mut HotState) {
        for &(user, p) in self.pages.keys() {
            if user {
                hot.code_ok[(p >> 12) as usize] = 0;
            }
        }
        self.pages.clear();
        self.locals.clear();
    }

    /// The non-global entries for which `stale(key, phys)` holds.
    pub fn stale_locals(&self, mut stale: impl FnMut(Key, u32) -> bool) -> Vec<Key> {
        self.locals.keys().filter(|k| self.pages.get(k).is_some_and(|&p| stale(**k, p))).copied().collect()
    }
}
