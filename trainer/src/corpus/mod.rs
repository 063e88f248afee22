//! The built-in corpus of the main job (`ember-train pretrain` with no `--data`): text written
//! for this project and shipped inside the binary: the repository's README, the format and
//! tokenizer specifications of `formats/`, and the trainer's guides in this directory (last, so
//! that the validation split, the final 10% of the characters, is prose). Nothing here is copied
//! from elsewhere.

/// Prefix of the built-in texts' names in `trainer.json`.
pub const PREFIX: &str = "<built-in>/";

/// The texts as (name, content), in training order (the last 10% of the characters of the
/// joined corpus, i.e. the end of the last text, is the validation split).
pub fn texts() -> Vec<(&'static str, &'static str)> {
    vec![
        ("README.md", include_str!("../../../README.md")),
        (
            "formats/FORMAT.md",
            include_str!("../../../formats/FORMAT.md"),
        ),
        (
            "formats/TOKENIZER.md",
            include_str!("../../../formats/TOKENIZER.md"),
        ),
        ("trainer-guide.md", include_str!("trainer-guide.md")),
        ("pipeline.md", include_str!("pipeline.md")),
        ("questions.md", include_str!("questions.md")),
        ("checkpoints.md", include_str!("checkpoints.md")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_is_large_enough_for_the_main_job() {
        let total: usize = texts().iter().map(|(_, t)| t.len()).sum();
        assert!(total > 40_000, "{total} bytes");
        for (name, t) in texts() {
            assert!(!t.trim().is_empty(), "{name} is empty");
        }
    }
}
