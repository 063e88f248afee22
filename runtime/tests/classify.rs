//! Classification on random classifier models: the input is prepared as the book's
//! `classify_review` (readout `last` pads to the length, `last-real` does not, truncation keeps the
//! first tokens), probabilities are softmax(logits), errors are typed; and `ember classify` through
//! the real binary.

use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::DType;
use emberlm_formats::meta::{Readout, Task};
use emberlm_runtime::random::{random_classifier_bytes, random_model_bytes};
use emberlm_runtime::{Classifier, Model, RuntimeError, Session, SessionOptions};

/// Softmax computed here vs the classifier's: both accumulate in f64, the results are f32.
const PROB_TOL: f32 = 1e-6;

fn cfg() -> GptConfig {
    GptConfig {
        vocab_size: 97,
        context_length: 24,
        dim: 32,
        n_layers: 2,
        n_heads: 4,
        qkv_bias: true,
        tied_head: false,
    }
}

fn task(k: usize, readout: Readout, length: Option<u32>) -> Task {
    Task::Classifier {
        labels: (0..k).map(|i| format!("class {i}")).collect(),
        readout,
        pad_id: 96,
        length,
    }
}

fn opts() -> SessionOptions {
    SessionOptions {
        threads: 1,
        ..SessionOptions::default()
    }
}

/// The logits a plain session gives after prefilling exactly `seq`.
fn prefill(model: &Model<'_>, options: &SessionOptions, seq: &[u32]) -> Vec<f32> {
    let mut s = Session::new(model, options).unwrap();
    s.prefill(seq).unwrap().to_vec()
}

fn ids(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 31 + seed * 7 + 3) % 96)
        .collect()
}

#[test]
fn readout_last_pads_to_the_length() {
    let bytes =
        random_classifier_bytes(&cfg(), &task(3, Readout::Last, Some(10)), DType::F32, 1).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    let mut clf = Classifier::new(&model, &opts()).unwrap();
    let input = [5u32, 6, 7];
    let padded = [5u32, 6, 7, 96, 96, 96, 96, 96, 96, 96];
    let want = prefill(&model, &opts(), &padded);
    let unpadded = prefill(&model, &opts(), &input);
    let c = clf.classify_tokens(&input).unwrap();
    assert_eq!(c.logits, &want[..]);
    assert_ne!(c.logits, &unpadded[..], "padding must change the logits");
    assert_eq!(c.sequence, &padded[..]);
    assert_eq!((c.tokens, c.truncated), (3, false));
}

#[test]
fn readout_last_real_reads_the_raw_sequence() {
    let bytes =
        random_classifier_bytes(&cfg(), &task(2, Readout::LastReal, Some(10)), DType::F32, 2)
            .unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    let mut clf = Classifier::new(&model, &opts()).unwrap();
    let input = [11u32, 12, 13, 14];
    let want = prefill(&model, &opts(), &input);
    let padded = prefill(&model, &opts(), &[11, 12, 13, 14, 96, 96, 96, 96, 96, 96]);
    let c = clf.classify_tokens(&input).unwrap();
    assert_eq!(c.logits, &want[..]);
    assert_ne!(c.logits, &padded[..]);
    assert_eq!(c.sequence, &input[..]);
}

#[test]
fn last_without_a_length_does_not_pad() {
    let bytes =
        random_classifier_bytes(&cfg(), &task(2, Readout::Last, None), DType::F32, 3).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    let mut clf = Classifier::new(&model, &opts()).unwrap();
    let input = ids(5, 1);
    let c = clf.classify_tokens(&input).unwrap();
    assert_eq!(c.sequence, &input[..]);
    assert_eq!(c.logits, &prefill(&model, &opts(), &input)[..]);
}

