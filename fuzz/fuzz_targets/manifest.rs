//! The model manifest loader (`Manifest::parse`, what `Manifest::load` runs before it
//! checks that the named files exist) on any text: `Ok` or a `ManifestError`, never a
//! panic.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use maskd::engine::Manifest;

fuzz_target!(|data: &[u8]| {
    // `Manifest::load` reads the file with `read_to_string`: non-UTF-8 never gets here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Manifest::parse(text, Path::new("models/fuzz.toml")) {
        Ok(manifest) => {
            let _ = manifest.files();
        }
        Err(e) => {
            let _ = format!("{e}");
        }
    }
});
