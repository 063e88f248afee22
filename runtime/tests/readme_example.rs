//! The README's section "Using the runtime from Rust" shows the core of
//! `runtime/examples/generate.rs` (which CI runs): every line of its Rust snippet, but the one
//! that opens a file by name and the one that names the prompt, is a line of the example, so the
//! snippet compiles and runs as the example does.

#[test]
fn the_readme_snippet_is_the_generate_example() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("examples/generate.rs")).unwrap();
    let section = readme
        .split("## Using the runtime from Rust")
        .nth(1)
        .expect("the README has the section");
    let snippet = section
        .split("```rust\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("the section has a Rust snippet");
    let lines: Vec<&str> = example.lines().map(str::trim).collect();
    let mut checked = 0;
    for line in snippet.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("let model = Model::open(") || line.starts_with("let prompt = ") {
            continue;
        }
        assert!(
            lines.contains(&line),
            "README line {line:?} is not in examples/generate.rs"
        );
        checked += 1;
    }
    assert!(checked > 20, "only {checked} lines checked");
}
