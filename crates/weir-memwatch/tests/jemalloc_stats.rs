//! With jemalloc as the global allocator (as in the binaries) and the `jemalloc` feature on,
//! the allocator statistics follow what the program allocates.

use weir_memwatch::{allocator_stats, allocator_stats_enabled};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[test]
fn allocated_bytes_follow_allocations() {
    assert!(allocator_stats_enabled());
    let before = allocator_stats().expect("jemalloc stats");
    let v = vec![7u8; 64 << 20];
    let during = allocator_stats().unwrap();
    assert!(
        during.allocated_bytes >= before.allocated_bytes + (60 << 20),
        "before {before:?} during {during:?}"
    );
    assert!(during.resident_bytes >= during.allocated_bytes / 2);
    drop(v);
    let after = allocator_stats().unwrap();
    assert!(after.allocated_bytes + (60 << 20) <= during.allocated_bytes);
}
