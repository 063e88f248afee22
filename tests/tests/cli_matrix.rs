//! The bad-input matrix of both binaries: every `ember-train` and `ember` command with missing
//! files, directories where files belong, empty and truncated files, files of the wrong kind (a
//! PNG as a model, a model as data, a character device), invalid UTF-8 in text and in flags,
//! numbers out of range and unknown flags. Every case must exit non-zero with exactly ONE line on
//! stderr, `<program>: error: ...`, that names the problem (a case-insensitive needle), no panic,
//! within a time limit.
//!
//! The tables are plain data: one row per case, the command line split on spaces (every path is
//! relative to a scratch directory holding the fixtures listed in [`Fixtures`]), and the needle.
//! Commands still being written get their own clearly marked tables (`FINETUNE_CASES`,
//! `CLASSIFY_CASES`) to extend.

mod hostile_util;

use hostile_util::{
    Scratch, TINY, bin, check_one_line_error, scratch, train_tokenizer, write_random_words,
};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A case that takes longer has hung (the slowest real case, a tiny pretrain, takes ~1 s).
const LIMIT: Duration = Duration::from_secs(60);

/// The tiny-model flags every `pretrain` row starts with (`{T}` in the tables).
fn tiny() -> String {
    let mut v: Vec<&str> = TINY.to_vec();
    v.extend(["--tokenizer", "tok.ember", "--steps", "1"]);
    v.join(" ")
}

