//! Kill-safe writes: the real `ember-train` is killed with SIGKILL at seeded random moments while
//! it trains with a checkpoint every step, while it exports, and while it imports into a new or
//! an existing checkpoint directory; after every kill the files on disk are checked:
//! - every `step-*` directory present is complete and loads, and holds exactly the bytes every
//!   other sighting of that step held (training is deterministic, so a step has one content);
//! - `latest` names a complete step directory;
//! - temporary entries start with `.`, so nothing reads them as a step or a model;
//! - the exported `.ember` is absent, the complete previous file or the complete new one, and
//!   parses; so is the imported checkpoint directory (and it loads);
//! - `--resume` continues, and the run that was killed over and over ends bit-for-bit where an
//!   uninterrupted run ends.
//!
//! Tiny models (13 k parameters) keep it fast; fsync of every checkpoint file dominates, so most
//! kills land inside checkpoint writes. `EMBER_KILLS=N` asks for more pretrain kills.

mod hostile_util;

use emberlm_formats::ember::{AlignedBytes, EmberFile};
use emberlm_trainer::checkpoint;
use hostile_util::{KillOnDrop, Rng, TINY, bin, scratch, train_tokenizer, write_random_words};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Steps of every run: long enough that most kills interrupt it, short enough to finish often.
const STEPS: &str = "16";

/// What is checked per step directory: the bytes of the model and optimizer files.
type StepBytes = (Vec<u8>, Vec<u8>);

fn spawn_pretrain(text: &Path, tok: &Path, run: &Path, resume: bool) -> KillOnDrop {
    let mut c = Command::new(bin("ember-train"));
    c.arg("pretrain");
    if resume {
        c.arg("--resume").arg(run);
    } else {
        c.args(TINY)
            .arg("--data")
            .arg(text)
            .arg("--tokenizer")
            .arg(tok)
            .arg("--out")
            .arg(run)
            .args(["--steps", STEPS]);
    }
    c.args(["--checkpoint-every", "1", "--threads", "1", "--json"])
        .env("EMBER_CACHE", run.parent().unwrap().join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(KillOnDrop::new)
        .unwrap()
}

/// Waits for `child` for at most `limit`; `Some(success)` when it exited.
fn wait_for(child: &mut Child, limit: Duration) -> Option<bool> {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s.success());
        }
        if t0.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn stderr_of(child: KillOnDrop) -> String {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether `dir` holds a hidden temporary of process `pid` (`.NAME.tmp-PID`, `.trash-*-PID`,
/// `.emberlm-import-PID.safetensors`): it was killed in the middle of a write.
fn has_temporary(dir: &Path, pid: u32) -> bool {
    let suffix = format!("-{pid}");
    std::fs::read_dir(dir).is_ok_and(|es| {
        es.flatten().any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with('.')
                && n.match_indices(&suffix)
                    .any(|(i, _)| !n[i + suffix.len()..].starts_with(|c: char| c.is_ascii_digit()))
        })
    })
}

/// The hidden entries (temporaries) directly in `dir`.
fn hidden_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// Checks `run/checkpoints` after a kill (see the module doc). Returns whether `latest` exists.
fn check_run(run: &Path, seen: &mut HashMap<String, StepBytes>) -> bool {
    let root = run.join("checkpoints");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return false;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "latest" || name.starts_with('.') {
            continue; // temporaries start with '.', and resolve() refuses such names
        }
        if name == checkpoint::BEST_DIR {
            // The best checkpoint so far (no optimizer state) is replaced atomically too.
            checkpoint::load(&e.path(), false)
                .unwrap_or_else(|err| panic!("{name} is present but does not load: {err}"));
            continue;
        }
        assert!(name.starts_with("step-"), "unexpected entry {name:?}");
        let dir = e.path();
        let l = checkpoint::load(&dir, true)
            .unwrap_or_else(|err| panic!("{name} is present but does not load: {err}"));
        assert_eq!(l.dir, dir);
        let bytes = (
            std::fs::read(dir.join("model.safetensors")).unwrap(),
            std::fs::read(dir.join("optimizer.safetensors")).unwrap(),
        );
        match seen.get(&name) {
            Some(prev) => assert!(
                *prev == bytes,
                "{name} holds different bytes than when it was seen before"
            ),
            None => {
                seen.insert(name, bytes);
            }
        }
    }
    let pointer = root.join("latest");
    if !pointer.exists() {
        return false;
    }
    let target = checkpoint::resolve(&root)
        .unwrap_or_else(|e| panic!("latest does not name a complete checkpoint: {e}"));
    checkpoint::load(&target, true).unwrap();
    true
}

