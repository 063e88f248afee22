//! `ember serve`'s request parser: an HTTP/1.1 request head and the JSON body of a completion
//! request, from untrusted bytes. The parser's own file (runtime/src/bin/ember/serve/request.rs,
//! part of the `ember` binary) is compiled in here by path.
//!
//! Input: the bytes a client sends (head, then body); also parsed as a bare chat body and a bare
//! completion body; and, split at the first 0xFF byte, as a JSON Schema (`response_format`'s
//! `json_schema.schema`, compiled by json_mask.rs) and a text fed to its recognizer.
//!
//! Properties: no panic; an accepted head lies within the input and declares at most
//! `MAX_BODY_BYTES`; an error's status is one the server answers (400, 411, 413) and its body
//! is a JSON object with `error.message`; accepted parameters are within their documented ranges;
//! a schema compiles or is refused with a message; a text the recognizer accepts whole (of any
//! schema, or of `json_object`) parses as JSON, an object for `json_object`.

#[path = "../../runtime/src/bin/ember/serve/request.rs"]
#[allow(dead_code)]
mod request;

#[path = "../../runtime/src/bin/ember/serve/json_mask.rs"]
#[allow(dead_code)]
mod json_mask;

use request::{ApiError, MAX_BODY_BYTES, MAX_TOP_LOGPROBS, Params};

fn check_error(e: &ApiError) {
    assert!(
        matches!(e.status, 400 | 404 | 411 | 413),
        "status {}",
        e.status
    );
    let v: serde_json::Value = serde_json::from_str(&e.body()).expect("error body is JSON");
    assert!(v["error"]["message"].is_string());
}

fn check_params(p: &Params) {
    assert!((0.0..=2.0).contains(&p.temperature));
    assert!(p.top_p.is_none_or(|t| t > 0.0 && t <= 1.0));
    assert!(p.max_tokens != Some(0));
    assert!(p.stop.len() <= 4 && p.stop.iter().all(|s| !s.is_empty()));
    assert!(p.logprobs.is_none_or(|n| n <= MAX_TOP_LOGPROBS));
}

pub fn run(data: &[u8]) {
    match request::parse_request(data) {
        Ok(Some((head, params))) => {
            assert!(head.len <= data.len());
            assert!(head.content_length <= MAX_BODY_BYTES);
            if let Some(p) = params {
                check_params(&p);
            }
        }
        Ok(None) => {}
        Err(e) => check_error(&e),
    }
    for parse in [request::parse_chat, request::parse_completion] {
        match parse(data) {
            Ok(p) => check_params(&p),
            Err(e) => check_error(&e),
        }
    }
    check_schema(data);
}

fn check_schema(data: &[u8]) {
    let at = data.iter().position(|&b| b == 0xFF).unwrap_or(data.len());
    let text = String::from_utf8_lossy(data.get(at + 1..).unwrap_or(&[]));
    let schema = match serde_json::from_slice::<serde_json::Value>(&data[..at]) {
        Ok(doc) => match json_mask::Schema::compile(&doc) {
            Ok(s) => Some(s),
            Err(e) => {
                assert!(!e.to_string().is_empty());
                None
            }
        },
        Err(_) => None,
    };
    let object = json_mask::Schema::object();
    for (s, must_be_object) in [(schema.as_ref(), false), (Some(&object), true)] {
        let Some(s) = s else { continue };
        let mut st = json_mask::State::new(s);
        if st.feed(s, &text) && st.accepting(s) {
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("accepted {text:?} does not parse: {e}"));
            assert!(!must_be_object || v.is_object());
        }
    }
}
