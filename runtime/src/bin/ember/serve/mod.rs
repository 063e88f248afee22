//! `ember serve`: an OpenAI-compatible HTTP server over the batched decoder
//! ([`emberlm_runtime::Batch`]).
//!
//! Threads: one engine thread owns the `Batch` and runs steps while any slot is busy, admitting
//! queued requests into free slots between steps; one thread per connection parses the
//! request, tokenizes, queues a job and turns the engine's tokens into text (SSE chunks or one
//! JSON answer). A job's receiver gone, or its cancel flag set (the client closed the
//! connection, a stop string matched), frees its slot before the next step.
//!
//! HTTP layer, decided: `std::net` with `httparse` for the request head, one thread per
//! connection (capped), `Connection: close` after each answer. The server's work is one CPU-bound
//! engine and a few dozen connections that mostly wait for tokens; blocking threads express that
//! directly, keep the binary small (tokio + hyper/axum would add ~80 crates to a build that runs
//! on a Pi), and give exact control over what the issue asks for: the 16 KiB head / 1 MiB body
//! limits (413), detecting a closed client between steps (a non-blocking `peek`), and draining
//! on SIGTERM. The parser (`request.rs`) is fuzzed (`fuzz/fuzz_targets/serve_request.rs`).

use super::*;
use emberlm_formats::chat::{ChatTemplate, Message};
use emberlm_runtime::kernels::Kernels;
use emberlm_runtime::{Batch, BatchOptions, Next};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

mod json_mask;
#[cfg(test)]
mod json_mask_tests;
pub(crate) mod request;
use json_mask::{Masker, Schema, State, Vocab};
use request::{ApiError, Head, Params, Prompt};

#[derive(FromArgs, Debug)]
/// Serve the model over HTTP with an OpenAI-compatible API: POST /v1/chat/completions and
/// /v1/completions (streaming as server-sent events, or one JSON answer), GET /v1/models,
/// /health and /metrics (Prometheus), and a chat page at / (open it in a browser). --parallel requests are decoded together in one batch;
/// more wait in a bounded queue (HTTP 429 when full). SIGTERM or Ctrl-C stops accepting, finishes
/// the running requests and exits.
#[argh(subcommand, name = "serve")]
pub(crate) struct ServeArgs {
    /// the model file (.ember, with a tokenizer)
    #[argh(positional)]
    model: PathBuf,
    /// address to bind (default 127.0.0.1: this machine only)
    #[argh(option, default = "String::from(\"127.0.0.1\")")]
    host: String,
    /// port (default 8080; 0 picks a free one, printed at start)
    #[argh(option, default = "8080")]
    port: u16,
    /// requests decoded at once: the batch's slots (default 4)
    #[argh(option, default = "4")]
    parallel: usize,
    /// each slot's context in tokens: prompt + answer (default: the model's, at most 4096)
    #[argh(option)]
    context: Option<usize>,
    /// require `Authorization: Bearer KEY` on every endpoint but /health
    #[argh(option)]
    api_key: Option<String>,
    /// worker threads (default: one per core)
    #[argh(option)]
    threads: Option<usize>,
    /// KV cache element type: auto, f32, f16 or int8 (int8: 56 % of f16's memory per slot, for
    /// long contexts and many slots) (default auto: f32 for an f32 model, f16 for the others)
    #[argh(option, default = "String::from(\"auto\")")]
    kv: String,
    /// requests waiting for a slot at most before HTTP 429 (default 64)
    #[argh(option, default = "64")]
    queue: usize,
}

/// The chat page at `/`: one self-contained file, no external URL (chat.html).
const CHAT_PAGE: &str = include_str!("chat.html");

/// Connections handled at once at most (more get 503).
const MAX_CONNECTIONS: usize = 512;
/// A client has this long to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a waiting connection checks that its client is still there.
const POLL: Duration = Duration::from_millis(20);
/// The default context cap (today's families hold 32k–131k positions per slot).
const DEFAULT_MAX_CONTEXT: usize = 4096;