/// `ember-train` rows: (command line, needle). `{T}` expands to the tiny-model flags with the
/// fixture tokenizer and one step; `{D}` to `--data text.txt`.
const TRAIN_CASES: &[(&str, &str)] = &[
    // pretrain: data files
    ("pretrain {T} --data nope.txt", "nope.txt: no such file"),
    (
        "pretrain {T} --data dir",
        "dir: is a directory without manifest.json",
    ),
    (
        "pretrain {T} --data empty.txt",
        "empty.txt: the file is empty",
    ),
    (
        "pretrain {T} --data picture.png",
        "picture.png: invalid UTF-8",
    ),
    (
        "pretrain {T} --data model.ember",
        "model.ember: invalid UTF-8",
    ),
    (
        "pretrain {T} --data latin1.txt",
        "invalid UTF-8 at byte offset 3",
    ),
    ("pretrain {T} --data /dev/zero", "is a character device"),
    // pretrain: the tokenizer file
    ("pretrain {D} --tokenizer nope.ember", "nope.ember"),
    ("pretrain {D} --tokenizer dir", "is a directory"),
    ("pretrain {D} --tokenizer empty.txt", "not an .ember file"),
    ("pretrain {D} --tokenizer picture.png", "not an .ember file"),
    ("pretrain {D} --tokenizer text.txt", "not an .ember file"),
    ("pretrain {D} --tokenizer truncated.ember", "truncated"),
    (
        "pretrain {D} --tokenizer /dev/zero",
        "is a character device",
    ),
    // pretrain: numbers out of range
    ("pretrain {D} --tokenizer tok.ember --batch 0", "--batch"),
    (
        "pretrain {D} --tokenizer tok.ember --context 0",
        "context_length = 0",
    ),
    (
        "pretrain {D} --tokenizer tok.ember --context 100000000",
        "context_length",
    ),
    (
        "pretrain {D} --tokenizer tok.ember --dim 16 --heads 3",
        "heads 3",
    ),
    ("pretrain {D} --tokenizer tok.ember --dim 0", "gpt2.dim = 0"),
    (
        "pretrain {D} --tokenizer tok.ember --layers 0",
        "n_layers = 0",
    ),
    (
        "pretrain {D} --tokenizer tok.ember --vocab 10",
        "--vocab 10",
    ),
    ("pretrain {D} --tokenizer tok.ember --lr -1", "--lr"),
    ("pretrain {D} --tokenizer tok.ember --lr nan", "--lr"),
    (
        "pretrain {D} --tokenizer tok.ember --dropout 1.5",
        "--dropout",
    ),
    ("pretrain {D} --tokenizer tok.ember --clip -1", "--clip"),
    (
        "pretrain {D} --tokenizer tok.ember --weight-decay -1",
        "--weight-decay",
    ),
    ("pretrain {D} --tokenizer tok.ember --steps 0", "at least 1"),
    (
        "pretrain {D} --tokenizer tok.ember --epochs 0",
        "at least 1",
    ),
    (
        "pretrain {D} --tokenizer tok.ember --threads 0",
        "--threads",
    ),
    (
        "pretrain {D} --tokenizer tok.ember --grad-accum 0",
        "--grad-accum",
    ),
    ("pretrain {D} --tokenizer tok.ember --stride 0", "--stride"),
    (
        "pretrain {D} --tokenizer tok.ember --eval-batches 0",
        "--eval-batches",
    ),
    (
        "pretrain {D} --tokenizer tok.ember --checkpoint-every 0",
        "--checkpoint-every",
    ),
    ("pretrain {D} --tokenizer tok.ember --seed -1", "--seed"),
    (
        "pretrain {D} --tokenizer tok.ember --steps 99999999999999999999",
        "too large",
    ),
    (
        "pretrain {D} --tokenizer tok.ember --schedule wavy",
        "--schedule",
    ),
    (
        "pretrain {D} --tokenizer tok.ember --init-scheme foo",
        "--init-scheme",
    ),
    (
        "pretrain {D} --tokenizer tok.ember --config 7b",
        "unknown model preset",
    ),
    (
        "pretrain {D} --tokenizer tok.ember --dim 16 --heads 2 --layers 1 --context 1024 --batch 4000000",
        "GiB",
    ),
    // pretrain: output, resume, init
    (
        "pretrain {T} {D} --out existing.txt",
        "is a file, expected a directory",
    ),
    ("pretrain {T} {D} --out run", "already holds a training run"),
    ("pretrain --resume nope", "not a checkpoint"),
    ("pretrain --resume dir", "not a checkpoint"),
    ("pretrain --resume model.ember", "not a checkpoint"),
    (
        "pretrain --resume broken-run",
        "not a valid safetensors file",
    ),
    (
        "pretrain --resume run --layers 2",
        "cannot be changed on --resume",
    ),
    ("pretrain --resume run --init run", "not both"),
    ("pretrain {D} --init nope", "not a checkpoint"),
    ("pretrain {D} --init picture.png", "not a checkpoint"),
    // pretrain: flags
    ("pretrain {T} {D} --bogus", "Unrecognized argument: --bogus"),
    (
        "pretrain {T} {D} --steps",
        "No value provided for option '--steps'",
    ),
    // eval
    ("eval nope --data text.txt", "not a checkpoint"),
    ("eval dir --data text.txt", "not a checkpoint"),
    ("eval model.ember --data text.txt", "not a checkpoint"),
    ("eval picture.png --data text.txt", "not a checkpoint"),
    (
        "eval broken-run --data text.txt",
        "not a valid safetensors file",
    ),
    ("eval run --data nope.txt", "no such file"),
    ("eval run --data dir", "is a directory"),
    ("eval run --data empty.txt", "the file is empty"),
    ("eval run --data latin1.txt", "invalid UTF-8"),
    ("eval run --data model.ember", "invalid UTF-8"),
    ("eval run --data /dev/zero", "is a character device"),
    ("eval run --data text.txt --batch 0", "--batch"),
    ("eval run --data text.txt --context 0", "--context 0"),
    (
        "eval run --data text.txt --context 100000",
        "the model's context length",
    ),
    ("eval run --data text.txt --threads 0", "--threads"),
    ("eval run", "--data"),
    ("eval", "checkpoint"),
    ("eval run --data text.txt --bogus", "Unrecognized argument"),
    // tokenizer
    (
        "tokenizer --data nope.txt --vocab-size 300 --out t.ember",
        "no such file",
    ),
    (
        "tokenizer --data dir --vocab-size 300 --out t.ember",
        "is a directory",
    ),
    (
        "tokenizer --data empty.txt --vocab-size 300 --out t.ember",
        "empty",
    ),
    (
        "tokenizer --data picture.png --vocab-size 300 --out t.ember",
        "invalid UTF-8",
    ),
    (
        "tokenizer --data /dev/zero --vocab-size 300 --out t.ember",
        "character device",
    ),
    (
        "tokenizer --data text.txt --vocab-size 0 --out t.ember",
        "--vocab-size 0",
    ),
    (
        "tokenizer --data text.txt --vocab-size 256 --out t.ember",
        "257",
    ),
    (
        "tokenizer --data text.txt --vocab-size 99999999999 --out t.ember",
        "--vocab-size",
    ),
    (
        "tokenizer --data text.txt --vocab-size 300 --out dir",
        "directory",
    ),
    (
        "tokenizer --data text.txt --vocab-size 300 --out nodir/t.ember",
        "no such file",
    ),
    ("tokenizer --vocab-size 300 --out t.ember", "--data"),
    ("tokenizer --data text.txt --vocab-size 300", "--out"),
    (
        "tokenizer --data text.txt --vocab-size x --out t.ember",
        "--vocab-size",
    ),
    // export
    ("export nope --dtype f32 --out x.ember", "not a checkpoint"),
    ("export dir --dtype f32 --out x.ember", "not a checkpoint"),
    (
        "export picture.png --dtype f32 --out x.ember",
        "not a checkpoint",
    ),
    (
        "export model.ember --dtype f32 --out x.ember",
        "not a checkpoint",
    ),
    (
        "export broken-run --dtype f32 --out x.ember",
        "not a valid safetensors file",
    ),
    ("export run --dtype f8 --out x.ember", "unknown dtype"),
    ("export run --dtype f32 --out dir", "directory"),
    ("export run --dtype f32 --out nodir/x.ember", "no such file"),
    ("export run --dtype f32", "--out"),
    ("export run --out x.ember", "--dtype"),
    // export of a Hugging Face directory (copies of the tiny Qwen3 fixture, each damaged once)
    (
        "export hf-garbage-config --dtype f16 --out x.ember",
        "config.json",
    ),
    (
        "export hf-unknown-type --dtype f16 --out x.ember",
        "\"mixtral\" is not supported",
    ),
    ("export hf-moe --dtype f16 --out x.ember", "num_experts"),
    ("export hf-yarn --dtype f16 --out x.ember", "rope_type"),
    (
        "export hf-escaping-index --dtype f16 --out x.ember",
        "not a file name inside",
    ),
    (
        "export hf-missing-shard --dtype f16 --out x.ember",
        "no such file",
    ),
    (
        "export hf-truncated --dtype f16 --out x.ember",
        "model.safetensors",
    ),
    (
        "export hf-bad-template --dtype f16 --out x.ember",
        "chat_template",
    ),
    (
        "export hf-wrong-shape --dtype f16 --out x.ember",
        "config.json implies",
    ),
    // import
    ("import --from nope --out imp", "no such file"),
    ("import --from dir --out imp", "model.safetensors"),
    (
        "import --from empty.txt --out imp",
        "not a valid safetensors file",
    ),
    (
        "import --from picture.png --out imp",
        "not a valid safetensors file",
    ),
    (
        "import --from model.ember --out imp",
        "not a valid safetensors file",
    ),
    (
        "import --from text.txt --out imp",
        "not a valid safetensors file",
    ),
    (
        "import --from truncated.safetensors --out imp",
        "not a valid safetensors file",
    ),
    (
        "import --from /dev/zero --out imp",
        "not a valid safetensors file",
    ),
    ("import --from model.safetensors --out imp", "heads"),
    (
        "import --from model.safetensors --out run --heads 2",
        "exists and is not a checkpoint",
    ),
    ("import --out imp", "--from"),
    // export-safetensors
    ("export-safetensors nope --out es", "not a checkpoint"),
    ("export-safetensors dir --out es", "not a checkpoint"),
    (
        "export-safetensors model.ember --out es",
        "not a checkpoint",
    ),
    (
        "export-safetensors broken-run --out es",
        "not a valid safetensors file",
    ),
    (
        "export-safetensors run --out es --layout weird",
        "unknown layout",
    ),
    ("export-safetensors run --out existing.txt", "existing.txt"),
    ("export-safetensors run", "--out"),
    // the program
    ("frobnicate", "Unrecognized argument: frobnicate"),
    ("", "subcommands"),
];

