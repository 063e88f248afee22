//! `ember serve`'s request parser: an HTTP/1.1 request head (httparse) and the JSON bodies of
//! `/v1/chat/completions` and `/v1/completions`, into typed values or an OpenAI-style error
//! naming the field. Untrusted bytes: it never panics (the `serve_request` fuzz target runs it,
//! including this file and json_mask.rs by path, so they depend on nothing but `httparse` and
//! `serde_json`).

use super::json_mask::Schema;
use serde_json::{Map, Value};
use std::sync::Arc;

/// Request head bytes read at most before the body (413 beyond).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Request body bytes accepted at most (413 beyond).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Headers parsed at most (413 beyond).
const MAX_HEADERS: usize = 64;
/// Stop strings at most (OpenAI's limit).
const MAX_STOPS: usize = 4;
/// `top_logprobs` at most (OpenAI's limit for chat).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// An error answered as `{"error": {"message", "type", "param", "code"}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `server_error`, ...
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
        }
    }

    /// 400 naming `param`.
    pub fn field(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.to_string()),
            ..ApiError::new(400, "invalid_request_error", message)
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": Value::Null,
            }
        })
        .to_string()
    }
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    /// `Content-Length` (0 without one).
    pub content_length: usize,
    /// The token of `Authorization: Bearer TOKEN`.
    pub bearer: Option<String>,
    /// Bytes of the head, up to and including the blank line.
    pub len: usize,
}

/// Parses the head at the start of `buf`: `Ok(None)` when it is not complete yet.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD_BYTES {
                return Err(too_large("the request head is larger than 16 KiB"));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(too_large("more than 64 request headers"));
        }
        Err(e) => {
            return Err(ApiError::new(
                400,
                "invalid_request_error",
                format!("malformed HTTP request: {e}"),
            ));
        }
    };
    if len > MAX_HEAD_BYTES {
        return Err(too_large("the request head is larger than 16 KiB"));
    }
    let method = req.method.unwrap_or("").to_string();
    let raw = req.path.unwrap_or("/");
    let path = raw.split(['?', '#']).next().unwrap_or("/").to_string();
    let mut content_length = 0usize;
    let mut bearer = None;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().map_err(|_| {
                ApiError::new(400, "invalid_request_error", "a bad Content-Length header")
            })?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ApiError::new(
                411,
                "invalid_request_error",
                "chunked request bodies are not supported: send a Content-Length",
            ));
        } else if h.name.eq_ignore_ascii_case("authorization") {
            let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
            if scheme.eq_ignore_ascii_case("bearer") {
                bearer = Some(token.trim().to_string());
            }
        }
    }
    if content_length > MAX_BODY_BYTES {
        return Err(too_large("the request body is larger than 1 MiB"));
    }
    Ok(Some(Head {
        method,
        path,
        content_length,
        bearer,
        len,
    }))
}

fn too_large(message: &str) -> ApiError {
    ApiError::new(413, "invalid_request_error", message)
}

/// What to generate from.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// `/v1/completions`: the text.
    Text(String),
    /// `/v1/chat/completions`: (role, content) pairs.
    Messages(Vec<(String, String)>),
}

/// A completion request's parameters, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub prompt: Prompt,
    pub model: Option<String>,
    pub stream: bool,
    /// Send a last chunk with `usage` when streaming (`stream_options.include_usage`).
    pub include_usage: bool,
    pub max_tokens: Option<usize>,
    /// 0..=2; OpenAI's default is 1.
    pub temperature: f32,
    pub top_p: Option<f32>,
    /// 0 or absent: off.
    pub top_k: Option<usize>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// Log-probabilities of the chosen tokens and this many alternatives each (`None`: none).
    pub logprobs: Option<usize>,
    /// `response_format` `{"type": "json_object"}` (the schema `{"type": "object"}`) or
    /// `{"type": "json_schema", "json_schema": {"schema": ...}}`: the answer validates.
    pub json: Option<Arc<Schema>>,
}