/// What the engine sends a connection.
enum Msg {
    Token { id: u32, logprob: Option<Logprob> },
    Done { reason: &'static str },
}

/// A chosen token's log-probability and the most likely alternatives.
struct Logprob {
    logprob: f32,
    top: Vec<(u32, f32)>,
}

struct Job {
    prompt: Vec<u32>,
    sampling: Sampling,
    max_tokens: usize,
    eos: Arc<[u32]>,
    top_logprobs: Option<usize>,
    /// Constrained to JSON (`response_format` `json_object` or `json_schema`).
    json: Option<Arc<Schema>>,
    tx: Sender<Msg>,
    cancel: Arc<AtomicBool>,
}

/// Prometheus counters and gauges.
#[derive(Default)]
struct Metrics {
    requests: AtomicU64,
    rejected_queue_full: AtomicU64,
    errors: AtomicU64,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    cancelled: AtomicU64,
    queue_depth: AtomicUsize,
    slots_busy: AtomicUsize,
    ttft_count: AtomicU64,
    /// Microseconds.
    ttft_sum_us: AtomicU64,
    connections: AtomicUsize,
    steps: AtomicU64,
}

struct Shared<'m> {
    model: &'m Model<'static>,
    tok: &'m Tokenizer,
    template: Option<ChatTemplate>,
    /// End-of-turn ids for chat answers, end-of-text for completions.
    chat_eos: Arc<[u32]>,
    text_eos: Arc<[u32]>,
    name: String,
    /// Each token's text, for the JSON mask (`None`: special, or not whole characters).
    texts: Vec<Option<String>>,
    /// The same texts as a trie, for the JSON mask.
    vocab: Vocab,
    api_key: Option<String>,
    context: usize,
    slots: usize,
    queue: Mutex<VecDeque<Job>>,
    wake: Condvar,
    queue_cap: usize,
    shutdown: AtomicBool,
    metrics: Metrics,
    created: u64,
    ids: AtomicU64,
}

