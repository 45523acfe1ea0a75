//! Integration tests live in `tests/`; this library holds what they share with the helper
//! binaries in `src/bin/`.

pub mod checkout;
pub mod durable;
pub mod nested;
pub mod process;
pub mod relay;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts live instances: the drop guard a test puts in a step to prove that the step's future
/// was dropped (cancelled) with its run.
///
/// ```
/// let live = integration_tests::Live::default();
/// let guard = live.guard();
/// assert_eq!(live.count(), 1);
/// drop(guard);
/// assert_eq!(live.count(), 0);
/// ```
#[derive(Clone, Default)]
pub struct Live(Arc<AtomicUsize>);

impl Live {
    /// One more live instance, until the guard is dropped.
    pub fn guard(&self) -> LiveGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        LiveGuard(self.0.clone())
    }

    /// How many guards are alive.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Held while an instance is alive; see [`Live`].
pub struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