/// Parses a `/v1/chat/completions` body.
pub fn parse_chat(body: &[u8]) -> Result<Params, ApiError> {
    let obj = object(body)?;
    let messages = match obj.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => return Err(ApiError::field("messages", "`messages` is empty")),
        Some(_) => {
            return Err(ApiError::field(
                "messages",
                "`messages` must be an array of messages",
            ));
        }
        None => return Err(ApiError::field("messages", "`messages` is required")),
    };
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let param = |f: &str| format!("messages[{i}].{f}");
        let Value::Object(m) = m else {
            return Err(ApiError::field(
                &format!("messages[{i}]"),
                "a message must be an object",
            ));
        };
        let role = match m.get("role") {
            Some(Value::String(r))
                if ["system", "developer", "user", "assistant"].contains(&r.as_str()) =>
            {
                if r == "developer" { "system" } else { r }.to_string()
            }
            Some(Value::String(r)) => {
                return Err(ApiError::field(
                    &param("role"),
                    format!("role {r:?} is not supported (system, developer, user, assistant)"),
                ));
            }
            _ => return Err(ApiError::field(&param("role"), "`role` must be a string")),
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.get("type"), p.get("text")) {
                        (Some(Value::String(t)), Some(Value::String(s))) if t == "text" => {
                            text.push_str(s)
                        }
                        _ => {
                            return Err(ApiError::field(
                                &format!("messages[{i}].content[{j}]"),
                                "only {\"type\": \"text\", \"text\": ...} parts are supported",
                            ));
                        }
                    }
                }
                text
            }
            Some(Value::Null) | None if role == "assistant" => String::new(),
            _ => {
                return Err(ApiError::field(
                    &param("content"),
                    "`content` must be a string or an array of text parts",
                ));
            }
        };
        out.push((role, content));
    }
    let mut p = common(&obj)?;
    p.prompt = Prompt::Messages(out);
    p.logprobs = match (
        flag(&obj, "logprobs")?,
        count(&obj, "top_logprobs", MAX_TOP_LOGPROBS)?,
    ) {
        (true, n) => Some(n.unwrap_or(0)),
        (false, Some(n)) if n > 0 => {
            return Err(ApiError::field(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
        (false, _) => None,
    };
    if let Some(n) = count(&obj, "max_completion_tokens", usize::MAX)? {
        p.max_tokens = Some(n);
    }
    Ok(p)
}

/// Parses a `/v1/completions` body.
pub fn parse_completion(body: &[u8]) -> Result<Params, ApiError> {
    let obj = object(body)?;
    let prompt = match obj.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or("").to_string()
        }
        Some(_) => {
            return Err(ApiError::field(
                "prompt",
                "`prompt` must be a string (one prompt per request)",
            ));
        }
        None => return Err(ApiError::field("prompt", "`prompt` is required")),
    };
    if prompt.is_empty() {
        return Err(ApiError::field("prompt", "`prompt` is empty"));
    }
    let mut p = common(&obj)?;
    p.prompt = Prompt::Text(prompt);
    // The legacy endpoint's `logprobs` is the number of alternatives (0..=5).
    p.logprobs = count(&obj, "logprobs", 5)?;
    if let Some(Value::String(_)) = obj.get("suffix") {
        return Err(ApiError::field("suffix", "`suffix` is not supported"));
    }
    if flag(&obj, "echo")? {
        return Err(ApiError::field("echo", "`echo` is not supported"));
    }
    Ok(p)
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::new(
            400,
            "invalid_request_error",
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::new(
            400,
            "invalid_request_error",
            format!("the request body is not valid JSON: {e}"),
        )),
    }
}