pub(crate) fn serve(a: ServeArgs) -> Result<()> {
    if a.parallel == 0 || a.parallel > 256 {
        return Err(usage("--parallel must be in 1..=256"));
    }
    if a.queue == 0 {
        return Err(usage("--queue must be at least 1"));
    }
    let threads = threads(a.threads)?;
    let model: &'static Model<'static> = Box::leak(Box::new(open(&a.model)?));
    let tok = tokenizer_of(model)?
        .ok_or("this model file has no tokenizer: `ember serve` needs one to read text")?;
    let cfg = *model.config();
    let context = a
        .context
        .unwrap_or(cfg.context_length.min(DEFAULT_MAX_CONTEXT));
    if context < 2 || context > cfg.context_length {
        return Err(usage(format!(
            "--context must be in 2..={} (the model's context length)",
            cfg.context_length
        )));
    }
    let (template, chat_eos) = match chat_template::load(model, tok, None)? {
        Some(t) => (Some(t.template), t.eos),
        None => (None, tok.eot_id().into_iter().collect()),
    };
    let batch_opts = BatchOptions {
        slots: a.parallel,
        session: SessionOptions {
            threads,
            context: Some(context),
            kv_dtype: kv_dtype(&a.kv)?,
            ..SessionOptions::default()
        },
    };
    let mut batch = Batch::new(model, &batch_opts).map_err(|e| e.to_string())?;
    let listener = TcpListener::bind((a.host.as_str(), a.port))
        .map_err(|e| format!("binding {}:{}: {e}", a.host, a.port))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let name = a
        .model
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let texts: Vec<Option<String>> = (0..model.n_outputs() as u32)
        .map(|id| {
            let bytes = tok.token_bytes(id).filter(|_| !tok.is_special(id))?;
            String::from_utf8(bytes.to_vec()).ok()
        })
        .collect();
    let sh = Shared {
        model,
        tok,
        template,
        chat_eos: chat_eos.into(),
        text_eos: tok.eot_id().into_iter().collect::<Vec<_>>().into(),
        name,
        vocab: Vocab::new(&texts),
        texts,
        api_key: a.api_key.clone(),
        context,
        slots: a.parallel,
        queue: Mutex::new(VecDeque::with_capacity(a.queue)),
        wake: Condvar::new(),
        queue_cap: a.queue,
        shutdown: AtomicBool::new(false),
        metrics: Metrics::default(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ids: AtomicU64::new(0),
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .map_err(|e| format!("installing the SIGTERM/Ctrl-C handler: {e}"))?;
    }
    eprintln!(
        "ember serve: {} on http://{addr} ({} slots of {context} tokens, {} threads, {} kernels)",
        a.model.display(),
        a.parallel,
        batch.kernels().threads(),
        batch.kernels().name()
    );
    // The line tests and scripts wait for (with the port actually bound).
    println!("listening on http://{addr}");
    std::thread::scope(|scope| {
        let sh = &sh;
        scope.spawn(move || engine(sh, &mut batch));
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => {
                    if sh.metrics.connections.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                        let mut stream = stream;
                        let e = ApiError::new(503, "server_error", "too many connections");
                        let _ = respond_error(&mut stream, &e);
                        continue;
                    }
                    sh.metrics.connections.fetch_add(1, Ordering::SeqCst);
                    scope.spawn(move || {
                        connection(sh, stream);
                        sh.metrics.connections.fetch_sub(1, Ordering::SeqCst);
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
                Err(_) => std::thread::sleep(POLL),
            }
        }
        eprintln!("ember serve: stopping: finishing the running requests");
        sh.shutdown.store(true, Ordering::SeqCst);
        sh.wake.notify_all();
    });
    eprintln!("ember serve: stopped");
    Ok(())
}

/// The engine: admits queued jobs into free slots, steps the batch, hands out tokens; returns
/// once shut down with nothing running or queued.
fn engine(sh: &Shared<'_>, batch: &mut Batch<'_, '_>) {
    // Per slot: its job, tokens generated, and its JSON state when constrained.
    let mut running: Vec<Option<(Job, usize, Option<State>)>> =
        (0..sh.slots).map(|_| None).collect();
    let mut masker = Masker::new();
    // Per slot, set by the mask: no token can continue the JSON (`Some(accepting)`).
    let mut stuck: Vec<Option<bool>> = vec![None; sh.slots];
    let mut leaving = Vec::with_capacity(sh.slots);
    let mut events = Vec::with_capacity(sh.slots);
    // Logprobs' softmax of a slot's logits (V).
    let (kernels, mut probs) = (*batch.kernels(), Vec::new());
    loop {
        {
            let mut q = sh.queue.lock().unwrap_or_else(PoisonError::into_inner);
            while batch.busy() < batch.slots() {
                let Some(job) = q.pop_front() else { break };
                if job.cancel.load(Ordering::SeqCst) {
                    continue;
                }
                match batch.join(&job.prompt, &job.sampling) {
                    Ok(Some(slot)) => {
                        let json = job.json.as_deref().map(State::new);
                        running[slot] = Some((job, 0, json));
                    }
                    Ok(None) => {
                        q.push_front(job);
                        break;
                    }
                    // Checked by the connection before queueing; a failure here ends the job.
                    Err(_) => {
                        let _ = job.tx.send(Msg::Done { reason: "error" });
                    }
                }
            }
            sh.metrics.queue_depth.store(q.len(), Ordering::SeqCst);
            if batch.busy() == 0 {
                sh.metrics.slots_busy.store(0, Ordering::SeqCst);
                if sh.shutdown.load(Ordering::SeqCst) && q.is_empty() {
                    return;
                }
                let _ = sh.wake.wait_timeout(q, Duration::from_millis(100));
                continue;
            }
        }
        for (slot, r) in running.iter_mut().enumerate() {
            if r.as_ref()
                .is_some_and(|(j, _, _)| j.cancel.load(Ordering::SeqCst))
            {
                batch.leave(slot);
                *r = None;
                sh.metrics.cancelled.fetch_add(1, Ordering::SeqCst);
            }
        }
        sh.metrics.slots_busy.store(batch.busy(), Ordering::SeqCst);
        if batch.busy() == 0 {
            continue;
        }
        events.clear();
        let running_ref = &running;
        stuck.fill(None);
        events.extend_from_slice(batch.step_masked(&mut |slot, logits| {
            if let Some((job, _, Some(state))) = &running_ref[slot] {
                let Some(schema) = job.json.as_deref() else {
                    return;
                };
                let eos: Vec<(u32, f32)> = (job.eos.iter())
                    .filter_map(|&e| Some((e, *logits.get(e as usize)?)))
                    .collect();
                let n = json_mask::mask(schema, state, &sh.vocab, &mut masker, logits);
                // End-of-text only where the answer is a whole value.
                let accepting = state.accepting(schema);
                for &(e, l) in &eos {
                    logits[e as usize] = if accepting { l } else { f32::NEG_INFINITY };
                }
                if n == 0 && (!accepting || eos.is_empty()) {
                    stuck[slot] = Some(accepting);
                }
            }
        }));
        sh.metrics.steps.fetch_add(1, Ordering::Relaxed);
        leaving.clear();
        for e in &events {
            let Some((job, generated, json)) = running[e.slot].as_mut() else {
                continue;
            };
            let done = match e.next {
                Next::ContextFull => Some("length"),
                // Nothing could follow: the sampled token is not sent. A whole value ends as
                // `stop`; a cut one as `length`, like max_tokens (json_mask.rs).
                Next::Token(_) if stuck[e.slot].is_some() => Some(if stuck[e.slot] == Some(true) {
                    "stop"
                } else {
                    "length"
                }),
                Next::Token(t) if job.eos.contains(&t) => Some("stop"),
                Next::Token(id) => {
                    let logprob = job
                        .top_logprobs
                        .map(|n| logprob(&kernels, batch.logits(e.slot), id, n, &mut probs));
                    *generated += 1;
                    sh.metrics.generated_tokens.fetch_add(1, Ordering::Relaxed);
                    let closed =
                        (json.as_mut().zip(job.json.as_deref())).is_some_and(|(j, schema)| {
                            let text = sh.texts.get(id as usize).and_then(|t| t.as_deref());
                            // The mask allowed only tokens that keep the prefix valid.
                            j.feed(schema, text.unwrap_or("")) && j.done()
                        });
                    if job.tx.send(Msg::Token { id, logprob }).is_err() {
                        Some("cancelled")
                    } else if closed {
                        Some("stop")
                    } else if *generated >= job.max_tokens {
                        Some("length")
                    } else {
                        None
                    }
                }
            };
            if let Some(reason) = done {
                if reason == "cancelled" {
                    sh.metrics.cancelled.fetch_add(1, Ordering::SeqCst);
                }
                let _ = job.tx.send(Msg::Done { reason });
                leaving.push(e.slot);
            }
        }
        for &slot in &leaving {
            batch.leave(slot);
            running[slot] = None;
        }
    }
}

/// log softmax(logits)[id] and the n most likely ids with theirs. The sampler's argmax (n ≤ 1)
/// or one scalar pass (n > 1) finds the largest logit l_b and the n most likely; the
/// log-sum-exp comes from the kernels' vectorized softmax of a copy of the logits (`scratch`):
/// p_b = 1 / Σ exp(l − l_b), so lse = l_b − ln p_b.
/// Three scalar passes (max, Σ exp, top) cost 8 streams of GPT-2 a quarter of their decode
/// speed under `ember serve` (2026-12-05: `serve_compare.py --ember-logprobs`, 1,110 against
/// 1,490 tokens/s at two threads); a 151,936-token vocabulary paid three times as much a token.
fn logprob(k: &Kernels, logits: &[f32], id: u32, n: usize, scratch: &mut Vec<f32>) -> Logprob {
    let keep = n.max(1);
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(keep + 1);
    if keep == 1 {
        // The largest alone: the sampler's vectorized argmax (the first index on ties, as below).
        let b = emberlm_runtime::sampler::argmax(logits);
        top.extend(logits.get(b).map(|&l| (b as u32, l)));
    } else {
        for (i, &l) in logits.iter().enumerate() {
            if top.len() < keep || top.last().is_some_and(|&(_, m)| l > m) {
                let at = top.partition_point(|&(_, m)| m >= l);
                top.insert(at, (i as u32, l));
                top.truncate(keep);
            }
        }
    }
    let lse = match top.first() {
        Some(&(b, lb)) if lb.is_finite() => {
            scratch.clear();
            scratch.extend_from_slice(logits);
            k.softmax(scratch);
            lb - scratch[b as usize].ln()
        }
        // Every logit −∞ (all masked) or none: nothing has a finite log-probability.
        _ => f32::INFINITY,
    };
    top.truncate(n);
    Logprob {
        logprob: logits
            .get(id as usize)
            .map_or(f32::NEG_INFINITY, |l| l - lse),
        top: top.into_iter().map(|(i, l)| (i, l - lse)).collect(),
    }
}

/// One connection: one request, one answer.
fn connection(sh: &Shared<'_>, mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let result =
        read_request(&mut stream).and_then(|(head, body)| route(sh, &mut stream, &head, &body));
    if let Err(e) = result {
        if e.status >= 400 {
            sh.metrics.errors.fetch_add(1, Ordering::Relaxed);
        }
        let _ = respond_error(&mut stream, &e);
    }
}

/// Reads a request head and its body (413 beyond the limits).
fn read_request(stream: &mut TcpStream) -> std::result::Result<(Head, Vec<u8>), ApiError> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head = loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(ApiError::new(
                    0,
                    "closed",
                    "the client closed the connection",
                ));
            }
            Ok(n) => n,
            Err(e) => return Err(ApiError::new(0, "closed", e.to_string())),
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(h) = request::parse_head(&buf)? {
            break h;
        }
    };
    let mut body = buf.split_off(head.len.min(buf.len()));
    if body.len() > head.content_length {
        body.truncate(head.content_length);
    }
    while body.len() < head.content_length {
        let want = (head.content_length - body.len()).min(chunk.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => {
                return Err(ApiError::new(
                    400,
                    "invalid_request_error",
                    "the body ended early",
                ));
            }
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(ApiError::new(0, "closed", e.to_string())),
        }
    }
    Ok((head, body))
}

