//! A counting global allocator: exact live bytes and allocation counts, switched on only
//! around the measurements that need them (one relaxed load per allocation otherwise).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

/// The system allocator, counting while [`start`] is in force.
pub(crate) struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
/// Bytes allocated minus bytes freed since [`start`] (as requested by the layouts).
static LIVE: AtomicI64 = AtomicI64::new(0);
/// Allocations (and reallocations) since [`start`].
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { System.alloc(layout) };
        if ON.load(Relaxed) && !ptr.is_null() {
            LIVE.fetch_add(layout.size() as i64, Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if ON.load(Relaxed) && !ptr.is_null() {
            LIVE.fetch_add(layout.size() as i64, Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        if ON.load(Relaxed) {
            LIVE.fetch_sub(layout.size() as i64, Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if ON.load(Relaxed) && !new.is_null() {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
        }
        new
    }
}

/// Zeroes the counters and starts counting.
pub(crate) fn start() {
    LIVE.store(0, Relaxed);
    ALLOCS.store(0, Relaxed);
    ON.store(true, Relaxed);
}

/// Stops counting and returns (live bytes growth, allocations) since [`start`].
pub(crate) fn stop() -> (i64, u64) {
    ON.store(false, Relaxed);
    (LIVE.load(Relaxed), ALLOCS.load(Relaxed))
}

/// (live bytes growth, allocations) since [`start`], still counting.
pub(crate) fn read() -> (i64, u64) {
    (LIVE.load(Relaxed), ALLOCS.load(Relaxed))
}

/// Resident memory of the process in bytes, from `/proc/self/statm` (0 where unavailable).
pub(crate) fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
