#![no_main]
#[path = "common.rs"]
mod common;
use libfuzzer_sys::fuzz_target;

// Whatever dialect is detected, the packet is then checked as that dialect.
fuzz_target!(|data: &[u8]| {
    if let Ok(d) = pfsync_gw::wire::detect_dialect(data) {
        common::check(d, data);
    }
});
