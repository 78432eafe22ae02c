#![no_main]
//! Arbitrary text as a config file: an error (with file, field and reason) or a config,
//! never a panic. Key paths the text names are opened with the production checks
//! (no symlinks, regular files only, at most 128 bytes read), so nothing blocks.
use libfuzzer_sys::fuzz_target;
use pfsync_gw::config::Config;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/nonexistent-pfsync-gw-fuzz/gw.toml");
    if let Err(e) = Config::parse(path, text) {
        assert_eq!(e.file, path);
        assert!(!e.to_string().is_empty());
    }
});