/// `ember-train finetune` rows, same format (`rows.tsv`: ten labelled rows, two labels).
const FINETUNE_CASES: &[(&str, &str)] = &[
    (
        "finetune classify --init run --data /dev/zero --out ft",
        "character device",
    ),
    (
        "finetune classify --init run --data rows.tsv --max-length 100000 --out ft",
        "--max-length 100000",
    ),
    (
        "finetune instruct --init run --data /dev/zero --out fi",
        "character device",
    ),
    (
        "finetune instruct --init run --data nope.json --out fi",
        "nope.json",
    ),
    (
        "finetune instruct --init run --data dir --out fi",
        "is a directory",
    ),
    (
        "finetune instruct --init run --data empty.txt --out fi",
        "empty.txt",
    ),
    (
        "finetune instruct --init run --data text.txt --out fi",
        "text.txt",
    ),
    (
        "finetune instruct --init run --data picture.png --out fi",
        "picture.png",
    ),
    (
        "finetune instruct --init nope --data text.txt --out fi",
        "not a checkpoint",
    ),
    (
        "finetune instruct --init run --data text.txt --out fi --batch 0",
        "--batch",
    ),
    (
        "finetune instruct --init run --data text.txt --out fi --trainable weird",
        "--trainable",
    ),
    (
        "finetune instruct --init run --data text.txt --out fi --lora-rank 0",
        "--lora-rank",
    ),
    (
        "finetune instruct --init run --data text.txt --out fi --max-length 100000",
        "--max-length",
    ),
    ("finetune instruct --data text.txt --out fi", "--init"),
    ("finetune", "subcommand"),
    ("finetune frobnicate", "Unrecognized argument"),
    (
        "finetune classify --init run --data nope.tsv --out ft",
        "nope.tsv",
    ),
    (
        "finetune classify --init run --data dir --out ft",
        "is a directory",
    ),
    (
        "finetune classify --init run --data empty.txt --out ft",
        "no labelled rows",
    ),
    (
        "finetune classify --init run --data picture.png --out ft",
        "not valid UTF-8",
    ),
    (
        "finetune classify --init run --data latin1.txt --out ft",
        "not valid UTF-8",
    ),
    (
        "finetune classify --init run --data text.txt --out ft",
        "no labelled rows",
    ),
    (
        "finetune classify --init nope --data rows.tsv --out ft",
        "not a checkpoint",
    ),
    (
        "finetune classify --init model.ember --data rows.tsv --out ft",
        "not a checkpoint",
    ),
    (
        "finetune classify --init broken-run --data rows.tsv --out ft",
        "not a valid safetensors",
    ),
    (
        "finetune classify --init run --data rows.tsv --out ft --batch 0",
        "--batch",
    ),
    (
        "finetune classify --init run --data rows.tsv --out ft --epochs 0",
        "--epochs",
    ),
    (
        "finetune classify --init run --data rows.tsv --out ft --max-length 0",
        "--max-length",
    ),
    (
        "finetune classify --init run --data rows.tsv --out ft --lr -1",
        "--lr",
    ),
    (
        "finetune classify --init run --data rows.tsv --out ft --readout weird",
        "--readout",
    ),
    (
        "finetune classify --init run --data rows.tsv --out ft --trainable weird",
        "--trainable",
    ),
    (
        "finetune classify --init run --data rows.tsv --out ft --lora-rank 0",
        "--lora-rank",
    ),
    (
        "finetune classify --init run --data rows.tsv --out ft --dtype f8",
        "unknown dtype",
    ),
    (
        "finetune classify --init run --data rows.tsv --out existing.txt",
        "is a file",
    ),
    ("finetune classify --data rows.tsv --out ft", "--init"),
    ("finetune classify --init run --out ft", "--data"),
    (
        "finetune classify --init run --data rows.tsv --out ft --bogus",
        "Unrecognized argument",
    ),
];

