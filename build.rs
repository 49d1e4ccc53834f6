//! Rebuilds the binary when an embedded file changes. Templates, static assets and migrations
//! are compiled in (rust-embed, diesel_migrations), but those macros do not tell cargo which
//! files they read, so without this an edited template or script kept serving its old copy.
fn main() {
    for dir in ["templates", "static", "migrations"] {
        println!("cargo:rerun-if-changed={dir}");
    }
}
