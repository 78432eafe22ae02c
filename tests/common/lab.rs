//! Harness of the multi-host tests (`tests/netns_*.rs`): network namespaces joined by
//! veths and a bridge, real proto-240 traffic, real daemons, nftables impairments.
//! Needs root; every test skips (passing, with a printed reason) otherwise.
//!
//! Included with `#[path = "common/lab.rs"] mod common;` because `tests/common/mod.rs`
//! holds the wire property tests' generators.

// Each test binary uses a different subset of the helpers.
#![allow(dead_code)]

pub mod capture;
pub mod emu;
pub mod gw;
pub mod netns;
pub mod pf;
pub mod poll;
pub mod proc;
pub mod sync;
