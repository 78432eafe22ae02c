#![no_main]
//! Capture frames of every link type through the extractor and the pfsync decoder.
use libfuzzer_sys::fuzz_target;
use pfsync_gw::cli::pcap::{extract_pfsync, linktype, Extracted};
use pfsync_gw::wire::{detect_dialect, Packet};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, frame)) = data.split_first() else { return };
    let link = [
        linktype::ETHERNET,
        linktype::RAW,
        linktype::LINUX_SLL,
        linktype::LINUX_SLL2,
        linktype::IPV6,
        linktype::PFSYNC,
    ][sel as usize % 6];
    if let Extracted::Pfsync { payload, .. } = extract_pfsync(link, frame) {
        if let Ok(d) = detect_dialect(payload) {
            if let Ok(p) = Packet::new_checked(payload, d) {
                for m in p.messages() {
                    let _ = m.to_string();
                }
            }
        }
    }
});
