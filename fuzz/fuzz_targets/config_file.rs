//! Untrusted text as a `--config` TOML file and as `MESHCORE_*` / `--set` values.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use meshcore_node::{SettingKey, SettingsSources};

fuzz_target!(|text: &str| {
    if let Ok(file) = SettingsSources::parse_config(Path::new("fuzz.toml"), text) {
        let sources = SettingsSources { file: Some(("fuzz.toml".into(), file)), ..Default::default() };
        let _ = sources.resolve();
    }
    for key in SettingKey::ALL {
        let _ = key.value_from_text(text);
    }
    let _ = SettingsSources::from_flags(&[text.to_owned()]);
});
