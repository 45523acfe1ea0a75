#!/usr/bin/env bash
# The README's "Using it from your own project", done as a user would: a new crate outside the
# workspace with exactly the README's dependency lines, the README's first example as its
# main.rs, built against the packaged .crate contents (target/package, made by `cargo publish
# --dry-run`, which must run first) instead of crates.io, where the crates are not yet published.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
packages="${CARGO_TARGET_DIR:-$root/target}/package"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/src"
# The dependency lines are the README's own (the toml block of that section).
deps=$(awk '/^## Using it from your own project/{s=1} s&&/^```toml/{t=1;next} t&&/^```/{exit} t&&!/^\[dependencies\]/' README.md)
cat > "$dir/Cargo.toml" <<TOML
[package]
name = "jokes"
version = "0.1.0"
edition = "2024"

[dependencies]
$deps

[patch.crates-io]
tidewater = { path = "$packages/tidewater-$version" }
tidewater-macros = { path = "$packages/tidewater-macros-$version" }
TOML
# The README's first Rust block is the example the section tells the user to paste.
awk '/^```rust/{if(!d){t=1;next}} t&&/^```/{exit} t' README.md > "$dir/src/main.rs"
out=$(cd "$dir" && cargo run -q)
echo "$out"
test "$out" = "Why did the chicken cross the road? Not bad."
