//! A counting global allocator for the allocation-free tests. A test binary installs it with
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: emberlm_testkit::alloc::Counting = emberlm_testkit::alloc::Counting;
//! ```
//!
//! and reads [`allocations`] (every thread of the process: a thread pool's work counts) or
//! [`thread_allocations`] (the calling thread only) before and after the code under test. Every
//! allocation, zeroed allocation and reallocation counts once; frees do not count.
//! [`thread_live_bytes`] is the calling thread's allocated bytes minus those it freed (memory
//! tests: what a structure built on this thread holds); [`thread_allocated_bytes`] its allocated
//! bytes, frees not subtracted.
#![allow(unsafe_code)] // implementing `GlobalAlloc` is `unsafe`; every method forwards to `System`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The allocator: `System`, counted.
#[derive(Debug)]
pub struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    static THREAD_LIVE: Cell<isize> = const { Cell::new(0) };
    static THREAD_ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn live(delta: isize) {
    let _ = THREAD_LIVE.try_with(|n| n.set(n.get().wrapping_add(delta)));
    if delta > 0 {
        let _ = THREAD_ALLOCATED.try_with(|n| n.set(n.get().wrapping_add(delta as usize)));
    }
}

/// Bytes allocated by the calling thread so far, frees not subtracted (a difference of two
/// readings bounds the copies the code between them made, even those it freed again).
pub fn thread_allocated_bytes() -> usize {
    THREAD_ALLOCATED.with(Cell::get)
}

/// Bytes allocated by the calling thread minus bytes it freed, so far (a difference of two
/// readings is what the code between them kept; frees of other threads' memory count here too).
pub fn thread_live_bytes() -> isize {
    THREAD_LIVE.with(Cell::get)
}

fn count() {
    ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
    // `try_with`: the slot may be gone while the thread is being torn down.
    let _ = THREAD_ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

/// Allocations made so far by every thread (while [`Counting`] is the global allocator).
pub fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// Allocations made so far by the calling thread.
pub fn thread_allocations() -> usize {
    THREAD_ALLOCATIONS.with(Cell::get)
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds exactly as it does for `System`; counting touches only an atomic
// and a const-initialised thread-local `Cell` (no allocation, no re-entrancy).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        live(layout.size() as isize);
        // SAFETY: same contract as our caller's (a non-zero-size layout).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        live(layout.size() as isize);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        live(new_size as isize - layout.size() as isize);
        // SAFETY: `ptr` was allocated by `System` (through us) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        live(-(layout.size() as isize));
        // SAFETY: `ptr` was allocated by `System` (through us) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}
