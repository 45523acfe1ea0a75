//! The compile-time checks: every mistake in `ui/fail` is rejected with its pinned message,
//! every shape in `ui/pass` compiles and runs. Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p integration-tests --test ui`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/fail/*.rs");
    t.pass("ui/pass/*.rs");
}

/// docs/compile-time-checks.md shows each error "exactly as you see it": every ```text block
/// followed by `_Case: tests/ui/fail/X.rs_` must equal `X.stderr`, and every failing case must
/// be named somewhere in docs/, so a re-pinned message cannot leave the guide behind.
#[test]
fn the_guide_shows_the_pinned_errors() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("../docs/compile-time-checks.md")).unwrap();
    let mut shown = 0;
    let mut stale = Vec::new();
    for (at, _) in guide.match_indices("\n_Case: `tests/ui/fail/") {
        let name_start = at + "\n_Case: `tests/".len();
        let name_end = name_start + guide[name_start..].find(".rs`").unwrap();
        let case = &guide[name_start..name_end];
        let block_end = guide[..at].rfind("```\n").unwrap();
        let block_start = guide[..block_end].rfind("```text\n").unwrap() + "```text\n".len();
        let pinned = std::fs::read_to_string(root.join(format!("{case}.stderr"))).unwrap();
        if guide[block_start..block_end].trim_end() != pinned.trim_end() {
            stale.push(case.to_string());
        }
        shown += 1;
    }
    assert!(shown >= 30, "only {shown} cases found in the guide");
    assert!(
        stale.is_empty(),
        "docs/compile-time-checks.md shows an old error for {stale:?}: copy the .stderr in"
    );

    let mut docs = String::new();
    for entry in std::fs::read_dir(root.join("../docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "md") {
            docs.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root.join("ui/fail")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "rs") {
            let file = path.file_name().unwrap().to_str().unwrap().to_string();
            if !docs.contains(&file) {
                missing.push(file);
            }
        }
    }
    assert!(missing.is_empty(), "no chapter in docs/ names {missing:?}");
}
