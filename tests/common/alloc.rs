//! A counting global allocator for the "allocates nothing per packet" tests. Include it
//! with `#[path = "common/alloc.rs"] mod counting;` in a test binary of its own: it replaces
//! that binary's global allocator. Counts are per thread, so the harness's other threads
//! do not disturb a measurement.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread so far.
pub fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}
