//! Empty: the test is in `tests/renamed.rs`.
