//! Arbitrary config text (from a file or `PUT /v1/config`): parsing never panics, every error
//! has a 1-based position inside the text, and an accepted model survives JSON (the API's form)
//! unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match ferrule_config::parse("fuzz.toml", text) {
        Ok(model) => {
            let json = serde_json::to_string(&model).expect("a model serialises");
            let back: ferrule_config::Model = serde_json::from_str(&json).expect("its JSON parses back");
            assert_eq!(back, model);
            let _ = model.summary();
        }
        Err(errors) => {
            assert!(!errors.errors.is_empty(), "a rejection carries at least one error");
            let lines = text.lines().count().max(1) + 1;
            for e in &errors.errors {
                assert!(e.line >= 1 && e.col >= 1, "positions are 1-based: {e}");
                assert!(e.line <= lines, "line {} beyond the text's {lines} lines: {e}", e.line);
            }
        }
    }
});