fn route(
    sh: &Shared<'_>,
    stream: &mut TcpStream,
    head: &Head,
    body: &[u8],
) -> std::result::Result<(), ApiError> {
    let path = head.path.trim_end_matches('/');
    // The page itself holds no data: its requests to the API carry the key (asked on the page).
    if path != "/health" && !path.is_empty() {
        if let Some(key) = &sh.api_key {
            if head.bearer.as_deref() != Some(key.as_str()) {
                return Err(ApiError::new(
                    401,
                    "authentication_error",
                    "a valid `Authorization: Bearer KEY` header is required",
                ));
            }
        }
    }
    let method = head.method.as_str();
    match (method, path) {
        ("GET", "") => respond(stream, 200, "text/html; charset=utf-8", CHAT_PAGE, &[]),
        ("GET", "/health") => respond(
            stream,
            200,
            "application/json",
            &json!({"status": "ok"}).to_string(),
            &[],
        ),
        ("GET", "/v1/models") => {
            let body = json!({
                "object": "list",
                "data": [{"id": sh.name, "object": "model", "created": sh.created, "owned_by": "emberlm"}],
            });
            respond(stream, 200, "application/json", &body.to_string(), &[])
        }
        ("GET", "/metrics") => respond(stream, 200, "text/plain; version=0.0.4", &metrics(sh), &[]),
        ("POST", "/v1/chat/completions") => {
            sh.metrics.requests.fetch_add(1, Ordering::Relaxed);
            let p = request::parse_chat(body)?;
            complete(sh, stream, p, true)
        }
        ("POST", "/v1/completions") => {
            sh.metrics.requests.fetch_add(1, Ordering::Relaxed);
            let p = request::parse_completion(body)?;
            complete(sh, stream, p, false)
        }
        (
            _,
            "" | "/health" | "/v1/models" | "/metrics" | "/v1/chat/completions" | "/v1/completions",
        ) => Err(ApiError::new(
            405,
            "invalid_request_error",
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(ApiError::new(
            404,
            "invalid_request_error",
            format!("no endpoint {path}"),
        )),
    }
}

/// The prompt's token ids: a chat rendered by the model's template (or, for a model without
/// one, `role: content` lines and `assistant:`), a completion's text as `ember generate`
/// tokenizes it.
fn prompt_tokens(sh: &Shared<'_>, p: &Params) -> std::result::Result<Vec<u32>, ApiError> {
    let text = match &p.prompt {
        Prompt::Text(t) => t.clone(),
        Prompt::Messages(m) => match &sh.template {
            Some(t) => {
                let msgs: Vec<Message> =
                    m.iter().map(|(r, c)| Message::new(r, c.as_str())).collect();
                t.render(&msgs, true).map_err(|e| {
                    ApiError::field("messages", format!("the model's chat template: {e}"))
                })?
            }
            None => {
                let mut s = String::new();
                for (r, c) in m {
                    s.push_str(&format!("{r}: {c}\n"));
                }
                s.push_str("assistant:");
                s
            }
        },
    };
    Ok(sh.tok.encode_to_vec(&text, SpecialTokens::Allow))
}

fn complete(
    sh: &Shared<'_>,
    stream: &mut TcpStream,
    p: Params,
    chat: bool,
) -> std::result::Result<(), ApiError> {
    let t0 = Instant::now();
    let param = if chat { "messages" } else { "prompt" };
    if let Some(m) = &p.model {
        if !m.is_empty() && *m != sh.name {
            return Err(ApiError {
                status: 404,
                param: Some("model".into()),
                ..ApiError::new(
                    404,
                    "invalid_request_error",
                    format!("no model {m:?}; this server has {:?}", sh.name),
                )
            });
        }
    }
    let prompt = prompt_tokens(sh, &p)?;
    if prompt.is_empty() {
        return Err(ApiError::field(param, "the prompt has no tokens"));
    }
    if prompt.len() >= sh.context {
        return Err(ApiError::field(
            param,
            format!(
                "the prompt is {} tokens; the context holds {} (prompt + answer)",
                prompt.len(),
                sh.context
            ),
        ));
    }
    let room = sh.context - prompt.len();
    let max_tokens = p.max_tokens.unwrap_or(room).min(room);
    let seed = p.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ sh.ids
                .load(Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
    });
    let sampling = Sampling {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        repetition_penalty: 1.0,
        seed,
    };
    sampling
        .validate(sh.model.n_outputs())
        .map_err(|e| ApiError::field("temperature", e.to_string()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let prompt_len = prompt.len();
    let job = Job {
        prompt,
        sampling,
        max_tokens,
        eos: if chat {
            sh.chat_eos.clone()
        } else {
            sh.text_eos.clone()
        },
        top_logprobs: p.logprobs,
        json: p.json.clone(),
        tx,
        cancel: cancel.clone(),
    };
    {
        let mut q = sh.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if sh.shutdown.load(Ordering::SeqCst) {
            return Err(ApiError::new(
                503,
                "server_error",
                "the server is shutting down",
            ));
        }
        if q.len() >= sh.queue_cap {
            sh.metrics
                .rejected_queue_full
                .fetch_add(1, Ordering::Relaxed);
            let e = ApiError::new(
                429,
                "rate_limit_error",
                "every slot is busy and the queue is full; retry shortly",
            );
            let _ = respond(
                stream,
                429,
                "application/json",
                &e.body(),
                &[("Retry-After", "1")],
            );
            return Ok(());
        }
        q.push_back(job);
        sh.metrics.queue_depth.store(q.len(), Ordering::SeqCst);
    }
    sh.wake.notify_all();
    sh.metrics
        .prompt_tokens
        .fetch_add(prompt_len as u64, Ordering::Relaxed);
    let id_n = sh.ids.fetch_add(1, Ordering::Relaxed);
    let ctx = Answer {
        sh,
        chat,
        id: format!("{}-{id_n}", if chat { "chatcmpl" } else { "cmpl" }),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        p: &p,
        prompt_len,
        t0,
    };
    let r = ctx.run(stream, &rx, &cancel);
    // Whatever happened, the slot is freed before the next step.
    cancel.store(true, Ordering::SeqCst);
    r
}

/// One answer being produced.
struct Answer<'a, 'm> {
    sh: &'a Shared<'m>,
    chat: bool,
    id: String,
    created: u64,
    p: &'a Params,
    prompt_len: usize,
    t0: Instant,
}

impl Answer<'_, '_> {
    fn run(
        &self,
        stream: &mut TcpStream,
        rx: &Receiver<Msg>,
        cancel: &AtomicBool,
    ) -> std::result::Result<(), ApiError> {
        let mut decoder = emberlm_formats::tokenizer::StreamDecoder::new(self.sh.tok);
        let mut text = String::new();
        let mut sent = 0usize; // bytes of `text` sent (streaming)
        let hold = self.p.stop.iter().map(|s| s.len()).max().unwrap_or(1) - 1;
        let mut tokens = 0usize;
        let mut lp_items: Vec<Value> = vec![];
        let mut first = true;
        if self.p.stream {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
            if stream.write_all(head.as_bytes()).is_err() {
                return Ok(());
            }
            if self.chat {
                let role = self.chunk(
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                    None,
                );
                if sse(stream, &role).is_err() {
                    return Ok(());
                }
            }
        }
        let reason = loop {
            let msg = match rx.recv_timeout(POLL) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    if closed(stream) {
                        return Ok(());
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break "error",
            };
            let (id, lp) = match msg {
                Msg::Done { reason } => break reason,
                Msg::Token { id, logprob } => (id, logprob),
            };
            if first {
                first = false;
                let m = &self.sh.metrics;
                m.ttft_count.fetch_add(1, Ordering::Relaxed);
                m.ttft_sum_us
                    .fetch_add(self.t0.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            tokens += 1;
            let before = text.len();
            text.push_str(decoder.push(id).unwrap_or(""));
            let lp_item = lp.map(|lp| self.logprob_item(id, &lp));
            let stopped = find_stop(&text, before, &self.p.stop);
            if let Some(at) = stopped {
                text.truncate(at);
                cancel.store(true, Ordering::SeqCst);
            }
            let safe = if stopped.is_some() {
                text.len()
            } else {
                floor_char_boundary(&text, text.len().saturating_sub(hold)).max(sent)
            };
            if self.p.stream {
                let piece = &text[sent..safe];
                if !piece.is_empty() || lp_item.is_some() {
                    let lps = lp_item.map(|i| self.logprobs_value(&[i]));
                    let c = self.chunk(self.delta(piece), Value::Null, lps);
                    if sse(stream, &c).is_err() || closed(stream) {
                        return Ok(());
                    }
                }
                sent = safe;
            } else {
                lp_items.extend(lp_item);
                if closed(stream) {
                    return Ok(());
                }
            }
            if stopped.is_some() {
                break "stop";
            }
        };
        if reason == "error" || reason == "cancelled" {
            return Err(ApiError::new(
                500,
                "server_error",
                "the request could not be completed",
            ));
        }
        if reason != "stop" || find_stop(&text, 0, &self.p.stop).is_none() {
            let before = text.len();
            text.push_str(decoder.finish());
            if let Some(at) = find_stop(&text, before, &self.p.stop) {
                text.truncate(at);
            }
        }
        let usage = json!({
            "prompt_tokens": self.prompt_len,
            "completion_tokens": tokens,
            "total_tokens": self.prompt_len + tokens,
        });
        if self.p.stream {
            let piece = &text[sent.min(text.len())..];
            let last = self.chunk(self.delta(piece), json!(reason), None);
            let _ = sse(stream, &last);
            if self.p.include_usage {
                let mut u = self.chunk(Value::Null, Value::Null, None);
                u["choices"] = json!([]);
                u["usage"] = usage;
                let _ = sse(stream, &u);
            }
            let _ = stream.write_all(b"data: [DONE]\n\n");
            let _ = stream.flush();
            return Ok(());
        }
        let logprobs = if self.p.logprobs.is_some() {
            self.logprobs_value(&lp_items)
        } else {
            Value::Null
        };
        let choice = if self.chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs, "finish_reason": reason})
        } else {
            json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason})
        };
        let body = json!({
            "id": self.id,
            "object": if self.chat { "chat.completion" } else { "text_completion" },
            "created": self.created,
            "model": self.sh.name,
            "choices": [choice],
            "usage": usage,
        });
        let _ = respond(stream, 200, "application/json", &body.to_string(), &[]);
        Ok(())
    }

    fn delta(&self, piece: &str) -> Value {
        if self.chat {
            json!({"content": piece})
        } else {
            json!(piece)
        }
    }

    /// A streamed chunk: `delta` is the chat delta object or the completion's text.
    fn chunk(&self, delta: Value, finish: Value, logprobs: Option<Value>) -> Value {
        let logprobs = logprobs.unwrap_or(Value::Null);
        let choice = if self.chat {
            json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": delta, "logprobs": logprobs, "finish_reason": finish})
        };
        json!({
            "id": self.id,
            "object": if self.chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.sh.name,
            "choices": [choice],
        })
    }

    fn token_text(&self, id: u32) -> String {
        let mut bytes = Vec::new();
        let _ = self.sh.tok.decode(&[id], &mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn logprob_item(&self, id: u32, lp: &Logprob) -> Value {
        let top: Vec<Value> = lp
            .top
            .iter()
            .map(|&(t, l)| json!({"token": self.token_text(t), "logprob": l}))
            .collect();
        json!({"token": self.token_text(id), "logprob": lp.logprob, "top_logprobs": top})
    }

    /// The `logprobs` object of a choice from per-token items: chat's `{"content": [...]}`, or
    /// the legacy `{"tokens", "token_logprobs", "top_logprobs"}`.
    fn logprobs_value(&self, items: &[Value]) -> Value {
        if self.chat {
            return json!({ "content": items });
        }
        let tokens: Vec<&Value> = items.iter().map(|i| &i["token"]).collect();
        let lps: Vec<&Value> = items.iter().map(|i| &i["logprob"]).collect();
        let tops: Vec<Value> = items
            .iter()
            .map(|i| {
                let mut m = serde_json::Map::new();
                for t in i["top_logprobs"].as_array().into_iter().flatten() {
                    m.insert(
                        t["token"].as_str().unwrap_or("").to_string(),
                        t["logprob"].clone(),
                    );
                }
                Value::Object(m)
            })
            .collect();
        json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops})
    }
}

