#![no_main]
//! Arbitrary bytes as a control-socket request and as a `/metrics` HTTP request head:
//! never a panic, and an error message is printable ASCII (it goes back to the client in
//! a JSON string and may be logged).
use libfuzzer_sys::fuzz_target;
use pfsync_gw::node::control::{
    parse_control_request, parse_http_request, ControlRequest, HttpRequest, CONTROL_REQUEST_MAX,
};

fuzz_target!(|data: &[u8]| {
    let req = &data[..data.len().min(CONTROL_REQUEST_MAX)];
    match parse_control_request(req) {
        Ok(ControlRequest::Status) => {}
        Err(e) => assert!(e.bytes().all(|b| (0x20..0x7f).contains(&b)), "{e:?}"),
    }
    if let HttpRequest::Metrics { .. } = parse_http_request(data) {
        assert!(data.windows(8).any(|w| w == b"/metrics"));
    }
});
