//! `ember serve` over loopback HTTP: a tiny random GPT-2 (with GPT-2's tokenizer) served on a
//! free port, spoken to with a plain HTTP/1.1 client written here. Non-streaming and streaming
//! answers, greedy answers identical to `ember generate`, stop strings, reproducible seeds,
//! logprobs, the 400/401/404/413/429 errors, a disconnected client's slot freed (per
//! /metrics), a bounded load test (32 clients × 4 requests, every one answered correctly,
//! no slot leaked), and `json_object` / `json_schema` answers that parse and validate.

use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::DType;
use emberlm_formats::tokenizer::Tokenizer;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const API_KEY: &str = "test-key";

/// The model file, written once per test binary.
fn model() -> &'static Path {
    static PATH: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &PATH
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("tiny.ember");
            // dim 256 with GPT-2's vocabulary: a decode step reads ~55 MB, a few ms, so a long
            // answer keeps its slot busy for seconds (the 429 and disconnect tests need that).
            let cfg = GptConfig {
                vocab_size: 50257,
                context_length: 1024,
                dim: 256,
                n_layers: 2,
                n_heads: 4,
                qkv_bias: true,
                tied_head: true,
            };
            emberlm_runtime::random::write_random_model(
                &path,
                &cfg,
                DType::F32,
                21,
                Some(Tokenizer::gpt2()),
            )
            .unwrap();
            (dir, path)
        })
        .1
}

/// A running server, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .arg("serve")
        .arg(model())
        .args(["--port", "0", "--threads", "2", "--api-key", API_KEY])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Server { child, addr }
}

/// A response: status, headers (lower-case names), body.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of an SSE body.
    fn events(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

fn raw(addr: &str, bytes: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    parse_response(&out)
}

fn parse_response(out: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_string(),
    }
}

