//! The daemon's config loader (`maskd::config::parse`) on any text: `Ok` or a
//! `ConfigError` that names file, position and key, never a panic.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `config::load` reads the file with `read_to_string`: non-UTF-8 never gets here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match maskd::config::parse(text, Path::new("/etc/maskd/fuzz.toml")) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(e) => {
            let _ = format!("{e}");
        }
    }
});