/// The fields both endpoints share.
fn common(obj: &Map<String, Value>) -> Result<Params, ApiError> {
    let model = match obj.get("model") {
        Some(Value::String(s)) => Some(s.clone()),
        None | Some(Value::Null) => None,
        Some(_) => return Err(ApiError::field("model", "`model` must be a string")),
    };
    if let Some(n) = obj.get("n") {
        if n.as_u64() != Some(1) && !n.is_null() {
            return Err(ApiError::field("n", "only `n: 1` is supported"));
        }
    }
    if let Some(b) = obj.get("best_of") {
        if b.as_u64() != Some(1) && !b.is_null() {
            return Err(ApiError::field("best_of", "only `best_of: 1` is supported"));
        }
    }
    let json = match obj.get("response_format") {
        None | Some(Value::Null) => None,
        Some(Value::Object(f)) => match f.get("type").and_then(Value::as_str) {
            Some("text") => None,
            Some("json_object") => Some(Arc::new(Schema::object())),
            Some("json_schema") => Some(Arc::new(json_schema(f.get("json_schema"))?)),
            _ => {
                return Err(ApiError::field(
                    "response_format.type",
                    "`response_format.type` must be \"text\", \"json_object\" or \"json_schema\"",
                ));
            }
        },
        Some(_) => {
            return Err(ApiError::field(
                "response_format",
                "`response_format` must be an object",
            ));
        }
    };
    let temperature = number(obj, "temperature", 0.0, 2.0)?.unwrap_or(1.0);
    let top_p = number(obj, "top_p", 0.0, 1.0)?;
    if top_p == Some(0.0) {
        return Err(ApiError::field("top_p", "`top_p` must be above 0"));
    }
    let top_k = count(obj, "top_k", usize::MAX)?.filter(|&k| k > 0);
    let seed = match obj.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(s), _) => Some(s),
            // Negative seeds are allowed by OpenAI: keep their bits.
            (None, Some(s)) => Some(s as u64),
            _ => return Err(ApiError::field("seed", "`seed` must be an integer")),
        },
    };
    let max_tokens = count(obj, "max_tokens", usize::MAX)?;
    if max_tokens == Some(0) {
        return Err(ApiError::field(
            "max_tokens",
            "`max_tokens` must be at least 1",
        ));
    }
    let stop = match obj.get("stop") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= MAX_STOPS => {
            let mut v = Vec::with_capacity(a.len());
            for s in a {
                match s {
                    Value::String(s) => v.push(s.clone()),
                    _ => return Err(ApiError::field("stop", "`stop` must hold strings")),
                }
            }
            v
        }
        Some(_) => {
            return Err(ApiError::field(
                "stop",
                "`stop` must be a string or an array of at most 4 strings",
            ));
        }
    };
    let stop = stop.into_iter().filter(|s| !s.is_empty()).collect();
    let stream = flag(obj, "stream")?;
    let include_usage = match obj.get("stream_options") {
        Some(Value::Object(o)) => o.get("include_usage") == Some(&Value::Bool(true)),
        None | Some(Value::Null) => false,
        Some(_) => {
            return Err(ApiError::field(
                "stream_options",
                "`stream_options` must be an object",
            ));
        }
    };
    Ok(Params {
        prompt: Prompt::Text(String::new()),
        model,
        stream,
        include_usage,
        max_tokens,
        temperature,
        top_p,
        top_k,
        seed,
        stop,
        logprobs: None,
        json,
    })
}

/// `response_format.json_schema`: `{"name": ..., "schema": {...}, "strict": ...}`.
fn json_schema(v: Option<&Value>) -> Result<Schema, ApiError> {
    const P: &str = "response_format.json_schema";
    let Some(Value::Object(js)) = v else {
        return Err(ApiError::field(
            P,
            "`response_format.json_schema` must be an object with a `schema`",
        ));
    };
    match js.get("name") {
        None | Some(Value::String(_)) => {}
        Some(_) => {
            return Err(ApiError::field(
                &format!("{P}.name"),
                "`name` must be a string",
            ));
        }
    }
    match js.get("strict") {
        None | Some(Value::Null | Value::Bool(_)) => {}
        Some(_) => {
            return Err(ApiError::field(
                &format!("{P}.strict"),
                "`strict` must be true or false",
            ));
        }
    }
    let Some(schema) = js.get("schema") else {
        return Err(ApiError::field(
            &format!("{P}.schema"),
            "`schema` is required",
        ));
    };
    Schema::compile(schema).map_err(|e| ApiError::field(&format!("{P}.schema"), e.to_string()))
}

fn flag(obj: &Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::field(
            name,
            format!("`{name}` must be true or false"),
        )),
    }
}

fn number(obj: &Map<String, Value>, name: &str, lo: f64, hi: f64) -> Result<Option<f32>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x as f32)),
            _ => Err(ApiError::field(
                name,
                format!("`{name}` must be a number in {lo}..={hi}"),
            )),
        },
    }
}

fn count(obj: &Map<String, Value>, name: &str, max: usize) -> Result<Option<usize>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) if n <= max => Ok(Some(n)),
            _ if max == usize::MAX => Err(ApiError::field(
                name,
                format!("`{name}` must be a whole number ≥ 0"),
            )),
            _ => Err(ApiError::field(
                name,
                format!("`{name}` must be a whole number in 0..={max}"),
            )),
        },
    }
}