#[test]
fn truncation_keeps_the_first_tokens() {
    // To the length (10), for both readouts.
    for readout in [Readout::Last, Readout::LastReal] {
        let bytes =
            random_classifier_bytes(&cfg(), &task(2, readout, Some(10)), DType::F32, 4).unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        let mut clf = Classifier::new(&model, &opts()).unwrap();
        let input = ids(15, 2);
        let want = prefill(&model, &opts(), &input[..10]);
        let c = clf.classify_tokens(&input).unwrap();
        assert_eq!(c.logits, &want[..], "{readout:?}");
        assert_eq!((c.tokens, c.truncated), (10, true));
        assert_eq!(c.sequence, &input[..10]);
    }
    // No length: to the context (24).
    let bytes =
        random_classifier_bytes(&cfg(), &task(2, Readout::Last, None), DType::F32, 5).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    let mut clf = Classifier::new(&model, &opts()).unwrap();
    let input = ids(30, 3);
    let c = clf.classify_tokens(&input).unwrap();
    assert_eq!((c.tokens, c.truncated), (24, true));
    assert_eq!(c.logits, &prefill(&model, &opts(), &input[..24])[..]);
    // A length beyond the context: truncated and padded to the context, as the book's
    // min(max_length, supported_context_length).
    let bytes =
        random_classifier_bytes(&cfg(), &task(2, Readout::Last, Some(100)), DType::F32, 6).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    let mut clf = Classifier::new(&model, &opts()).unwrap();
    let c = clf.classify_tokens(&[1, 2]).unwrap();
    let mut want = vec![1u32, 2];
    want.resize(24, 96);
    assert_eq!(c.sequence, &want[..]);
    // A session with a shorter context: that context is the limit.
    let short = SessionOptions {
        context: Some(8),
        ..opts()
    };
    let mut clf = Classifier::new(&model, &short).unwrap();
    let input = ids(12, 4);
    let c = clf.classify_tokens(&input).unwrap();
    assert_eq!(c.sequence, &input[..8]);
    assert_eq!(c.logits, &prefill(&model, &short, &input[..8])[..]);
}

#[test]
fn probabilities_are_the_softmax_of_the_logits() {
    for (k, dtype) in [(2, DType::F32), (3, DType::F16), (5, DType::Q8)] {
        let bytes =
            random_classifier_bytes(&cfg(), &task(k, Readout::Last, Some(12)), dtype, 7).unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        for threads in [1, 2] {
            let o = SessionOptions {
                threads,
                ..SessionOptions::default()
            };
            let mut clf = Classifier::new(&model, &o).unwrap();
            for seed in 0..4 {
                let c = clf
                    .classify_tokens(&ids(3 + seed as usize * 3, seed))
                    .unwrap();
                assert_eq!(c.logits.len(), k);
                let sum_exp: f64 = c.logits.iter().map(|&l| (l as f64).exp()).sum();
                for (p, &l) in c.probabilities.iter().zip(c.logits) {
                    let want = ((l as f64).exp() / sum_exp) as f32;
                    assert!((p - want).abs() <= PROB_TOL, "{p} vs {want}");
                }
                let total: f32 = c.probabilities.iter().sum();
                assert!((total - 1.0).abs() <= 1e-5, "{total}");
                let best = (0..k)
                    .max_by(|&a, &b| c.logits[a].total_cmp(&c.logits[b]))
                    .unwrap();
                assert_eq!(c.label_id, best);
                assert_eq!(c.label, format!("class {best}"));
                assert_eq!(c.labels.len(), k);
            }
        }
    }
}

#[test]
fn repeated_calls_start_from_an_empty_cache() {
    let bytes =
        random_classifier_bytes(&cfg(), &task(3, Readout::LastReal, None), DType::F32, 8).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    let mut clf = Classifier::new(&model, &opts()).unwrap();
    let (a, b) = (ids(7, 1), ids(9, 2));
    let first = clf.classify_tokens(&a).unwrap().logits.to_vec();
    let other = clf.classify_tokens(&b).unwrap().logits.to_vec();
    assert_ne!(first, other);
    assert_eq!(clf.classify_tokens(&a).unwrap().logits, &first[..]);
    assert_eq!(clf.session().position(), 7);
}

