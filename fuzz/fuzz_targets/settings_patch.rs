//! Untrusted bytes as a `PUT /v1/settings` body: parsing and validating must never panic,
//! and a refused patch must leave the settings unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcore_node::Settings;

fuzz_target!(|body: &[u8]| {
    let settings = Settings::default();
    if let Ok(serde_json::Value::Object(patch)) = serde_json::from_slice(body) {
        if settings.with_patch(&patch, "fuzz").is_err() {
            assert_eq!(settings, Settings::default());
        }
    }
});