/// The final step directory's bytes of a finished run.
fn final_bytes(run: &Path) -> StepBytes {
    let dir = checkpoint::resolve(run).unwrap();
    assert!(dir.ends_with(format!("step-{:08}", STEPS.parse::<u64>().unwrap())));
    (
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        std::fs::read(dir.join("optimizer.safetensors")).unwrap(),
    )
}

/// Kills `ember-train pretrain` over and over, resuming each time, across several runs.
fn pretrain_kills(dir: &Path, text: &Path, tok: &Path, want: usize, rng: &mut Rng) -> usize {
    // The uninterrupted reference, and how long a run takes (kill moments are spread over it).
    let reference = dir.join("reference");
    let t0 = Instant::now();
    let mut c = spawn_pretrain(text, tok, &reference, false);
    assert_eq!(wait_for(&mut c, Duration::from_secs(120)), Some(true));
    let span = t0.elapsed().as_micros() as u64;
    let want_final = final_bytes(&reference);

    let (mut kills, mut mid_write, mut runs) = (0, 0, 0);
    while kills < want {
        runs += 1;
        let run = dir.join(format!("run-{runs}"));
        let mut seen = HashMap::new();
        let mut attempts = 0;
        loop {
            attempts += 1;
            assert!(attempts < 200, "run {runs} does not finish");
            let resume = check_run(&run, &mut seen);
            let mut child = spawn_pretrain(text, tok, &run, resume);
            // A resumed run has less left to do: kill within the first third of a full run's time.
            let delay = Duration::from_micros(rng.below(span / 3));
            if kills < want {
                match wait_for(&mut child, delay) {
                    None => {
                        child.kill().unwrap(); // SIGKILL on Unix
                        let _ = child.wait();
                        kills += 1;
                        let root = run.join("checkpoints");
                        mid_write += usize::from(has_temporary(&root, child.id()));
                        continue;
                    }
                    Some(true) => {}
                    Some(false) => panic!("{}", stderr_of(child)),
                }
            } else {
                let ok = wait_for(&mut child, Duration::from_secs(120));
                assert_eq!(ok, Some(true), "{}", stderr_of(child));
            }
            break;
        }
        assert!(check_run(&run, &mut seen));
        assert!(
            final_bytes(&run) == want_final,
            "run {runs}, killed and resumed, does not end where the uninterrupted run ends"
        );
    }
    eprintln!(
        "kill_safe: {kills} pretrain kills over {runs} runs ({mid_write} in the middle of a \
         checkpoint write: a temporary was left); every run finished bit-for-bit"
    );
    kills
}

