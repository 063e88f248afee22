//! `ember chat` driven through a pseudo-terminal as a person types: several turns on a 64-token
//! model without an error (the oldest turns are dropped, answers stop at the end of the context),
//! `/reset`, `/save`, an empty line that only re-prompts, Ctrl-C in the middle of an answer that
//! returns to the prompt with the conversation kept, and Ctrl-D that exits with code 0.
//!
//! Timeouts are generous (a loaded 2-core machine); nothing asserts a speed.
#![cfg(unix)]

mod hostile_util;

use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::DType;
use emberlm_formats::tokenizer::Tokenizer;
use emberlm_runtime::random::write_random_model;
use expectrl::{ControlCode, Eof, Session, WaitStatus};
use hostile_util::{bin, scratch};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Waiting longer for an expected output means the program hung.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A random GPT-2 with GPT-2's tokenizer and a context of `context` tokens.
fn model(path: &Path, context: usize, dim: usize) {
    let cfg = GptConfig {
        vocab_size: 50257,
        context_length: context,
        dim,
        n_layers: 2,
        n_heads: 2,
        qkv_bias: true,
        tied_head: true,
    };
    write_random_model(path, &cfg, DType::F32, 11, Some(Tokenizer::gpt2())).unwrap();
}

fn spawn(args: &[&str]) -> Session {
    let mut cmd = Command::new(bin("ember"));
    cmd.arg("chat").args(args).env_remove("RUST_BACKTRACE");
    let mut s = Session::spawn(cmd).expect("spawning ember chat in a pseudo-terminal");
    // The terminal echoes what is typed, as a person's does (expectrl turns echo off).
    s.get_process_mut()
        .set_echo(true, Some(TIMEOUT))
        .expect("turning the terminal's echo on");
    s.set_expect_timeout(Some(TIMEOUT));
    s
}

/// Everything up to and including `needle` (panics with what came instead).
fn expect(s: &mut Session, needle: &str) -> String {
    match s.expect(needle) {
        Ok(c) => String::from_utf8_lossy(c.before()).into_owned(),
        Err(e) => panic!("waiting for {needle:?}: {e}"),
    }
}

/// Reads to the end and returns the exit status.
fn finish(mut s: Session) -> (String, WaitStatus) {
    let rest = match s.expect(Eof) {
        // (Eof's match is all the rest.)
        Ok(c) => String::from_utf8_lossy(c.as_bytes()).into_owned(),
        Err(e) => panic!("waiting for the end: {e}"),
    };
    let status = s.get_process().wait().unwrap();
    (rest, status)
}

/// The prompt `> ` at the start of a line (an answer could hold "> " elsewhere).
const PROMPT: &str = "\n> ";

#[test]
fn turns_on_a_small_context_reset_and_ctrl_d() {
    let dir = scratch("chat-pty");
    let path = dir.join("small.ember");
    model(&path, 64, 16);
    let mut s = spawn(&[path.to_str().unwrap()]);
    let mut seen = expect(&mut s, "/reset");
    seen += &expect(&mut s, PROMPT);
    let mut dropped = false;
    for turn in 0..5 {
        s.send_line("What is the capital of France?").unwrap();
        let answer = expect(&mut s, PROMPT);
        assert!(
            !answer.contains("error"),
            "turn {turn}: an error in {answer:?}"
        );
        dropped |= answer.contains("(dropped the oldest turns to fit the context of 64 tokens)");
        seen += &answer;
    }
    assert!(
        dropped,
        "five turns of a 64-token context drop old ones: {seen:?}"
    );
    // An empty line only prompts again.
    s.send_line("").unwrap();
    expect(&mut s, PROMPT);
    s.send_line("/reset").unwrap();
    expect(&mut s, "(the conversation is forgotten)");
    expect(&mut s, PROMPT);
    s.send_line("Hello there").unwrap();
    let answer = expect(&mut s, PROMPT);
    assert!(
        !answer.contains("dropped"),
        "a fresh conversation: {answer:?}"
    );
    let saved = dir.join("talk.txt");
    s.send_line(format!("/save {}", saved.display())).unwrap();
    expect(&mut s, "(saved the conversation to");
    expect(&mut s, PROMPT);
    let transcript = std::fs::read_to_string(&saved).unwrap();
    assert!(transcript.starts_with("> Hello there\n"), "{transcript:?}");
    assert!(
        !transcript.contains("France"),
        "forgotten by /reset: {transcript:?}"
    );
    s.send(ControlCode::EndOfTransmission).unwrap(); // Ctrl-D
    let (rest, status) = finish(s);
    assert!(
        matches!(status, WaitStatus::Exited(_, 0)),
        "{status:?} {rest:?}"
    );
    assert!(rest.contains('\n'), "Ctrl-D leaves a newline: {rest:?}");
}

#[test]
fn ctrl_c_stops_the_answer_and_keeps_the_conversation() {
    let dir = scratch("chat-pty-ctrl-c");
    let path = dir.join("long.ember");
    // A long context, so that an answer lasts long enough to be interrupted.
    model(&path, 4096, 64);
    let p = path.to_str().unwrap();
    let mut s = spawn(&[
        p,
        "--max-tokens",
        "4000",
        "--temperature",
        "1",
        "--seed",
        "3",
    ]);
    expect(&mut s, PROMPT);
    s.send_line("Tell me a long story").unwrap();
    // Some of the answer has come: now interrupt it.
    expect(&mut s, "story");
    s.expect(expectrl::NBytes(8)).unwrap();
    s.send(ControlCode::EndOfText).unwrap(); // Ctrl-C
    let before = expect(&mut s, "(stopped)");
    assert!(!before.contains("error"), "{before:?}");
    expect(&mut s, PROMPT);
    // The next turn works and follows the first one.
    s.send_line("And then?").unwrap();
    expect(&mut s, "then?");
    s.expect(expectrl::NBytes(8)).unwrap();
    s.send(ControlCode::EndOfText).unwrap();
    expect(&mut s, "(stopped)");
    expect(&mut s, PROMPT);
    let saved = dir.join("story.txt");
    s.send_line(format!("/save {}", saved.display())).unwrap();
    expect(&mut s, "(saved the conversation to");
    expect(&mut s, PROMPT);
    let transcript = std::fs::read_to_string(&saved).unwrap();
    let first = transcript.find("> Tell me a long story\n");
    let second = transcript.find("> And then?\n");
    assert!(
        matches!((first, second), (Some(a), Some(b)) if a < b),
        "both turns kept, in order: {transcript:?}"
    );
    // Ctrl-C at the prompt quits with 130.
    s.send(ControlCode::EndOfText).unwrap();
    let (rest, status) = finish(s);
    assert!(
        matches!(status, WaitStatus::Exited(_, 130)),
        "{status:?} {rest:?}"
    );
}