#[test]
fn errors_are_typed() {
    let lm = random_model_bytes(&cfg(), DType::F32, 9).unwrap();
    let lm = Model::from_bytes(&lm).unwrap();
    assert!(matches!(
        Classifier::new(&lm, &opts()),
        Err(RuntimeError::WrongTask { .. })
    ));

    let bytes =
        random_classifier_bytes(&cfg(), &task(2, Readout::Last, Some(8)), DType::F32, 10).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    let mut clf = Classifier::new(&model, &opts()).unwrap();
    assert_eq!(clf.classify_tokens(&[]), Err(RuntimeError::EmptyPrompt));
    assert_eq!(
        clf.classify_tokens(&[1, 97, 2]),
        Err(RuntimeError::BadToken {
            id: 97,
            vocab_size: 97
        })
    );
    // Checked even where truncation would drop it.
    let mut long = ids(10, 1);
    long.push(500);
    assert_eq!(
        clf.classify_tokens(&long),
        Err(RuntimeError::BadToken {
            id: 500,
            vocab_size: 97
        })
    );
    assert_eq!(clf.classify_text("hello"), Err(RuntimeError::NoTokenizer));
    // After errors the classifier still works.
    assert!(clf.classify_tokens(&[1, 2, 3]).is_ok());

    // A pad id outside the vocabulary, when padding is needed.
    let bad_pad = Task::Classifier {
        labels: vec!["a".into(), "b".into()],
        readout: Readout::Last,
        pad_id: 97,
        length: Some(8),
    };
    let bytes = random_classifier_bytes(&cfg(), &bad_pad, DType::F32, 11).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    assert_eq!(
        Classifier::new(&model, &opts()).err(),
        Some(RuntimeError::BadToken {
            id: 97,
            vocab_size: 97
        })
    );
}

/// `ember classify` and friends through the real binary.
#[cfg(feature = "cli")]
mod cli {
    use super::*;
    use emberlm_formats::tokenizer::{SpecialTokens, Tokenizer};
    use emberlm_runtime::random::{write_random_classifier, write_random_model};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    /// The binary's prefill runs on every core; the library's here on one: summation order.
    const CLI_REL_TOL: f64 = 1e-4;

    fn run(args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(args)
            .output()
            .unwrap()
    }

    fn ok_json(out: &Output) -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Exit code 1 (a failure), one line naming the problem.
    fn fails_with(out: &Output, needle: &str) {
        fails_with_code(out, 1, needle)
    }

    /// A usage error (a flag missing or out of range): exit code 2.
    fn usage_error(out: &Output, needle: &str) {
        fails_with_code(out, 2, needle)
    }

