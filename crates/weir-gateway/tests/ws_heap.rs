//! The heap an idle subscription costs the gateway, counted exactly: the server runs on its own
//! runtime whose threads tag every allocation they make, so the live bytes the server side holds
//! are known to the byte (the clients, in this process too, are not counted). Unlike RSS this is
//! not blurred by allocator caching or page granularity, so the bound can be tight; `ws_memory`
//! keeps the RSS view.
//!
//! The test prints the live blocks by size. `WS_HEAP_TRACE=1` also prints where each block of
//! 200 bytes or more made while one connection opens and subscribes was allocated (backtraces),
//! which is how the breakdown in the bound's comment was found:
//!
//! ```text
//! WS_HEAP_TRACE=1 cargo nextest run -p weir-gateway --test ws_heap --no-capture
//! ```
// A counting global allocator is what this test is: it needs `unsafe` (the GlobalAlloc contract).
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;

/// Allocations are tagged in a header before the block: the requested size and whether a
/// server thread made it.
struct Tagged;

const HDR: usize = 16;
/// Exact sizes counted in the histogram, in 8-byte steps; bigger ones share the last bucket.
const BUCKETS: usize = 4096;

thread_local! {
    static SERVER: Cell<bool> = const { Cell::new(false) };
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}
static CAPTURE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static TRACES: std::sync::Mutex<Vec<(usize, String)>> = std::sync::Mutex::new(Vec::new());

static SERVER_BYTES: AtomicI64 = AtomicI64::new(0);
static SERVER_BLOCKS: AtomicI64 = AtomicI64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicI64 = AtomicI64::new(0);
/// Live server blocks by requested size (bucket = size / 8).
static BY_SIZE: [AtomicI64; BUCKETS] = [ZERO; BUCKETS];

fn bucket(size: usize) -> usize {
    (size / 8).min(BUCKETS - 1)
}

fn full_layout(l: Layout) -> (Layout, usize) {
    let align = l.align().max(HDR);
    let hdr = align;
    // SAFETY: align is a power of two; the size cannot overflow for any real allocation.
    (
        unsafe { Layout::from_size_align_unchecked(l.size() + hdr, align) },
        hdr,
    )
}

// SAFETY: every block handed out is `hdr` bytes into a System block of `size + hdr` bytes,
// aligned to at least the requested alignment; dealloc undoes exactly that.
unsafe impl GlobalAlloc for Tagged {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let (full, hdr) = full_layout(l);
        // SAFETY: full has a non-zero size.
        let base = unsafe { System.alloc(full) };
        if base.is_null() {
            return base;
        }
        let server = SERVER.with(Cell::get);
        // SAFETY: the header lies inside the block and is 8-aligned (hdr >= 16, base aligned).
        unsafe {
            let p = base.add(hdr);
            (p.sub(16) as *mut usize).write(l.size());
            (p.sub(8) as *mut usize).write(usize::from(server));
            if server
                && l.size() >= 200
                && CAPTURE.load(Ordering::Relaxed)
                && !IN_HOOK.with(Cell::get)
            {
                IN_HOOK.with(|h| h.set(true));
                let bt = std::backtrace::Backtrace::force_capture().to_string();
                let keep: Vec<&str> = bt
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("at "))
                    .filter(|l| {
                        !l.contains("ws_heap::")
                            && !l.contains("alloc::alloc")
                            && !l.contains("core::ops::function")
                            && !l.contains("std::")
                    })
                    .take(14)
                    .collect();
                TRACES.lock().unwrap().push((l.size(), keep.join("\n")));
                IN_HOOK.with(|h| h.set(false));
            }
            if server {
                SERVER_BYTES.fetch_add(l.size() as i64, Ordering::Relaxed);
                SERVER_BLOCKS.fetch_add(1, Ordering::Relaxed);
                BY_SIZE[bucket(l.size())].fetch_add(1, Ordering::Relaxed);
            }
            p
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let (full, hdr) = full_layout(l);
        // SAFETY: p came from alloc above, so the header is there.
        unsafe {
            let size = (p.sub(16) as *const usize).read();
            if (p.sub(8) as *const usize).read() == 1 {
                SERVER_BYTES.fetch_sub(size as i64, Ordering::Relaxed);
                SERVER_BLOCKS.fetch_sub(1, Ordering::Relaxed);
                BY_SIZE[bucket(size)].fetch_sub(1, Ordering::Relaxed);
            }
            System.dealloc(p.sub(hdr), full);
        }
    }
}