/// Model-file problems every `ember` command that opens a model must report: (path, needle).
const BAD_MODELS: &[(&str, &str)] = &[
    ("nope.ember", "No such file"),
    ("dir", "is a directory"),
    ("empty.txt", "not an .ember file"),
    ("picture.png", "not an .ember file"),
    ("text.txt", "not an .ember file"),
    ("model.safetensors", "not an .ember file"),
    ("truncated.ember", "truncated"),
    (
        "tok.ember",
        "holds a tokenizer (from `ember-train tokenizer`), not a model",
    ),
    ("/dev/zero", "not an .ember file"),
];

/// `ember` commands that open a model, with the arguments after the model path.
const EMBER_MODEL_COMMANDS: &[(&str, &str)] = &[
    ("generate", "--tokens 1"),
    ("chat", ""),
    ("score", "--tokens 1,2"),
    ("perplexity", "--tokens 1,2 --stride 1"),
    ("inspect", ""),
    ("bench", ""),
    ("classify", "--text hi"),
    ("tokenize", "--text hi"),
    ("detokenize", "--ids 1"),
];

/// Further `ember` rows: (command line, needle, exit code: 2 for usage errors, 1 for failures).
/// `model.ember`: a tiny model with a tokenizer and context 16; standard input is empty.
const EMBER_CASES: &[(&str, &str, i32)] = &[
    (
        "generate model.ember --prompt the --temperature -1",
        "--temperature",
        2,
    ),
    (
        "generate model.ember --prompt the --temperature nan",
        "--temperature",
        2,
    ),
    ("generate model.ember --prompt the --top-k 0", "--top-k", 2),
    (
        "generate model.ember --prompt the --top-k 301",
        "--top-k",
        2,
    ),
    ("generate model.ember --prompt the --top-p 0", "--top-p", 2),
    (
        "generate model.ember --prompt the --top-p nan",
        "--top-p",
        2,
    ),
    (
        "generate model.ember --prompt the --repetition-penalty 0",
        "--repetition-penalty",
        2,
    ),
    (
        "generate model.ember --prompt the --context 0",
        "--context",
        2,
    ),
    (
        "generate model.ember --prompt the --context 17",
        "--context",
        2,
    ),
    (
        "generate model.ember --prompt the --max-tokens 100 --no-slide",
        "context is full",
        1,
    ),
    (
        "generate model.ember --prompt the --max-tokens -1",
        "--max-tokens",
        2,
    ),
    ("generate model.ember --prompt the --kv f8", "--kv", 2),
    (
        "generate model.ember --prompt the --tokens 1",
        "not several",
        2,
    ),
    ("generate model.ember --tokens 300", "token id 300", 1),
    ("generate model.ember --seed -1 --tokens 1", "--seed", 2),
    ("generate model.ember", "--tokens", 2),
    (
        "generate model.ember --tokens 1 --bogus",
        "Unrecognized argument",
        2,
    ),
    ("chat model.ember --temperature -1", "--temperature", 2),
    ("chat model.ember --top-k 0", "--top-k", 2),
    ("chat model.ember --bogus", "Unrecognized argument", 2),
    ("score model.ember --tokens 1,300", "token id 300", 1),
    ("perplexity model.ember", "--text", 2),
    (
        "perplexity model.ember --tokens 1,2,3",
        "needs at least 32 (two windows)",
        1,
    ),
    (
        "perplexity model.ember --file text.txt --stride 0",
        "--stride must be in 1..=16",
        2,
    ),
    (
        "perplexity model.ember --file empty.txt",
        "--file empty.txt: the text is empty",
        1,
    ),
    (
        "perplexity model.ember --file text.txt --kl-base nope.ember",
        "nope.ember",
        1,
    ),
    (
        "perplexity model.ember --file text.txt --kl-base tok.ember",
        "holds a tokenizer",
        1,
    ),
    ("score model.ember --tokens 300,1", "token id 300", 1),
    ("score model.ember --tokens 1", "at least 2 tokens", 1),
    ("score model.ember", "--text", 2),
    (
        "score model.ember --text the --tokens 1,2",
        "not several",
        2,
    ),
    ("inspect", "model", 2),
    ("inspect model.ember --bogus", "Unrecognized argument", 2),
    (
        "bench model.ember --gen-tokens 100",
        "exceeds the model's context",
        2,
    ),
    ("bench --random 7b", "unknown model preset", 2),
    (
        "bench model.ember --prompt-tokens 1 --gen-tokens 1 --kv f8",
        "--kv",
        2,
    ),
    ("tokenize model.ember", "--text", 2),
    ("detokenize model.ember --ids 300", "token id 300", 1),
    ("detokenize model.ember --ids -1", "not a token id", 2),
    ("detokenize model.ember --ids", "No value provided", 2),
    ("detokenize --ids 99999999", "99999999", 1),
    ("frobnicate", "Unrecognized argument", 2),
    ("", "subcommands", 2),
    (
        "generate model.ember --tokens 1 --threads 0",
        "--threads 0: give at least 1",
        2,
    ),
    (
        "score model.ember --tokens 1,2 --threads 0",
        "--threads 0: give at least 1",
        2,
    ),
    (
        "chat model.ember --threads 0",
        "--threads 0: give at least 1",
        2,
    ),
    (
        "classify classifier.ember --text hi --threads 0",
        "--threads 0: give at least 1",
        2,
    ),
    (
        "bench model.ember --threads 0",
        "--threads 0: give at least 1",
        2,
    ),
    ("bench", "give a model file, or --random SIZE", 2),
    ("bench --random 7b", "124m, 355m, 774m, 1558m", 2),
    (
        "generate model.ember --tokens 1 --bogus",
        "(see `ember generate --help`)",
        2,
    ),
    (
        "generate model.ember --tokens 1 --max-token 5",
        "did you mean `--max-tokens`?",
        2,
    ),
    ("chat model.ember --sytem hi", "did you mean `--system`?", 2),
    ("generat model.ember", "did you mean `generate`?", 2),
    ("frobnicate", "(see `ember --help`)", 2),
    (
        "generate model.ember --prompt the --slide --no-slide",
        "give --slide or --no-slide, not both",
        2,
    ),
    (
        "generate model.ember --prompt the --prompt-file text.txt",
        "not several",
        2,
    ),
    (
        "generate model.ember --prompt-file nope.txt",
        "nope.txt: No such file",
        1,
    ),
    (
        "generate model.ember --prompt-file dir",
        "dir: is a directory",
        1,
    ),
    (
        "generate model.ember --prompt-file latin1.txt",
        "--prompt-file latin1.txt: not valid UTF-8 (at byte offset 3)",
        1,
    ),
    (
        "generate model.ember --prompt-file empty.txt",
        "--prompt-file empty.txt: the text is empty",
        1,
    ),
    (
        "generate model.ember --prompt -",
        "--prompt standard input: the text is empty",
        1,
    ),
    (
        "generate model.ember --tokens 1 --stop",
        "No value provided",
        2,
    ),
    (
        "score model.ember --file nope.txt",
        "nope.txt: No such file",
        1,
    ),
    ("score model.ember --file dir", "dir: is a directory", 1),
    (
        "score model.ember --file empty.txt",
        "--file empty.txt: the text is empty",
        1,
    ),
    ("score model.ember --file latin1.txt", "not valid UTF-8", 1),
    (
        "score model.ember --file -",
        "--file standard input: the text is empty",
        1,
    ),
    (
        "score model.ember --file text.txt --text the",
        "not several",
        2,
    ),
    (
        "score model.ember --file text.txt --stride 0",
        "--stride must be in 1..=15",
        2,
    ),
    (
        "score model.ember --file text.txt --stride 16",
        "--stride must be in 1..=15",
        2,
    ),
    (
        "score model.ember --file text.txt --context 99",
        "--context",
        2,
    ),
    ("chat model.ember --system", "No value provided", 2),
    (
        "chat model.ember --max-tokens 0",
        "--max-tokens must be at least 1",
        2,
    ),
    ("chat model.ember --top-p 0", "--top-p", 2),
    (
        "chat model.ember --repetition-penalty 0",
        "--repetition-penalty",
        2,
    ),
    (
        "chat classifier.ember",
        "this model is a classifier: use `ember classify`",
        1,
    ),
    ("inspect nope.ember --json", "No such file", 1),
];

