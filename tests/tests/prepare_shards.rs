//! `ember-train prepare`: the shards hold exactly the tokens of each file's training part and
//! validation part (the last `--val-fraction` of its bytes, moved to a character boundary), each
//! followed by `<|endoftext|>`, whatever the piece cuts, thread count and shard size; the
//! manifest counts them; bad input is refused with the output directory never created.

mod hostile_util;

use emberlm_formats::tokenizer::{SpecialTokens, Tokenizer};
use emberlm_trainer::shards::{Shard, read_manifest};
use hostile_util::{bin, scratch, write_random_words};
use std::path::Path;
use std::process::Command;

fn tokens_of(
    dir: &Path,
    shards: &[emberlm_trainer::shards::ShardInfo],
    w: emberlm_trainer::shards::Width,
) -> Vec<u32> {
    let mut out = Vec::new();
    for s in shards {
        let sh = Shard::open(&dir.join(&s.file), w, s.tokens).unwrap();
        out.extend((0..sh.len()).map(|i| sh.get(i)));
    }
    out
}

#[test]
fn shards_hold_each_documents_tokens() {
    let dir = scratch("prepare");
    let d: &Path = &dir;
    // A file larger than a piece (4 MiB), so that pieces are cut and tokenized in parallel; a
    // file with multi-byte characters; a tiny one; the two small ones in a directory.
    let line =
        "The quick brown fox — jumps over 42 lazy dogs; naïve café déjà vu.\n  Indented line\n";
    let big: String = line.repeat(5 << 20 >> 6);
    std::fs::write(d.join("big.txt"), &big).unwrap();
    std::fs::create_dir(d.join("more")).unwrap();
    std::fs::write(d.join("more/a.txt"), "日本語のテキスト。\nSecond line ✓\n").unwrap();
    std::fs::write(d.join("more/b.txt"), "tiny").unwrap();
    let tok = Tokenizer::gpt2();
    let eot = tok.eot_id().unwrap();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for name in ["big.txt", "more/a.txt", "more/b.txt"] {
        let text = std::fs::read_to_string(d.join(name)).unwrap();
        let mut at = (0.75 * text.len() as f64).floor() as usize;
        while !text.is_char_boundary(at) {
            at += 1;
        }
        train.extend(tok.encode_to_vec(&text[..at], SpecialTokens::AsText));
        train.push(eot);
        if at < text.len() {
            val.extend(tok.encode_to_vec(&text[at..], SpecialTokens::AsText));
            val.push(eot);
        }
    }
    for (threads, shard_tokens) in [("1", "1000000"), ("3", "77777")] {
        let out = d.join(format!("shards-{threads}"));
        let o = Command::new(bin("ember-train"))
            .args(["prepare", "--data"])
            .arg(d.join("big.txt"))
            .arg("--data")
            .arg(d.join("more"))
            .args([
                "--val-fraction",
                "0.25",
                "--shard-tokens",
                shard_tokens,
                "--threads",
                threads,
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let m = read_manifest(&out).unwrap();
        assert_eq!(
            tokens_of(&out, &m.train, m.width),
            train,
            "threads {threads}"
        );
        assert_eq!(tokens_of(&out, &m.val, m.width), val, "threads {threads}");
        assert_eq!(m.train_tokens() as usize, train.len());
        assert_eq!(m.train.iter().map(|s| s.documents).sum::<u64>(), 3);
        assert_eq!(m.sources.len(), 3);
    }
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    let dir = scratch("prepare-bad");
    let d: &Path = &dir;
    std::fs::write(d.join("latin1.txt"), b"caf\xe9\n").unwrap();
    std::fs::write(d.join("ok.txt"), "hello\n").unwrap();
    std::fs::create_dir(d.join("exists")).unwrap();
    std::fs::create_dir(d.join("empty-dir")).unwrap();
    let cases: [(&[&str], &str, i32); 5] = [
        (&["--data", "nope.txt", "--out", "o1"], "nope.txt", 1),
        (
            &["--data", "latin1.txt", "--out", "o2"],
            "invalid UTF-8 at byte offset 3",
            1,
        ),
        (
            &["--data", "ok.txt", "--out", "exists"],
            "already exists",
            1,
        ),
        (
            &["--data", "ok.txt", "--out", "o3", "--val-fraction", "1.5"],
            "--val-fraction",
            2,
        ),
        (&["--data", "empty-dir", "--out", "o4"], "no files", 1),
    ];
    for (args, needle, code) in cases {
        let o = Command::new(bin("ember-train"))
            .current_dir(d)
            .arg("prepare")
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    for o in ["o1", "o2", "o3", "o4"] {
        assert!(!d.join(o).exists(), "{o} was created");
    }
    let hidden: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".prepare-"))
        .collect();
    assert!(hidden.is_empty(), "a temporary directory was left behind");
}

/// `pretrain --data DIR` trains on the shards; a run stopped after 3 steps and resumed to 6 ends
/// with the same weights, bit for bit, as 6 steps in one go (the shuffle is computed, not stored).
#[test]
fn pretraining_on_shards_resumes_bit_for_bit() {
    let dir = scratch("prepare-train");
    let d: &Path = &dir;
    write_random_words(&d.join("text.txt"), 400, 5);
    let ok = |args: &[&str]| {
        let o = Command::new(bin("ember-train"))
            .current_dir(d)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    ok(&[
        "prepare",
        "--data",
        "text.txt",
        "--out",
        "shards",
        "--shard-tokens",
        "500",
    ]);
    let run = |out: &str, steps: &str| {
        ok(&[
            "pretrain",
            "--data",
            "shards",
            "--layers",
            "1",
            "--heads",
            "2",
            "--dim",
            "16",
            "--context",
            "16",
            "--batch",
            "4",
            "--threads",
            "1",
            "--steps",
            steps,
            "--out",
            out,
        ]);
    };
    run("whole", "6");
    run("halves", "3");
    ok(&[
        "pretrain",
        "--resume",
        "halves",
        "--steps",
        "6",
        "--threads",
        "1",
    ]);
    let weights = |run: &str| {
        std::fs::read(
            d.join(run)
                .join("checkpoints/step-00000006/model.safetensors"),
        )
        .unwrap()
    };
    assert_eq!(weights("whole"), weights("halves"));
    // The shards were tokenized with GPT-2's tokenizer: another one is refused by name.
    std::fs::write(
        d.join("small.txt"),
        "a b c d e f g h i j k l m n o p q r s t u v w x y z\n".repeat(20),
    )
    .unwrap();
    ok(&[
        "tokenizer",
        "--data",
        "small.txt",
        "--vocab-size",
        "300",
        "--out",
        "tok.ember",
    ]);
    let o = Command::new(bin("ember-train"))
        .current_dir(d)
        .args([
            "pretrain",
            "--data",
            "shards",
            "--tokenizer",
            "tok.ember",
            "--steps",
            "1",
            "--out",
            "x",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("another tokenizer"), "{err}");
}