/// Parses a whole request as the server does: its head, then the body of a POST to one of the
/// two completion endpoints. For the fuzz target and tests.
#[cfg_attr(not(test), allow(dead_code))] // the fuzz target's entry point
pub fn parse_request(buf: &[u8]) -> Result<Option<(Head, Option<Params>)>, ApiError> {
    let Some(head) = parse_head(buf)? else {
        return Ok(None);
    };
    let body = buf.get(head.len..).unwrap_or(&[]);
    let body = body.get(..head.content_length).unwrap_or(body);
    let params = match (head.method.as_str(), head.path.as_str()) {
        ("POST", "/v1/chat/completions") => Some(parse_chat(body)?),
        ("POST", "/v1/completions") => Some(parse_completion(body)?),
        _ => None,
    };
    Ok(Some((head, params)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_fields_are_named() {
        let cases: &[(&str, &str)] = &[
            (r#"{"prompt": "a", "temperature": 3}"#, "temperature"),
            (r#"{"prompt": "a", "n": 2}"#, "n"),
            (r#"{"prompt": "a", "max_tokens": -1}"#, "max_tokens"),
            (r#"{"prompt": "a", "stop": [1]}"#, "stop"),
            (r#"{"prompt": "a", "top_p": "x"}"#, "top_p"),
            (r#"{"prompt": 5}"#, "prompt"),
            (r#"{"prompt": "a", "stream": "yes"}"#, "stream"),
            (r#"{"prompt": "a", "seed": 1.5}"#, "seed"),
            (r#"{"prompt": "a", "logprobs": 9}"#, "logprobs"),
        ];
        for (body, field) in cases {
            let e = parse_completion(body.as_bytes()).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(*field), "{body}");
        }
        let e = parse_chat(br#"{"messages": [{"role": "wizard", "content": "x"}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = parse_chat(br#"{"messages": []}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = parse_chat(b"{not json").unwrap_err();
        assert_eq!((e.status, e.param), (400, None));
    }

    #[test]
    fn a_chat_request_parses() {
        let p = parse_chat(
            br#"{"model": "m", "messages": [{"role": "system", "content": "s"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "stream": true, "stop": ["\n", "x"], "seed": -1, "top_k": 5,
                "logprobs": true, "top_logprobs": 3, "max_completion_tokens": 7}"#,
        )
        .unwrap();
        assert_eq!(
            p.prompt,
            Prompt::Messages(vec![
                ("system".into(), "s".into()),
                ("user".into(), "hi".into())
            ])
        );
        assert!(p.stream);
        assert_eq!(p.stop, vec!["\n".to_string(), "x".to_string()]);
        assert_eq!(p.seed, Some(u64::MAX));
        assert_eq!(p.top_k, Some(5));
        assert_eq!(p.logprobs, Some(3));
        assert_eq!(p.max_tokens, Some(7));
        assert_eq!(p.temperature, 1.0);
    }

    #[test]
    fn heads_parse_and_limits_hold() {
        let h = parse_head(
            b"POST /v1/completions?x=1 HTTP/1.1\r\nContent-Length: 12\r\nAuthorization: Bearer k1\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.path, "/v1/completions");
        assert_eq!(h.content_length, 12);
        assert_eq!(h.bearer.as_deref(), Some("k1"));
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap(), None);
        let whole =
            b"POST /v1/completions HTTP/1.1\r\nContent-Length: 15\r\n\r\n{\"prompt\": \"a\"}";
        let (_, p) = parse_request(whole).unwrap().unwrap();
        assert_eq!(p.unwrap().prompt, Prompt::Text("a".into()));
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        assert_eq!(parse_head(big.as_bytes()).unwrap_err().status, 413);
        assert_eq!(
            parse_head(&vec![b'a'; MAX_HEAD_BYTES + 1])
                .unwrap_err()
                .status,
            413
        );
        assert_eq!(parse_head(b"\x00\x01 x\r\n\r\n").unwrap_err().status, 400);
        let long = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; MAX_HEAD_BYTES]].concat();
        assert_eq!(parse_head(&long).unwrap_err().status, 413);
    }
}