/// The first stop string in `text` that ends after `before`: its start.
fn find_stop(text: &str, before: usize, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter_map(|s| {
            let from = floor_char_boundary(text, before.saturating_sub(s.len().saturating_sub(1)));
            text[from..].find(s.as_str()).map(|p| from + p)
        })
        .min()
}

/// The largest char boundary of `s` at or below `i`.
fn floor_char_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Whether the client closed its end (a non-blocking peek reads end-of-stream or fails).
fn closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let r = match stream.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    let _ = stream.set_nonblocking(false);
    r
}

fn sse(stream: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    stream.write_all(format!("data: {v}\n\n").as_bytes())?;
    stream.flush()
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> std::result::Result<(), ApiError> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        status_text(status),
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body.as_bytes()))
        .and_then(|_| stream.flush());
    Ok(())
}

fn respond_error(stream: &mut TcpStream, e: &ApiError) -> std::result::Result<(), ApiError> {
    if e.status == 0 {
        return Ok(()); // the client is gone
    }
    let extra: &[(&str, &str)] = if e.status == 401 {
        &[("WWW-Authenticate", "Bearer")]
    } else {
        &[]
    };
    respond(stream, e.status, "application/json", &e.body(), extra)
}

fn metrics(sh: &Shared<'_>) -> String {
    let m = &sh.metrics;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let u = |a: &AtomicUsize| a.load(Ordering::SeqCst);
    format!(
        "# HELP ember_requests_total Completion requests received.\n# TYPE ember_requests_total counter\nember_requests_total {}\n\
         # HELP ember_requests_rejected_total Requests answered 429 (queue full).\n# TYPE ember_requests_rejected_total counter\nember_requests_rejected_total {}\n\
         # HELP ember_request_errors_total Requests answered with an error status.\n# TYPE ember_request_errors_total counter\nember_request_errors_total {}\n\
         # HELP ember_requests_cancelled_total Requests whose slot was freed early (client gone, stop string).\n# TYPE ember_requests_cancelled_total counter\nember_requests_cancelled_total {}\n\
         # HELP ember_prompt_tokens_total Prompt tokens queued.\n# TYPE ember_prompt_tokens_total counter\nember_prompt_tokens_total {}\n\
         # HELP ember_generated_tokens_total Tokens generated.\n# TYPE ember_generated_tokens_total counter\nember_generated_tokens_total {}\n\
         # HELP ember_batch_steps_total Batch steps run.\n# TYPE ember_batch_steps_total counter\nember_batch_steps_total {}\n\
         # HELP ember_queue_depth Requests waiting for a slot.\n# TYPE ember_queue_depth gauge\nember_queue_depth {}\n\
         # HELP ember_slots_busy Slots decoding a request.\n# TYPE ember_slots_busy gauge\nember_slots_busy {}\n\
         # HELP ember_slots Slots (--parallel).\n# TYPE ember_slots gauge\nember_slots {}\n\
         # HELP ember_time_to_first_token_seconds From request to first token.\n# TYPE ember_time_to_first_token_seconds summary\nember_time_to_first_token_seconds_sum {}\nember_time_to_first_token_seconds_count {}\n",
        g(&m.requests),
        g(&m.rejected_queue_full),
        g(&m.errors),
        g(&m.cancelled),
        g(&m.prompt_tokens),
        g(&m.generated_tokens),
        g(&m.steps),
        u(&m.queue_depth),
        u(&m.slots_busy),
        sh.slots,
        g(&m.ttft_sum_us) as f64 / 1e6,
        g(&m.ttft_count),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The served log-probabilities against an f64 log-softmax computed here, on a GPT-2-sized
    /// vocabulary of spread logits with a masked entry, and with everything masked.
    #[test]
    fn logprobs_match_an_f64_log_softmax() {
        let k = Kernels::detect();
        let mut scratch = Vec::new();
        let mut logits: Vec<f32> = (0..50257u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 8) % 4000)
            .map(|v| v as f32 / 200.0 - 10.0)
            .collect();
        logits[7] = f32::NEG_INFINITY;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max
            + (logits.iter())
                .map(|&l| (l as f64 - max).exp())
                .sum::<f64>()
                .ln();
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        for (id, n) in [
            (0u32, 3),
            (123, 1),
            (50256, 0),
            (order[0], 3),
            (order[1000], 1),
        ] {
            let lp = logprob(&k, &logits, id, n, &mut scratch);
            let want = logits[id as usize] as f64 - lse;
            assert!(
                (lp.logprob as f64 - want).abs() < 1e-4,
                "{id}: {} vs {want}",
                lp.logprob
            );
            assert_eq!(lp.top.len(), n);
            for (j, &(t, v)) in lp.top.iter().enumerate() {
                assert_eq!(logits[t as usize], logits[order[j] as usize]);
                assert!((v as f64 - (logits[t as usize] as f64 - lse)).abs() < 1e-4);
            }
        }
        assert_eq!(
            logprob(&k, &logits, 7, 0, &mut scratch).logprob,
            f32::NEG_INFINITY
        );
        let masked = vec![f32::NEG_INFINITY; 10];
        let lp = logprob(&k, &masked, 3, 2, &mut scratch);
        assert_eq!(lp.logprob, f32::NEG_INFINITY);
        assert!(lp.top.iter().all(|&(_, v)| v == f32::NEG_INFINITY));
    }
}