/// `ember classify` rows (`classifier.ember`: a tiny classifier fine-tuned from `run`).
/// FOR ITS AUTHOR: extend with classifier-specific rows.
const CLASSIFY_CASES: &[(&str, &str)] = &[
    ("classify nope.ember --text hi", "No such file"),
    ("classify dir --text hi", "is a directory"),
    ("classify picture.png --text hi", "not an .ember file"),
    ("classify truncated.ember --text hi", "truncated"),
    ("classify model.ember --text hi", "not a classifier"),
    (
        "classify classifier.ember --text hi --tokens 1",
        "exactly one",
    ),
    ("classify classifier.ember", "exactly one"),
    ("classify classifier.ember --text", "No value provided"),
    ("classify classifier.ember --tokens 99999", "token id 99999"),
    ("classify classifier.ember --file nope.txt", "nope.txt"),
    ("classify classifier.ember --file dir", "directory"),
    (
        "classify classifier.ember --file latin1.txt",
        "not valid UTF-8",
    ),
    (
        "classify classifier.ember --file /dev/zero",
        "longer than 16 MiB",
    ),
    (
        "classify classifier.ember --text hi --bogus",
        "Unrecognized argument",
    ),
];

/// The fixtures, made once in a scratch directory by the real binaries.
struct Fixtures {
    dir: Scratch,
}