#[global_allocator]
static GLOBAL: Tagged = Tagged;

fn histogram() -> Vec<i64> {
    BY_SIZE.iter().map(|a| a.load(Ordering::Relaxed)).collect()
}

#[test]
fn an_idle_subscription_holds_few_server_heap_bytes() {
    const N: usize = 200;
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(|| SERVER.with(|s| s.set(true)))
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = config();
    cfg.subscriptions.max_per_connection = 4;
    cfg.subscriptions.max_total = N + 10;
    let server = client_rt
        .block_on(server_rt.spawn(async move { serve(cfg).await }))
        .unwrap();

    client_rt.block_on(async {
        // Warm up: one full connection, so one-off allocations are not counted per socket.
        let warm = server.warm_up().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let bytes_before = SERVER_BYTES.load(Ordering::Relaxed);
        let blocks_before = SERVER_BLOCKS.load(Ordering::Relaxed);
        let hist_before = histogram();

        let mut clients = Vec::with_capacity(N);
        for i in 0..N {
            CAPTURE.store(std::env::var_os("WS_HEAP_TRACE").is_some() && i == 5, Ordering::Relaxed);
            let mut c = connect(server.addr, "graphql-transport-ws").await;
            c.init().await;
            c.send(json!({"type": "subscribe", "id": "1", "payload": {"query": "subscription { graphChanges { key } }"}}))
                .await;
            clients.push(c);
            if i == 5 {
                server.wait_active(7).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        CAPTURE.store(false, Ordering::Relaxed);
        server.wait_active(N + 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (size, t) in TRACES.lock().unwrap().iter() {
            eprintln!("=== {size}\n{t}");
        }
        let per_sub = (SERVER_BYTES.load(Ordering::Relaxed) - bytes_before) / N as i64;
        let blocks = (SERVER_BLOCKS.load(Ordering::Relaxed) - blocks_before) as f64 / N as f64;
        let mut rows: Vec<(usize, f64)> = histogram()
            .iter()
            .zip(&hist_before)
            .enumerate()
            .map(|(i, (a, b))| (i * 8, (a - b) as f64 / N as f64))
            .filter(|(_, n)| n.abs() >= 0.5)
            .collect();
        rows.sort_by(|a, b| (b.0 as f64 * b.1).total_cmp(&(a.0 as f64 * a.1)));
        eprintln!(
            "server heap per idle subscription: {per_sub} bytes in {blocks:.1} blocks; \
             by size (bytes rounded down to 8, blocks per subscription):"
        );
        for (size, n) in rows {
            eprintln!("  {size:>6} B x {n:.2}");
        }
        // Measured 3,416 B (debug build, Rust 1.95), of which: the connection task 1,280 B (it
        // was 1,792 B while `run` was an `async fn`: its state kept the socket it had already
        // split, ~370 B, and a second copy of its other arguments); the WebSocket read buffer
        // 256 B (`websocket.read_buffer_bytes`, was 512); the socket halves (400 B, the
        // WebSocket itself inside the split lock), the I/O registration (256 B), the
        // subscription's registry entry and queue slot, its fast-path state (the plan is
        // shared) and ids: the rest. It was 4,047-4,184 B before those two changes; 13,667 B
        // while every subscription kept async-graphql's stream (~7.1 KB), a task of its own
        // (0.9-1.4 KB) and an outbound channel (0.8 KB), with a 1 KiB read buffer and three
        // timers; and 19,805 B before that, with a 4 KiB read buffer, 72-byte unboxed messages
        // (a 2.3 KB block) and the write futures inline in the connection task (2.4 KB).
        assert!(
            per_sub <= 3_700,
            "{per_sub} bytes of server heap per idle subscription"
        );
        drop(clients);
        drop(warm);
        server.wait_empty().await;
    });
    server_rt.shutdown_background();
}
