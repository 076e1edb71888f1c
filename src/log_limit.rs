//! A bound on log lines that whoever causes them could repeat without end (a failing disk
//! fails every request; anyone can post forged callbacks): at most one a second per site.

use std::sync::atomic::{AtomicI64, Ordering};

/// One log site's clock: [`Once::now`] is true at most once per wall-clock second.
pub struct Once(AtomicI64);

impl Once {
    pub const fn new() -> Once {
        Once(AtomicI64::new(0))
    }

    /// Whether this site may log now (the first call in each second).
    pub fn now(&self) -> bool {
        let s = crate::store::now_ms() / 1000;
        self.0.swap(s, Ordering::Relaxed) != s
    }
}

impl Default for Once {
    fn default() -> Self {
        Once::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn logs_once_a_second() {
        let once = super::Once::new();
        assert!(once.now());
        assert!(!once.now() && !once.now());
    }
}