    fn fails_with_code(out: &Output, code: i32, needle: &str) {
        assert_eq!(out.status.code(), Some(code), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        assert_eq!(err.lines().count(), 1, "{err:?}");
    }

    fn gpt2_cfg() -> GptConfig {
        GptConfig {
            vocab_size: 50257,
            context_length: 32,
            dim: 16,
            n_layers: 1,
            n_heads: 2,
            qkv_bias: true,
            tied_head: true,
        }
    }

    fn spam_task() -> Task {
        Task::Classifier {
            labels: vec!["not spam".into(), "spam".into()],
            readout: Readout::Last,
            pad_id: 50256,
            length: Some(16),
        }
    }

    fn files(dir: &Path) -> (PathBuf, PathBuf) {
        let clf = dir.join("spam.ember");
        let tok = Tokenizer::gpt2();
        write_random_classifier(&clf, &gpt2_cfg(), &spam_task(), DType::F16, 3, Some(tok)).unwrap();
        let lm = dir.join("lm.ember");
        let small = GptConfig {
            vocab_size: 97,
            ..gpt2_cfg()
        };
        write_random_model(&lm, &small, DType::F32, 4, None).unwrap();
        (clf, lm)
    }

    /// A fresh, uniquely named directory `emberlm-classify-<name>-*` in the temp directory,
    /// removed with everything in it when the returned guard drops (also when the test panics).
    fn tempdir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("emberlm-classify-{name}-"))
            .tempdir()
            .unwrap()
    }

    #[test]
    fn classify_json_matches_the_library() {
        let tmp = tempdir("json");
        let dir = tmp.path();
        let (clf_path, _) = files(dir);
        let m = clf_path.to_str().unwrap();
        let text = "You are a winner you have been specially selected to receive $1000 cash or a $2000 award.";
        let j = ok_json(&run(&["classify", m, "--text", text, "--json"]));

        let model = Model::open(&clf_path).unwrap();
        let mut clf = Classifier::new(&model, &opts()).unwrap();
        let c = clf.classify_text(text).unwrap();
        let n = Tokenizer::gpt2()
            .encode_to_vec(text, SpecialTokens::AsText)
            .len()
            .min(16);
        assert_eq!(j["tokens"].as_f64().unwrap(), n as f64);
        assert_eq!(j["label"].as_str().unwrap(), c.label);
        assert_eq!(j["label_id"].as_f64().unwrap(), c.label_id as f64);
        let logits = j["logits"].as_array().unwrap();
        assert_eq!(logits.len(), 2);
        for (a, &b) in logits.iter().zip(c.logits) {
            let scale = c.logits.iter().fold(1e-3f32, |m, v| m.max(v.abs())) as f64;
            assert!(
                (a.as_f64().unwrap() - b as f64).abs() <= CLI_REL_TOL * scale,
                "{a:?} vs {b}"
            );
        }
        let probs = &j["probabilities"];
        let (p0, p1) = (
            probs["not spam"].as_f64().unwrap(),
            probs["spam"].as_f64().unwrap(),
        );
        assert!((p0 + p1 - 1.0).abs() < 1e-5);
        assert!((p1 - c.probabilities[1] as f64).abs() < 1e-4);

        // The same through --tokens.
        let ids: Vec<String> = Tokenizer::gpt2()
            .encode_to_vec(text, SpecialTokens::AsText)
            .iter()
            .map(u32::to_string)
            .collect();
        let k = ok_json(&run(&["classify", m, "--tokens", &ids.join(","), "--json"]));
        assert_eq!(k["label"].as_str().unwrap(), c.label);
        assert_eq!(k["truncated"], true);

        // Special-token names in a text are text: `<|endoftext|>` is several tokens, not 50256.
        let eot = ok_json(&run(&["classify", m, "--text", "<|endoftext|>", "--json"]));
        let as_text = Tokenizer::gpt2()
            .encode_to_vec("<|endoftext|>", SpecialTokens::AsText)
            .len();
        assert!(as_text > 1);
        assert_eq!(eot["tokens"].as_f64().unwrap(), as_text as f64);

        // Human output names the label and every probability.
        let out = run(&["classify", m, "--text", text, "--threads", "1"]);
        assert!(out.status.success());
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(s.starts_with(c.label), "{s}");
        assert!(s.contains("not spam") && s.lines().count() == 3, "{s}");
    }

    #[test]
    fn classify_file_prints_one_result_per_line() {
        let tmp = tempdir("file");
        let dir = tmp.path();
        let (clf_path, _) = files(dir);
        let m = clf_path.to_str().unwrap();
        let input = dir.join("texts.txt");
        std::fs::write(&input, "Hey, still on for dinner?\r\n\n  \nWIN CASH NOW\n").unwrap();
        let out = run(&["classify", m, "--file", input.to_str().unwrap(), "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<_> = s
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["line"].as_f64().unwrap(), 1.0);
        assert_eq!(lines[1]["line"].as_f64().unwrap(), 4.0);
        let single = ok_json(&run(&["classify", m, "--text", "WIN CASH NOW", "--json"]));
        assert_eq!(
            lines[1]["label"].as_str().unwrap(),
            single["label"].as_str().unwrap()
        );
        assert_eq!(
            lines[1]["tokens"].as_f64().unwrap(),
            single["tokens"].as_f64().unwrap()
        );

        // `-` reads standard input.
        let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["classify", m, "--file", "-", "--json"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            &mut child.stdin.take().unwrap(),
            &std::fs::read(&input).unwrap(),
        )
        .unwrap();
        let piped = child.wait_with_output().unwrap();
        assert!(piped.status.success());
        assert_eq!(String::from_utf8(piped.stdout).unwrap(), s);

        let out = run(&["classify", m, "--file", input.to_str().unwrap()]);
        assert!(out.status.success());
        let s = String::from_utf8(out.stdout).unwrap();
        assert_eq!(s.lines().count(), 3, "{s}"); // header + 2
        assert!(s.contains("WIN CASH NOW"));
    }

    #[test]
    fn wrong_task_and_bad_input_fail_with_one_line() {
        let tmp = tempdir("errors");
        let dir = tmp.path();
        let (clf_path, lm_path) = files(dir);
        let (m, lm) = (clf_path.to_str().unwrap(), lm_path.to_str().unwrap());
        fails_with(
            &run(&["classify", lm, "--tokens", "1,2"]),
            "not a classifier",
        );
        fails_with(
            &run(&["generate", m, "--tokens", "1,2"]),
            "use `ember classify`",
        );
        fails_with(
            &run(&["score", m, "--tokens", "1,2"]),
            "use `ember classify`",
        );
        fails_with(
            &run(&["chat", m]),
            "this model is a classifier: use `ember classify`",
        );
        usage_error(&run(&["classify", m]), "exactly one of");
        usage_error(
            &run(&["classify", m, "--text", "a", "--tokens", "1"]),
            "exactly one of",
        );
        usage_error(&run(&["classify", m, "--text", ""]), "--text is empty");
        fails_with(&run(&["classify", m, "--tokens", "1,99999"]), "99999");
        usage_error(&run(&["classify", m, "--tokens", "x"]), "--tokens");
        fails_with(
            &run(&["classify", m, "--file", "/nonexistent/texts.txt"]),
            "/nonexistent/texts.txt",
        );
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, b"fine\n\xff\xfe\n").unwrap();
        fails_with(
            &run(&["classify", m, "--file", bad.to_str().unwrap()]),
            "line 2 is not valid UTF-8",
        );
    }

    /// Every text of the book's SMS Spam Collection (`$EMBER_DATA/sms_spam_collection.tsv`,
    /// `label<TAB>text`) classifies without error through `--file`, one JSON line per text,
    /// probabilities summing to 1. Skips loudly without `EMBER_DATA`.
    #[test]
    fn every_sms_text_classifies() {
        let Some(data) = std::env::var_os("EMBER_DATA") else {
            eprintln!("SKIPPED every_sms_text_classifies: EMBER_DATA is not set");
            return;
        };
        let tsv =
            std::fs::read_to_string(Path::new(&data).join("sms_spam_collection.tsv")).unwrap();
        let texts: Vec<&str> = tsv
            .lines()
            .filter_map(|l| l.split_once('\t').map(|(_, t)| t))
            .collect();
        assert_eq!(texts.len(), 5574);
        let tmp = tempdir("sms");
        let dir = tmp.path();
        let (clf_path, _) = files(dir);
        let input = dir.join("sms.txt");
        std::fs::write(&input, texts.join("\n")).unwrap();
        let out = run(&[
            "classify",
            clf_path.to_str().unwrap(),
            "--file",
            input.to_str().unwrap(),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8(out.stdout).unwrap();
        let want_lines = texts.iter().filter(|t| !t.trim().is_empty()).count();
        assert_eq!(s.lines().count(), want_lines);
        for l in s.lines() {
            let j: serde_json::Value = serde_json::from_str(l).unwrap();
            let p = &j["probabilities"];
            let total = p["spam"].as_f64().unwrap() + p["not spam"].as_f64().unwrap();
            assert!((total - 1.0).abs() < 1e-5, "{l}");
            assert!(j["tokens"].as_u64().unwrap() <= 16);
        }
    }

    #[test]
    fn inspect_shows_the_task() {
        let tmp = tempdir("inspect");
        let dir = tmp.path();
        let (clf_path, _) = files(dir);
        let m = clf_path.to_str().unwrap();
        let j = ok_json(&run(&["inspect", m, "--json"]));
        let meta = &j["metadata"];
        assert_eq!(meta["task.kind"].as_str().unwrap(), "\"classifier\"");
        assert!(meta["task.labels"].as_str().unwrap().contains("\"spam\""));
        assert_eq!(meta["task.readout"].as_str().unwrap(), "\"last\"");
        assert_eq!(meta["task.length"].as_str().unwrap(), "16");
        assert_eq!(meta["task.pad_id"].as_str().unwrap(), "50256");
        let out = run(&["inspect", m]);
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(
            s.contains(
                "classifier: 2 labels [\"not spam\", \"spam\"], readout last, length 16, pad id 50256"
            ),
            "{s}"
        );
    }
}
