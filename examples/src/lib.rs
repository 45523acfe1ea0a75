//! Runnable examples: see the `[[example]]` targets of this package. Each ends its `main` with
//! [`tidewater::Report`], the library's own error report, so a failure prints sentences and a
//! failing exit status.

/// The workflows an example draws: `(file name, graph)`.
pub type Pictures = &'static [(&'static str, &'static tidewater::Graph)];

/// Where the pictures of the examples are checked in: `docs/graphs/`.
pub const PICTURES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/graphs");

/// `cargo run --example NAME -- --graph [DIR]`: writes each workflow's picture as Mermaid
/// (`.mmd`), Graphviz DOT (`.dot`) and SVG (`.svg`) into `DIR` (the current directory by
/// default), prints the paths, and ends the process. Does nothing without `--graph`.
pub fn graph_flag(pictures: Pictures) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(at) = args.iter().position(|a| a == "--graph") else {
        return;
    };
    let dir = args
        .get(at + 1)
        .filter(|a| !a.starts_with("--"))
        .map_or(".", String::as_str);
    match write_pictures(pictures, std::path::Path::new(dir)) {
        Ok(paths) => {
            for path in paths {
                println!("{}", path.display());
            }
            std::process::exit(0);
        }
        Err(error) => {
            eprintln!("error: cannot write the pictures into {dir}: {error}");
            std::process::exit(1);
        }
    }
}

/// Writes `NAME.mmd`, `NAME.dot` and `NAME.svg` for each picture into `dir` (made if
/// missing) and returns the paths written.
///
/// # Errors
/// The first file that cannot be written.
pub fn write_pictures(
    pictures: Pictures,
    dir: &std::path::Path,
) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, graph) in pictures {
        for format in tidewater::viz::Format::ALL {
            let path = dir.join(format!("{name}.{}", format.extension()));
            std::fs::write(&path, tidewater::viz::render(graph, format))?;
            written.push(path);
        }
    }
    Ok(written)
}

/// The test each example runs: its pictures in `docs/graphs/` are what the code draws today,
/// byte for byte. `UPDATE_GRAPHS=1 cargo test -p examples` rewrites them.
///
/// # Panics
/// When a checked-in picture is missing or differs.
pub fn check_pictures(pictures: Pictures) {
    let dir = std::path::Path::new(PICTURES_DIR);
    if std::env::var_os("UPDATE_GRAPHS").is_some() {
        write_pictures(pictures, dir).expect("docs/graphs is writable");
        return;
    }
    for (name, graph) in pictures {
        for format in tidewater::viz::Format::ALL {
            let path = dir.join(format!("{name}.{}", format.extension()));
            let stored = std::fs::read_to_string(&path).unwrap_or_default();
            let drawn = tidewater::viz::render(graph, format);
            assert!(
                stored == drawn,
                "{} is not what the code draws: run `UPDATE_GRAPHS=1 cargo test -p examples` and review the diff",
                path.display()
            );
        }
    }
}

/// Writes what one run did: `NAME.mmd`, `NAME.dot`, `NAME.svg` (the trace drawn on the
/// graph) and `NAME.txt` (its timeline) into `dir`; returns the paths written.
///
/// # Errors
/// The first file that cannot be written.
pub fn write_trace(
    name: &str,
    graph: &tidewater::Graph,
    trace: &tidewater::trace::Trace,
    dir: &std::path::Path,
) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for format in tidewater::viz::Format::ALL {
        let path = dir.join(format!("{name}.{}", format.extension()));
        std::fs::write(&path, tidewater::viz::render_trace(graph, trace, format))?;
        written.push(path);
    }
    let path = dir.join(format!("{name}.txt"));
    std::fs::write(&path, trace.timeline())?;
    written.push(path);
    Ok(written)
}

/// The test that keeps the pictures shown in the docs current: each file of `docs` (relative
/// to the repository) holds the checked-in `docs/graphs/PICTURE` text verbatim (in a
/// ```` ```mermaid ```` block, say).
///
/// # Panics
/// When a document does not hold the picture as drawn today.
pub fn check_embedded(docs: &[&str], picture: &str) {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let drawn = std::fs::read_to_string(std::path::Path::new(PICTURES_DIR).join(picture))
        .expect("the picture is checked in");
    for doc in docs {
        let text = std::fs::read_to_string(root.join(doc)).expect("the document exists");
        assert!(
            text.contains(&drawn),
            "{doc} does not show docs/graphs/{picture} as drawn today: paste the file's text in"
        );
    }
}
