//! Integration tests live in `tests/`; this library holds what they share with the helper
//! binaries in `src/bin/`.

pub mod durable;