fn request(addr: &str, method: &str, path: &str, key: Option<&str>, body: &str) -> Vec<u8> {
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn post(addr: &str, path: &str, body: &Value) -> Resp {
    raw(
        addr,
        &request(addr, "POST", path, Some(API_KEY), &body.to_string()),
    )
}

fn get(addr: &str, path: &str) -> Resp {
    raw(addr, &request(addr, "GET", path, Some(API_KEY), ""))
}

/// A gauge or counter of /metrics.
fn metric(addr: &str, name: &str) -> f64 {
    let m = get(addr, "/metrics");
    m.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {}", m.body))
}

/// Waits until /metrics shows no busy slot and an empty queue (a leaked slot fails).
fn wait_idle(addr: &str) {
    let t = Instant::now();
    while metric(addr, "ember_slots_busy") != 0.0 || metric(addr, "ember_queue_depth") != 0.0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "slots still busy: {}",
            get(addr, "/metrics").body
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ember generate --json`'s greedy text.
fn generate(prompt: &str, max_tokens: usize) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .arg("generate")
        .arg(model())
        .args(["--prompt", prompt, "--threads", "2", "--json"])
        .args(["--max-tokens", &max_tokens.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["text"].as_str().unwrap().to_string()
}

#[test]
fn endpoints_answer_and_greedy_text_is_ember_generates() {
    let s = start(&["--parallel", "3"]);
    let a = s.addr.as_str();
    assert_eq!(get(a, "/health").json()["status"], "ok");
    let models = get(a, "/v1/models").json();
    assert_eq!(models["data"][0]["id"], "tiny");
    assert!(
        get(a, "/metrics")
            .body
            .contains("ember_time_to_first_token_seconds_count")
    );
    assert_eq!(get(a, "/nope").status, 404);
    assert_eq!(get(a, "/v1/completions").status, 405);

    let prompt = "Every effort moves you";
    let want = generate(prompt, 12);
    let r = post(
        a,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": prompt, "max_tokens": 12, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want.as_str());
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let n_prompt = Tokenizer::gpt2()
        .encode_to_vec(prompt, emberlm_formats::tokenizer::SpecialTokens::Allow)
        .len();
    assert_eq!(v["usage"]["prompt_tokens"], n_prompt);

    // Streaming: the same text in pieces, then [DONE].
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "stream": true,
                "stream_options": {"include_usage": true}}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut text = String::new();
    let mut finish = Value::Null;
    let mut usage = Value::Null;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        if let Some(c) = v["choices"].get(0) {
            text.push_str(c["text"].as_str().unwrap_or(""));
            if !c["finish_reason"].is_null() {
                finish = c["finish_reason"].clone();
            }
        }
        if !v["usage"].is_null() {
            usage = v["usage"].clone();
        }
    }
    assert_eq!(text, want);
    assert_eq!(finish, "length");
    assert_eq!(usage["completion_tokens"], 12);

    // Chat, streaming and not (this model has no template: `role: content` lines).
    let chat = json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 6,
                      "temperature": 0});
    let r = post(a, "/v1/chat/completions", &chat);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(answer, generate("user: Hello\nassistant:", 6));
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let r = post(a, "/v1/chat/completions", &streamed);
    let mut text = String::new();
    for e in r.events().iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert_eq!(text, answer);
    assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));
    wait_idle(a);
}

#[test]
fn stop_strings_seeds_and_logprobs() {
    let s = start(&[]);
    let a = s.addr.as_str();
    let prompt = "The quick brown fox";
    let full = generate(prompt, 16);
    // A stop string from the middle of the greedy answer: the answer ends just before it.
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 8, "answer too short to cut: {full:?}");
    let stop: String = chars[5..8].iter().collect();
    let at = full.find(&stop).unwrap();
    for stream in [false, true] {
        let r = post(
            a,
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 16, "temperature": 0, "stop": [stop],
                    "stream": stream}),
        );
        let (text, finish) = if stream {
            let mut t = String::new();
            let mut f = Value::Null;
            for e in r.events().iter().filter(|e| *e != "[DONE]") {
                let v: Value = serde_json::from_str(e).unwrap();
                t.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
                if !v["choices"][0]["finish_reason"].is_null() {
                    f = v["choices"][0]["finish_reason"].clone();
                }
            }
            (t, f)
        } else {
            let v = r.json();
            (
                v["choices"][0]["text"].as_str().unwrap().to_string(),
                v["choices"][0]["finish_reason"].clone(),
            )
        };
        assert_eq!(text, full[..at], "stream={stream}");
        assert_eq!(finish, "stop", "stream={stream}");
    }
    // Seeds: the same seed gives the same sampled text; the answer is not the greedy one.
    let sampled = |seed: u64| {
        post(
            a,
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 16, "temperature": 1.0, "seed": seed}),
        )
        .json()["choices"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (x, y, z) = (sampled(7), sampled(7), sampled(8));
    assert_eq!(x, y);
    assert!(
        x != z || x != full,
        "seeds 7 and 8 and greedy all agree: {x:?}"
    );
    // Logprobs: chosen token's logprob ≤ 0 and it is the top alternative under greedy.
    let r = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
                "temperature": 0, "logprobs": true, "top_logprobs": 2}),
    );
    let v = r.json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 3);
    for c in content {
        let lp = c["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0);
        let top = c["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-5);
    }
    wait_idle(a);
}

#[test]
fn errors_are_openai_shaped() {
    let s = start(&[]);
    let a = s.addr.as_str();
    let check = |r: Resp, status: u16, param: Option<&str>| {
        assert_eq!(r.status, status, "{}", r.body);
        let v = r.json();
        assert!(v["error"]["message"].is_string(), "{}", r.body);
        assert_eq!(v["error"]["param"].as_str(), param, "{}", r.body);
    };
    let bad = |body: &str| {
        raw(
            a,
            &request(a, "POST", "/v1/completions", Some(API_KEY), body),
        )
    };
    check(bad("{not json"), 400, None);
    check(
        bad(r#"{"prompt": "x", "temperature": 9}"#),
        400,
        Some("temperature"),
    );
    check(bad(r#"{"prompt": "x", "n": 2}"#), 400, Some("n"));
    check(
        bad(r#"{"prompt": "x", "max_tokens": "many"}"#),
        400,
        Some("max_tokens"),
    );
    check(bad(r#"{"max_tokens": 3}"#), 400, Some("prompt"));
    check(
        bad(r#"{"prompt": "x", "model": "other"}"#),
        404,
        Some("model"),
    );
    let r = raw(
        a,
        &request(
            a,
            "POST",
            "/v1/chat/completions",
            Some(API_KEY),
            r#"{"messages": [{"role": "user"}]}"#,
        ),
    );
    check(r, 400, Some("messages[0].content"));
    // No key, a wrong key: 401; /health needs none.
    let r = raw(a, &request(a, "GET", "/v1/models", None, ""));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    check(r, 401, None);
    check(
        raw(a, &request(a, "GET", "/v1/models", Some("wrong"), "")),
        401,
        None,
    );
    assert_eq!(raw(a, &request(a, "GET", "/health", None, "")).status, 200);
    // Too large: the declared body, and the head.
    let r = raw(
        a,
        b"POST /v1/completions HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
    );
    check(r, 413, None);
    let mut big = b"GET /health HTTP/1.1\r\nX-Pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20_000));
    big.extend_from_slice(b"\r\n\r\n");
    check(raw(a, &big), 413, None);
    // A prompt longer than the context.
    let long = "word ".repeat(1100);
    check(
        bad(&json!({"prompt": long}).to_string()),
        400,
        Some("prompt"),
    );
    // Garbage bytes: an error, and the server still answers.
    let r = raw(a, b"\x00\x01\x02 garbage\r\n\r\n");
    assert_eq!(r.status, 400);
    assert_eq!(get(a, "/health").status, 200);
}

/// Sends a long streaming request and returns its connection once the first token arrived.
fn hold_slot(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let body = json!({"prompt": "Once upon a time", "max_tokens": 1000, "temperature": 0,
                      "stream": true})
    .to_string();
    s.write_all(&request(
        addr,
        "POST",
        "/v1/completions",
        Some(API_KEY),
        &body,
    ))
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "no stream");
    }
    s
}

#[test]
fn full_queue_is_429_and_a_closed_client_frees_its_slot() {
    let s = start(&["--parallel", "1", "--queue", "1"]);
    let a = s.addr.as_str();
    let running = hold_slot(a);
    assert_eq!(metric(a, "ember_slots_busy"), 1.0);
    // A second request waits in the queue (its connection open), a third is refused.
    let mut waiting = TcpStream::connect(a).unwrap();
    let body = json!({"prompt": "x", "max_tokens": 2}).to_string();
    waiting
        .write_all(&request(a, "POST", "/v1/completions", Some(API_KEY), &body))
        .unwrap();
    let t = Instant::now();
    while metric(a, "ember_queue_depth") != 1.0 {
        assert!(t.elapsed() < Duration::from_secs(10), "never queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 2}),
    );
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    // Closing the running client frees its slot: the queued request then runs and answers.
    let cancelled = metric(a, "ember_requests_cancelled_total");
    drop(running);
    let mut out = Vec::new();
    waiting
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    waiting.read_to_end(&mut out).unwrap();
    let r = parse_response(&out);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["usage"]["completion_tokens"], 2);
    wait_idle(a);
    assert!(metric(a, "ember_requests_cancelled_total") > cancelled);
    // Well before the 1000 tokens the held request asked for.
    assert!(metric(a, "ember_generated_tokens_total") < 900.0);
}

#[test]
fn load_32_clients_x_4_requests() {
    let s = start(&["--parallel", "4", "--queue", "64"]);
    let a = s.addr.clone();
    let prompts = ["Hello", "The meaning of life is", "Rust is", "A B C D E F"];
    let want: Vec<String> = prompts.iter().map(|p| generate(p, 8)).collect();
    let clients: Vec<_> = (0..32)
        .map(|c| {
            let a = a.clone();
            let want = want.clone();
            std::thread::spawn(move || {
                for r in 0..4 {
                    let i = (c + r) % prompts.len();
                    let resp = post(
                        &a,
                        "/v1/completions",
                        &json!({"prompt": prompts[i], "max_tokens": 8, "temperature": 0,
                                "stream": r % 2 == 1}),
                    );
                    assert_eq!(resp.status, 200, "{}", resp.body);
                    let text = if r % 2 == 1 {
                        let mut t = String::new();
                        for e in resp.events().iter().filter(|e| *e != "[DONE]") {
                            let v: Value = serde_json::from_str(e).unwrap();
                            t.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
                        }
                        t
                    } else {
                        resp.json()["choices"][0]["text"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    };
                    assert_eq!(text, want[i], "client {c} request {r}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    wait_idle(&a);
    assert_eq!(metric(&a, "ember_requests_total"), 128.0);
    assert_eq!(metric(&a, "ember_requests_rejected_total"), 0.0);
}

#[test]
fn sigterm_drains_running_requests_then_exits() {
    let mut s = start(&[]);
    let a = s.addr.clone();
    let mut conn = TcpStream::connect(&a).unwrap();
    let body = json!({"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0,
                      "stream": true})
    .to_string();
    conn.write_all(&request(
        &a,
        "POST",
        "/v1/completions",
        Some(API_KEY),
        &body,
    ))
    .unwrap();
    // Wait for the first bytes of the answer, then ask the server to stop.
    let mut first = [0u8; 1];
    conn.read_exact(&mut first).unwrap();
    let killed = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut out = first.to_vec();
    conn.read_to_end(&mut out).unwrap();
    let r = parse_response(&out);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.events().last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        r.body
    );
    let finish: Value = serde_json::from_str(&r.events()[r.events().len() - 2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let t = Instant::now();
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn json_object_answers_are_json() {
    let s = start(&[]);
    let a = s.addr.as_str();
    let mut stops = 0;
    for seed in 0..6u64 {
        let r = post(
            a,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "Give me JSON."}],
                    "response_format": {"type": "json_object"}, "max_tokens": 60,
                    "temperature": 1.0, "seed": seed}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        match v["choices"][0]["finish_reason"].as_str().unwrap() {
            // Closed: one JSON object, nothing after it.
            "stop" => {
                stops += 1;
                let parsed: Value = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("seed {seed}: {e}: {text:?}"));
                assert!(parsed.is_object(), "{text:?}");
            }
            // Cut by max_tokens: still a prefix of JSON (serde_json only misses the end).
            _ => {
                let e = serde_json::from_str::<Value>(text).unwrap_err();
                assert!(e.is_eof(), "seed {seed}: {e}: {text:?}");
                assert!(text.trim_start().starts_with('{'), "{text:?}");
            }
        }
    }
    eprintln!("{stops} of 6 answers closed their object within 60 tokens");
    let r = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema": {}}}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["param"],
        "response_format.json_schema.schema"
    );
}

/// Checks `v` against the schema of `json_schema_answers_validate` by hand.
fn check_weather(v: &Value) {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["n", "ok", "unit", "xs"], "{v}");
    assert!(
        ["celsius", "fahrenheit"].contains(&o["unit"].as_str().unwrap()),
        "{v}"
    );
    assert!(o["n"].is_i64() || o["n"].is_u64(), "{v}");
    assert!(o["ok"].is_boolean(), "{v}");
    let xs = o["xs"].as_array().unwrap();
    assert!(xs.len() <= 3, "{v}");
    assert!(
        xs.iter()
            .all(|x| [1, 2, 3].contains(&x.as_i64().unwrap_or(0))),
        "{v}"
    );
}

#[test]
fn json_schema_answers_validate() {
    let s = start(&[]);
    let a = s.addr.as_str();
    let schema = json!({"type": "object", "properties": {
        "unit": {"enum": ["celsius", "fahrenheit"]}, "n": {"type": "integer"},
        "ok": {"type": "boolean"},
        "xs": {"type": "array", "items": {"enum": [1, 2, 3]}, "maxItems": 3}},
        "required": ["unit", "n", "ok", "xs"], "additionalProperties": false});
    let format = json!({"type": "json_schema",
        "json_schema": {"name": "weather", "schema": schema, "strict": true}});
    let mut stops = 0;
    for seed in 0..8u64 {
        let stream = seed % 4 == 3;
        let r = post(
            a,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "The weather?"}],
                    "response_format": format, "max_tokens": 100, "stream": stream,
                    "temperature": 1.0, "seed": seed}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let (text, reason) = if stream {
            let mut text = String::new();
            let mut reason = String::new();
            for e in r.events().iter().filter(|e| *e != "[DONE]") {
                let c: Value = serde_json::from_str(e).unwrap();
                text.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
                if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
                    reason = f.to_string();
                }
            }
            (text, reason)
        } else {
            let v = r.json();
            let m = &v["choices"][0];
            (
                m["message"]["content"].as_str().unwrap().to_string(),
                m["finish_reason"].as_str().unwrap().to_string(),
            )
        };
        if reason == "stop" {
            stops += 1;
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}: {text:?}"));
            check_weather(&v);
        } else {
            assert_eq!(reason, "length", "{text:?}");
            let e = serde_json::from_str::<Value>(&text).unwrap_err();
            assert!(e.is_eof(), "seed {seed}: {e}: {text:?}");
        }
    }
    eprintln!("{stops} of 8 answers closed within 100 tokens");
    assert!(stops >= 4, "only {stops} of 8 answers closed");
    // A schema no finite text satisfies (arrays nested forever): at the depth limit no token
    // can continue, and the answer ends as `length` before max_tokens, with a prefix.
    let endless = json!({"$defs": {"A": {"type": "array", "items": {"$ref": "#/$defs/A"}, "minItems": 1}},
        "$ref": "#/$defs/A"});
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 300, "temperature": 0,
                "response_format": {"type": "json_schema", "json_schema": {"name": "e", "schema": endless}}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert_eq!(text.chars().filter(|&c| c == '[').count(), 64, "{text:?}");
    assert!(
        v["usage"]["completion_tokens"].as_u64().unwrap() < 300,
        "{v}"
    );
    // Outside the subset: refused, naming the keyword and where it is.
    let r = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x",
                    "schema": {"type": "object", "properties": {"x": {"type": "string", "pattern": "a+"}}}}}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let e = &r.json()["error"];
    assert_eq!(e["param"], "response_format.json_schema.schema");
    assert_eq!(
        e["message"],
        "unsupported JSON Schema keyword `pattern` at /properties/x"
    );
}

#[test]
fn the_chat_page_is_served_whole_without_external_urls() {
    let s = start(&[]);
    // No key needed for the page (its API calls carry one).
    let r = raw(&s.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let page = &r.body;
    assert!(page.starts_with("<!doctype html>") && page.trim_end().ends_with("</html>"));
    for needle in [
        "/v1/chat/completions",
        "getReader",
        "AbortController",
        "temperature",
        "tokens/s",
    ] {
        assert!(page.contains(needle), "the page lacks {needle}");
    }
    for external in ["http://", "https://", "//cdn", "<link", "src=\""] {
        assert!(!page.contains(external), "the page refers to {external}");
    }
    let r = raw(&s.addr, b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, 405);
}
