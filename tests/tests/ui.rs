//! The compile-time checks: every mistake in `ui/fail` is rejected with its pinned message,
//! every shape in `ui/pass` compiles and runs. Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p integration-tests --test ui`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/fail/*.rs");
    t.pass("ui/pass/*.rs");
}