impl Fixtures {
    fn new() -> Fixtures {
        let dir = scratch("matrix");
        write_random_words(&dir.join("text.txt"), 200, 11);
        train_tokenizer(&dir.join("text.txt"), &dir.join("tok.ember"));
        let ok = |o: Output| {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        };
        let mut args: Vec<&str> = vec!["pretrain"];
        args.extend(TINY);
        args.extend([
            "--tokenizer",
            "tok.ember",
            "--data",
            "text.txt",
            "--steps",
            "1",
            "--out",
            "run",
        ]);
        ok(train(&dir, &args));
        ok(train(
            &dir,
            &["export", "run", "--dtype", "f32", "--out", "model.ember"],
        ));
        let rows: String = (0..10)
            .map(|i| {
                let label = ["ham", "spam"][i % 2];
                format!("{label}\tthe model reads line {i}\n")
            })
            .collect();
        std::fs::write(dir.join("rows.tsv"), rows).unwrap();
        let mut args = vec![
            "finetune", "classify", "--init", "run", "--data", "rows.tsv",
        ];
        args.extend(["--epochs", "1", "--out", "clf"]);
        ok(train(&dir, &args));
        std::fs::copy(dir.join("clf/model.ember"), dir.join("classifier.ember")).unwrap();
        let w = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
        w("empty.txt", b"");
        w("picture.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10");
        w("latin1.txt", b"caf\xe9 au lait, the model reads\n");
        w("existing.txt", b"not a directory\n");
        std::fs::create_dir_all(dir.join("dir")).unwrap();
        let model = std::fs::read(dir.join("model.ember")).unwrap();
        w("truncated.ember", &model[..model.len() / 2]);
        let step = hostile_util_step(&dir.join("run"));
        let st = std::fs::read(step.join("model.safetensors")).unwrap();
        w("model.safetensors", &st);
        w("truncated.safetensors", &st[..st.len() / 2]);
        // A run whose newest checkpoint lost half its weights.
        let broken = dir.join("broken-run/checkpoints/step-00000001");
        std::fs::create_dir_all(&broken).unwrap();
        for e in std::fs::read_dir(&step).unwrap().flatten() {
            std::fs::copy(e.path(), broken.join(e.file_name())).unwrap();
        }
        std::fs::write(broken.join("model.safetensors"), &st[..st.len() / 2]).unwrap();
        std::fs::write(dir.join("broken-run/checkpoints/latest"), "step-00000001\n").unwrap();
        hf_dirs(&dir);
        Fixtures { dir }
    }
}

/// Copies of the tiny Hugging Face Qwen3 (tests/fixtures/families/qwen3), each damaged in one
/// way, for the `export HF_DIR` rows.
fn hf_dirs(dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/families/qwen3");
    let copy = |name: &str| -> PathBuf {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(&src).unwrap().flatten() {
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        d
    };
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    let edit = |name: &str, from: &str, to: &str| {
        assert!(config.contains(from), "{from}");
        std::fs::write(copy(name).join("config.json"), config.replacen(from, to, 1)).unwrap();
    };
    std::fs::write(
        copy("hf-garbage-config").join("config.json"),
        "{\"model_type\": ",
    )
    .unwrap();
    edit("hf-unknown-type", "\"qwen3\"", "\"mixtral\"");
    edit("hf-moe", "\"head_dim\"", "\"num_experts\": 8, \"head_dim\"");
    edit(
        "hf-yarn",
        "\"rope_type\": \"default\"",
        "\"rope_type\": \"yarn\", \"factor\": 4.0",
    );
    edit(
        "hf-wrong-shape",
        "\"intermediate_size\": 80",
        "\"intermediate_size\": 96",
    );
    let index = |name: &str, shard: &str| {
        let d = copy(name);
        std::fs::remove_file(d.join("model.safetensors")).unwrap();
        let text = format!("{{\"weight_map\": {{\"model.embed_tokens.weight\": \"{shard}\"}}}}");
        std::fs::write(d.join("model.safetensors.index.json"), text).unwrap();
    };
    index("hf-escaping-index", "../model.safetensors");
    index("hf-missing-shard", "model-00001-of-00002.safetensors");
    let d = copy("hf-truncated");
    let st = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &st[..st.len() - 64]).unwrap();
    let d = copy("hf-bad-template");
    std::fs::write(
        d.join("tokenizer_config.json"),
        "{\"chat_template\": \"{% for m in messages %}{{ m.content \"}",
    )
    .unwrap();
}

/// The step directory `run/checkpoints/latest` names.
fn hostile_util_step(run: &Path) -> PathBuf {
    let root = run.join("checkpoints");
    let name = std::fs::read_to_string(root.join("latest")).unwrap();
    root.join(name.trim())
}

fn train(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("ember-train"))
        .args(args)
        .current_dir(dir)
        .env("EMBER_CACHE", dir.join("cache"))
        .output()
        .unwrap()
}

