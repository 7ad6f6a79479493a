//! Checks that the Leptos settings the server reads at run time (Leptos.toml) agree with the build
//! settings cargo-leptos reads (Cargo.toml), so no setting can differ between the two files.

use std::collections::BTreeMap;

fn section(path: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let mut inside = false;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == "[package.metadata.leptos]";
            continue;
        }
        if !inside || line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            out.insert(key.trim().to_owned(), value.trim().to_owned());
        }
    }
    out
}

fn main() {
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-changed=Leptos.toml");
    // The migrations are embedded by `sqlx::migrate!`: a new one must rebuild the server.
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=migrations/postgres");
    let build = section("Cargo.toml");
    let run = section("Leptos.toml");
    for (key, value) in &run {
        if let Some(other) = build.get(key) {
            assert!(
                other == value,
                "Leptos.toml sets {key} = {value} but Cargo.toml's [package.metadata.leptos] sets {key} = {other}; make them equal"
            );
        }
    }
}
