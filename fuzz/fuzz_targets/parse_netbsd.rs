#![no_main]
#[path = "common.rs"]
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::check(pfsync_gw::wire::Dialect::NetbsdV3, data));
