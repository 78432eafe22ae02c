#![no_main]
use libfuzzer_sys::fuzz_target;
use pfsync_gw::wire::ipv4::Ipv4Packet;

fuzz_target!(|data: &[u8]| {
    if let Ok(ip) = Ipv4Packet::new_checked(data) {
        let _ = (ip.src(), ip.dst(), ip.ttl(), ip.protocol(), ip.verify_checksum());
        assert!(ip.header_len() + ip.payload().len() <= data.len());
        if let Ok(d) = pfsync_gw::wire::detect_dialect(ip.payload()) {
            let _ = pfsync_gw::wire::Packet::new_checked(ip.payload(), d);
        }
    }
});
