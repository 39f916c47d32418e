//! Proof that the per-frame path allocates nothing in steady state: a
//! counting global allocator (test builds only) counts this thread's
//! allocations around `publish` and `service`.
//!
//! It is the lib test binary's allocator; it only counts, per thread, so
//! other tests are unaffected.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use crate::config::MaskEncoding;
use crate::publish::test_util::{config, frame, FakeDirectory, Got, RawClient, TempDir};
use crate::publish::Publisher;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // try_with: the slot may be gone while the thread exits.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call forwards to `System` with the caller's arguments unchanged;
// counting touches only a const-initialised thread-local Cell (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn the_counter_sees_allocations() {
    let before = allocations();
    let v: Vec<u8> = std::hint::black_box(Vec::with_capacity(64));
    assert!(allocations() > before);
    drop(v);
}

#[test]
fn steady_state_publish_and_service_allocate_nothing() {
    let dir = TempDir::new("alloc");
    let path = dir.join("maskd.sock");
    let mut p = Publisher::bind(&config(&path), MaskEncoding::Rle).unwrap();
    let mut d = FakeDirectory::default();
    let mut readers: Vec<RawClient> = Vec::new();
    for (encoding, prompts) in [
        (MaskEncoding::Rle, &["a", "b"][..]),
        (MaskEncoding::CocoRle, &["b", "c"][..]),
        (MaskEncoding::Bitmask, &["a"][..]),
    ] {
        let c = RawClient::connect(&path);
        c.subscribe(Some(encoding), prompts);
        readers.push(c);
    }
    // Never reads: its frames are dropped, which must not allocate either.
    let stalled = RawClient::connect(&path);
    stalled.subscribe(None, &["c"]);
    p.service(&mut d);

    let set = |seq| frame(seq, 160, 120, &[100, 101, 102, 103]);
    let mut sets: Vec<_> = (0..40).map(set).collect();
    let drain = |readers: &mut Vec<RawClient>| {
        for r in readers.iter_mut() {
            while let Got::Msg(_) = r.try_recv() {}
        }
    };
    // Warm-up: buffers grow, queues get sized, the stalled client fills up.
    for s in sets.drain(..10) {
        p.service(&mut d);
        p.publish(&s);
        drain(&mut readers);
    }
    let dropped_before = p.stats().dropped;
    let mut counted = 0;
    for s in &sets {
        let before = allocations();
        p.service(&mut d);
        p.publish(s);
        counted += allocations() - before;
        drain(&mut readers);
    }
    assert_eq!(
        counted,
        0,
        "allocations in {} steady-state frames",
        sets.len()
    );
    assert!(
        p.stats().dropped > dropped_before,
        "the stalled client's drops were exercised"
    );
    assert_eq!(p.stats().clients, 4);
}