/// Kills `ember-train export` while it replaces an existing `.ember` file.
fn export_kills(dir: &Path, want: usize, rng: &mut Rng) -> usize {
    let ckpt = dir.join("reference");
    let target = dir.join("model.ember");
    let export = |dtype: &str, out: &Path| {
        Command::new(bin("ember-train"))
            .args(["export", "--dtype", dtype, "--out"])
            .arg(out)
            .arg(&ckpt)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map(KillOnDrop::new)
            .unwrap()
    };
    // The old file (f16) and what the export writes (f32): the writer is deterministic.
    let old_path = dir.join("old.ember");
    let new_path = dir.join("new.ember");
    let mut c = export("f16", &old_path);
    assert_eq!(wait_for(&mut c, Duration::from_secs(60)), Some(true));
    let t0 = Instant::now();
    let mut c = export("f32", &new_path);
    assert_eq!(wait_for(&mut c, Duration::from_secs(60)), Some(true));
    let span = t0.elapsed().as_micros() as u64;
    let old = std::fs::read(&old_path).unwrap();
    let new = std::fs::read(&new_path).unwrap();
    assert_ne!(old, new);
    for bytes in [&old, &new] {
        EmberFile::parse(&AlignedBytes::copy_from(bytes)).unwrap();
    }

    let (mut kills, mut finished, mut mid_write) = (0, 0, 0);
    let mut span = span;
    while kills < want {
        // Half the time the target is absent (a first export), else the old complete file.
        let had_old = rng.below(2) == 0;
        if had_old {
            std::fs::write(&target, &old).unwrap();
        } else {
            let _ = std::fs::remove_file(&target);
        }
        let started = Instant::now();
        let mut child = export("f32", &target);
        // Most of an export's time is start-up; the write comes last.
        let delay = span / 4 + rng.below(span * 3 / 4);
        match wait_for(&mut child, Duration::from_micros(delay)) {
            None => {
                child.kill().unwrap();
                let _ = child.wait();
                kills += 1;
                mid_write += usize::from(has_temporary(dir, child.id()));
            }
            Some(true) => {
                finished += 1;
                // Warm runs are faster than the first: aim at this one's length.
                span = span.min(started.elapsed().as_micros() as u64);
            }
            Some(false) => panic!("{}", stderr_of(child)),
        }
        match std::fs::read(&target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                assert!(!had_old, "the old file disappeared");
            }
            Err(e) => panic!("{e}"),
            Ok(b) => {
                assert!(
                    b == new || (had_old && b == old),
                    "model.ember is neither the old nor the new file ({} bytes)",
                    b.len()
                );
                EmberFile::parse(&AlignedBytes::copy_from(&b)).unwrap();
            }
        }
        // Leftovers are temporaries only: hidden names, never `*.ember`.
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            assert!(
                n.starts_with('.') || !n.contains(".ember.") || n.ends_with(".ember"),
                "unexpected file {n:?}"
            );
        }
    }
    // One export that runs to the end sweeps what the killed ones left (their processes are gone).
    let mut child = export("f32", &target);
    assert_eq!(wait_for(&mut child, Duration::from_secs(60)), Some(true));
    assert_eq!(
        hidden_entries(dir),
        Vec::<String>::new(),
        "temporaries left behind"
    );
    eprintln!(
        "kill_safe: {kills} export kills ({mid_write} in the middle of the write; {finished} \
         exports finished before their kill moment)"
    );
    kills
}