/// Runs `prog args` in `dir` (stdin from `stdin`, else empty) and kills it after [`LIMIT`].
fn run_limited(prog: &str, dir: &Path, args: &[OsString], stdin: Option<&Path>) -> Output {
    let mut c = Command::new(bin(prog));
    c.args(args)
        .current_dir(dir)
        .env("EMBER_CACHE", dir.join("cache"))
        .env_remove("EMBER_DATA")
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(match stdin {
            Some(p) => Stdio::from(std::fs::File::open(p).unwrap()),
            None => Stdio::null(),
        });
    let mut child = c.spawn().unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > LIMIT {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.wait_with_output().unwrap()
}

fn words(line: &str) -> Vec<OsString> {
    let t = tiny();
    line.replace("{T}", &t)
        .replace("{D}", "--data text.txt")
        .split_whitespace()
        .map(OsString::from)
        .collect()
}

/// One row: runs it and returns a failure description, if any.
fn check(
    prog: &str,
    dir: &Path,
    args: Vec<OsString>,
    stdin: Option<&Path>,
    needle: &str,
) -> Option<String> {
    let out = run_limited(prog, dir, &args, stdin);
    check_one_line_error(prog, &out, needle).map(|p| format!("{prog} {args:?}: {p}"))
}

#[test]
fn every_command_rejects_bad_input_with_one_clear_line() {
    let t0 = Instant::now();
    let fx = Fixtures::new();
    let dir = &fx.dir;
    let mut failures = Vec::new();
    let mut n = 0;

    for (line, needle) in TRAIN_CASES.iter().chain(FINETUNE_CASES) {
        n += 1;
        failures.extend(check("ember-train", dir, words(line), None, needle));
    }
    for (cmd, rest) in EMBER_MODEL_COMMANDS {
        for (model, needle) in BAD_MODELS {
            // Without a model, tokenize/detokenize use GPT-2's vocabulary: the path is optional
            // there, but a bad one given is still an error. A tokenizer-only file is what they
            // accept besides a model (tests/tests/cli_ember.rs), and `inspect` describes it.
            if *model == "tok.ember" && matches!(*cmd, "tokenize" | "detokenize" | "inspect") {
                continue;
            }
            n += 1;
            let args = words(&format!("{cmd} {model} {rest}"));
            failures.extend(check("ember", dir, args, None, needle));
        }
    }
    for (line, needle, code) in EMBER_CASES {
        n += 1;
        let out = run_limited("ember", dir, &words(line), None);
        match check_one_line_error("ember", &out, needle) {
            Some(p) => failures.push(format!("ember {line}: {p}")),
            None if out.status.code() != Some(*code) => failures.push(format!(
                "ember {line}: exit code {:?}, not {code}",
                out.status.code()
            )),
            None => {}
        }
    }
    // Invalid UTF-8 in text: chat reads it from standard input.
    n += 1;
    failures.extend(check(
        "ember",
        dir,
        words("chat model.ember"),
        Some(&dir.join("latin1.txt")),
        "UTF-8",
    ));
    // Invalid UTF-8 in flags and paths, for both programs.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let bad = || std::ffi::OsStr::from_bytes(b"caf\xe9").to_os_string();
        let rows: Vec<(&str, Vec<OsString>)> = vec![
            (
                "ember-train",
                vec!["pretrain".into(), "--data".into(), bad()],
            ),
            (
                "ember-train",
                vec!["eval".into(), bad(), "--data".into(), "text.txt".into()],
            ),
            (
                "ember-train",
                vec![
                    "export".into(),
                    "run".into(),
                    "--dtype".into(),
                    "f32".into(),
                    "--out".into(),
                    bad(),
                ],
            ),
            (
                "ember-train",
                vec!["pretrain".into(), "--prompt".into(), bad()],
            ),
            ("ember-train", vec![bad()]),
            ("ember", vec!["tokenize".into(), "--text".into(), bad()]),
            (
                "ember",
                vec![
                    "generate".into(),
                    "model.ember".into(),
                    "--prompt".into(),
                    bad(),
                ],
            ),
            (
                "ember",
                vec!["score".into(), "model.ember".into(), "--text".into(), bad()],
            ),
            ("ember", vec!["inspect".into(), bad()]),
            (
                "ember",
                vec![
                    "generate".into(),
                    "model.ember".into(),
                    "--stop".into(),
                    bad(),
                    "--tokens".into(),
                    "1".into(),
                ],
            ),
        ];
        for (prog, args) in rows {
            n += 1;
            failures.extend(check(prog, dir, args, None, "not valid UTF-8"));
        }
    }
    for (line, needle) in CLASSIFY_CASES {
        n += 1;
        failures.extend(check("ember", dir, words(line), None, needle));
    }

    // `--json` failures: one error line on stderr and one JSON object on stdout.
    n += 1;
    let out = run_limited(
        "ember-train",
        dir,
        &words("eval run --data nope.txt --json"),
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    match serde_json::from_str::<serde_json::Value>(stdout.trim()) {
        Ok(j) if j["error"].as_str().is_some_and(|e| e.contains("nope.txt")) => {}
        _ => failures.push(format!(
            "eval --json: stdout is not one error object: {stdout:?}"
        )),
    }
    failures.extend(
        check_one_line_error("ember-train", &out, "nope.txt").map(|p| format!("eval --json: {p}")),
    );
    // The same for `ember --json`, for a failure (1) and a usage error (2).
    for (line, needle, code) in [
        ("score nope.ember --tokens 1,2 --json", "nope.ember", 1),
        ("generate model.ember --json --bogus", "--bogus", 2),
        ("generate model.ember --json --threads 0", "--threads 0", 2),
    ] {
        n += 1;
        let out = run_limited("ember", dir, &words(line), None);
        let stdout = String::from_utf8_lossy(&out.stdout);
        match serde_json::from_str::<serde_json::Value>(stdout.trim()) {
            Ok(j)
                if j["error"].as_str().is_some_and(|e| e.contains(needle))
                    && j["exit_code"] == code
                    && out.status.code() == Some(code) => {}
            _ => failures.push(format!(
                "ember {line}: stdout is not one error object with exit code {code}: {stdout:?}"
            )),
        }
        failures.extend(
            check_one_line_error("ember", &out, needle).map(|p| format!("ember {line}: {p}")),
        );
    }

    eprintln!(
        "cli_matrix: {n} bad-input cases, {} failed, {:.1} s",
        failures.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A tiny random GPT-2 with GPT-2's tokenizer (context 16).
fn write_tiny_model(path: &Path) {
    let cfg = emberlm_formats::config::GptConfig {
        vocab_size: 50257,
        context_length: 16,
        dim: 8,
        n_layers: 1,
        n_heads: 2,
        qkv_bias: true,
        tied_head: true,
    };
    let tok = emberlm_formats::tokenizer::Tokenizer::gpt2();
    emberlm_runtime::random::write_random_model(
        path,
        &cfg,
        emberlm_formats::ember::DType::F32,
        3,
        Some(tok),
    )
    .unwrap();
}

/// A reader that closes the pipe early (`| head -1`) is not an error, and never a panic.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let dir = scratch("pipe");
    let model = dir.join("model.ember");
    write_tiny_model(&model);
    for (prog, args) in [
        ("ember", vec!["detokenize", "--ids", "15496,11,995"]),
        (
            "ember",
            vec!["tokenize", "--text", "Hello, world. Is this-- a test?"],
        ),
        ("ember", vec!["--help"]),
        ("ember", vec!["generate", "--help"]),
        ("ember", vec!["--version"]),
        ("ember", vec!["inspect", "model.ember"]),
        ("ember-train", vec!["--help"]),
        ("ember-train", vec!["pretrain", "--help"]),
    ] {
        let mut child = Command::new(bin(prog))
            .args(&args)
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before anything is written
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked") && out.status.code().is_some(),
            "{prog} {args:?}: {:?} {err}",
            out.status
        );
    }
}

// ---- ember-train: issue 22 (everyday use) ---------------------------------------------------
// Kept apart from the tables above so that their edits and these do not collide.

/// `ember-train` rows of issue 22: (command line, exit code, needle). `notok` is a checkpoint
/// imported without a tokenizer (hf_tiny: vocabulary 97, no vocab.json / merges.txt); `run`'s
/// `checkpoints/best` has no optimizer state.
const TRAIN_ISSUE22_CASES: &[(&str, i32, &str)] = &[
    // A checkpoint without a tokenizer cannot read text.
    ("eval notok {D}", 1, "has no tokenizer"),
    ("pretrain --init notok {D} --steps 1", 1, "has no tokenizer"),
    (
        "finetune classify --init notok --data rows.tsv --out c1",
        1,
        "has no tokenizer",
    ),
    (
        "finetune instruct --init notok --data text.txt --out i1",
        1,
        "has no tokenizer",
    ),
    // The best checkpoint exports and evaluates but does not resume.
    (
        "pretrain --resume run/checkpoints/best",
        1,
        "cannot resume training",
    ),
    // argh's messages: one line, single spaces, the command's help named.
    (
        "export run --out m.ember",
        2,
        "Required options not provided: --dtype (see ember-train export --help)",
    ),
    (
        "finetune classify --nope",
        2,
        "(see ember-train finetune classify --help)",
    ),
    ("--version --json", 2, "Unrecognized argument"),
    // --threads 0 wherever the flag exists.
    (
        "finetune classify --init run --data rows.tsv --out c2 --threads 0",
        2,
        "--threads 0: must be at least 1",
    ),
    (
        "finetune instruct --init run --data text.txt --out i2 --threads 0",
        2,
        "--threads 0: must be at least 1",
    ),
    (
        "eval run {D} --threads 0",
        2,
        "--threads 0: must be at least 1",
    ),
];

#[test]
fn issue_22_train_rows_fail_with_one_clear_line_and_the_right_code() {
    let fx = Fixtures::new();
    let dir: &Path = &fx.dir;
    let hf = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hf_tiny");
    let o = train(
        dir,
        &["import", "--from", hf.to_str().unwrap(), "--out", "notok"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.join("run/checkpoints/best/trainer.json").is_file());
    let mut failures = Vec::new();
    for (line, code, needle) in TRAIN_ISSUE22_CASES {
        let args = words(line);
        let out = run_limited("ember-train", dir, &args, None);
        if let Some(p) = check_one_line_error("ember-train", &out, needle) {
            failures.push(format!("{line}: {p}"));
        } else if out.status.code() != Some(*code) {
            failures.push(format!(
                "{line}: exit code {:?}, want {code}",
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
