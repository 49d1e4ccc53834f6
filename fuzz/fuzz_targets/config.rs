//! Any configuration file's text: loading answers settings or a list of problems, never a
//! panic; accepted settings pass their own validation again.
#![no_main]

use conclave_core::settings::Settings;

libfuzzer_sys::fuzz_target!(|text: &str| {
    match Settings::from_toml(text) {
        Ok(settings) => assert!(settings.validate().is_ok()),
        Err(error) => assert!(!error.problems.is_empty()),
    }
});