/// Kills `ember-train import` (a Hugging Face directory → a checkpoint directory) while it writes
/// a new checkpoint or replaces an older one of a different model.
fn import_kills(dir: &Path, text: &Path, want: usize, rng: &mut Rng) -> usize {
    // A tiny model with GPT-2's vocabulary (import reads GPT-2's tokenizer), exported for
    // transformers.
    let run = dir.join("gpt2-vocab");
    let ok = |c: &mut Command| {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    ok(Command::new(bin("ember-train"))
        .arg("pretrain")
        .args(TINY)
        .arg("--data")
        .arg(text)
        .arg("--out")
        .arg(&run)
        .args(["--steps", "1", "--threads", "1"])
        .env("EMBER_CACHE", dir.join("cache")));
    let hf = dir.join("hf");
    ok(Command::new(bin("ember-train"))
        .arg("export-safetensors")
        .arg(&run)
        .arg("--out")
        .arg(&hf));
    let import = |out: &Path| {
        Command::new(bin("ember-train"))
            .arg("import")
            .arg("--from")
            .arg(&hf)
            .arg("--out")
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map(KillOnDrop::new)
            .unwrap()
    };
    let model_of = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    let t0 = Instant::now();
    let reference = dir.join("imported");
    let mut c = import(&reference);
    assert_eq!(wait_for(&mut c, Duration::from_secs(60)), Some(true));
    let span = t0.elapsed().as_micros() as u64;
    let new = model_of(&reference);
    // The "previous version": the pretraining reference run's last checkpoint, copied.
    let old_src = checkpoint::resolve(&dir.join("reference")).unwrap();
    let old = model_of(&old_src);
    let target = dir.join("import-target");
    let (mut kills, mut finished, mut mid_write) = (0, 0, 0);
    let mut span = span;
    while kills < want {
        let _ = std::fs::remove_dir_all(&target);
        let had_old = rng.below(2) == 0;
        if had_old {
            std::fs::create_dir_all(&target).unwrap();
            for e in std::fs::read_dir(&old_src).unwrap().flatten() {
                std::fs::copy(e.path(), target.join(e.file_name())).unwrap();
            }
        }
        let started = Instant::now();
        let mut child = import(&target);
        // Reading the source and GPT-2's tokenizer comes first; the checkpoint is written last.
        let delay = span / 2 + rng.below(span / 2);
        match wait_for(&mut child, Duration::from_micros(delay)) {
            None => {
                child.kill().unwrap();
                let _ = child.wait();
                kills += 1;
                mid_write += usize::from(has_temporary(dir, child.id()));
            }
            Some(true) => {
                finished += 1;
                span = span.min(started.elapsed().as_micros() as u64);
            }
            Some(false) => panic!("{}", stderr_of(child)),
        }
        if target.exists() {
            let l = checkpoint::load(&target, false)
                .unwrap_or_else(|e| panic!("the import target is incomplete: {e}"));
            let bytes = model_of(&l.dir);
            assert!(
                bytes == new || (had_old && bytes == old),
                "the import target is neither the old nor the new checkpoint"
            );
        } else {
            assert!(!had_old, "the previous checkpoint disappeared");
        }
    }
    // One import that runs to the end sweeps what the killed ones left.
    let mut child = import(&target);
    assert_eq!(wait_for(&mut child, Duration::from_secs(60)), Some(true));
    assert_eq!(
        hidden_entries(dir),
        Vec::<String>::new(),
        "temporaries left behind"
    );
    eprintln!(
        "kill_safe: {kills} import kills ({mid_write} left a temporary; {finished} imports \
         finished before their kill moment)"
    );
    kills
}

#[test]
fn sigkill_during_checkpoints_and_exports_loses_nothing() {
    let t0 = Instant::now();
    let dir = scratch("kill");
    let text = dir.join("text.txt");
    write_random_words(&text, 300, 7);
    let tok = dir.join("tok.ember");
    train_tokenizer(&text, &tok);
    let want: usize = std::env::var("EMBER_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let mut rng = Rng(0x5EED_0008);
    let a = pretrain_kills(&dir, &text, &tok, want, &mut rng);
    let b = export_kills(&dir, 30, &mut rng);
    let c = import_kills(&dir, &text, 20, &mut rng);
    eprintln!(
        "kill_safe: {} SIGKILLs in total, nothing lost, {:.1} s",
        a + b + c,
        t0.elapsed().as_secs_f64()
    );
    assert!(a + b + c >= 50);
}

/// A crash inside the very first checkpoint save leaves `checkpoints/` without `latest` (and a
/// hidden temporary): nothing to resume, so a fresh run in that directory starts over, and its
/// first save sweeps the leftover away.
#[test]
fn a_crash_in_the_first_save_does_not_block_a_fresh_run() {
    let dir = scratch("first-save");
    let text = dir.join("text.txt");
    write_random_words(&text, 100, 3);
    let tok = dir.join("tok.ember");
    train_tokenizer(&text, &tok);
    let run = dir.join("run");
    let stale = run.join("checkpoints").join(".step-00000001.tmp-4000000");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), b"half").unwrap();
    let out = Command::new(bin("ember-train"))
        .arg("pretrain")
        .args(TINY)
        .arg("--data")
        .arg(&text)
        .arg("--tokenizer")
        .arg(&tok)
        .arg("--out")
        .arg(&run)
        .args(["--steps", "2", "--checkpoint-every", "1", "--threads", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stale.exists(), "the stale temporary was not removed");
    checkpoint::load(&run, true).unwrap();
}
