//! Chat templates rendered by `emberlm_formats::chat` against transformers' own renderings
//! (`fixtures/chat_templates/expected.json`, written by `make_fixtures.py` there), and the limits
//! that stop hostile templates.

use emberlm_formats::chat::{
    ChatError, ChatOptions, ChatTemplate, DEFAULT_MAX_OUTPUT, Message, SpecialStrings, Value,
};
use emberlm_formats::ember::{AlignedBytes, EmberFile, EmberWriter};
use emberlm_formats::meta::{ChatTemplateSource, get_chat_template, put_chat_template};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates")
}

fn fixtures() -> Json {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn str_of(j: &Json) -> String {
    j.as_str().unwrap().to_string()
}

/// A fixture value as a template value; `{"$map": [[k, v], ...]}` is a map in that order.
fn to_value(j: &Json) -> Value {
    match j {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) => Value::from(f),
            _ => panic!("number {n}"),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(a) => a.iter().map(to_value).collect(),
        Json::Object(o) => {
            let pairs = o["$map"].as_array().expect("maps are written as $map");
            Value::from_pairs(pairs.iter().map(|p| (str_of(&p[0]), to_value(&p[1]))))
        }
    }
}

fn special_of(j: &Json) -> SpecialStrings {
    let get = |k: &str| j.get(k).map(str_of);
    SpecialStrings {
        bos_token: get("bos_token"),
        eos_token: get("eos_token"),
        pad_token: get("pad_token"),
        unk_token: get("unk_token"),
    }
}

fn user(text: &str) -> Vec<Message> {
    vec![Message::new("user", text)]
}

#[test]
fn fixture_cases_match_transformers_byte_for_byte() {
    let fx = fixtures();
    let now = fx["now"].as_i64().unwrap();
    let mut templates = BTreeMap::new();
    for (name, special) in fx["special"].as_object().unwrap() {
        let source = std::fs::read_to_string(fixture_dir().join(format!("{name}.jinja"))).unwrap();
        let options = ChatOptions {
            now: Some(now),
            ..ChatOptions::default()
        };
        let t = ChatTemplate::with_options(&source, special_of(special), options)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        templates.insert(name.clone(), t);
    }
    let cases = fx["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let messages: Vec<Message> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message::new(str_of(&m["role"]), str_of(&m["content"])))
            .collect();
        let extra: Vec<(String, Value)> = case["extra"]["$map"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (str_of(&p[0]), to_value(&p[1])))
            .collect();
        let extra: Vec<(&str, Value)> =
            extra.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let name = str_of(&case["template"]);
        let gen_prompt = case["add_generation_prompt"].as_bool().unwrap();
        let got = templates[&name].render_with(&messages, gen_prompt, &extra);
        let want = match (case.get("expected"), case.get("error")) {
            (Some(e), None) => Ok(str_of(e)),
            (None, Some(e)) => Err(ChatError::Template(str_of(e))),
            _ => panic!("case {i}: neither expected nor error"),
        };
        if got != want {
            failures.push(format!(
                "case {i} ({name}, generation prompt {gen_prompt}, {} messages):\n  want {want:?}\n   got {got:?}",
                messages.len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from transformers:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(cases.len() >= 100, "only {} fixture cases", cases.len());
}

#[test]
fn strftime_now_matches_python() {
    let fx = fixtures();
    for case in fx["strftime"].as_array().unwrap() {
        let options = ChatOptions {
            now: case["unix"].as_i64(),
            ..ChatOptions::default()
        };
        let t = ChatTemplate::with_options(
            "{{ strftime_now(fmt) }}",
            SpecialStrings::default(),
            options,
        )
        .unwrap();
        let got = t.render_with(&user("x"), false, &[("fmt", to_value(&case["format"]))]);
        assert_eq!(got, Ok(str_of(&case["expected"])), "{}", case["format"]);
    }
}

#[test]
fn template_stored_in_an_ember_file_renders() {
    let stored = ChatTemplateSource {
        source: "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}\n{% endfor %}"
            .into(),
        special: SpecialStrings {
            bos_token: Some("<s>".into()),
            eos_token: Some("</s>".into()),
            ..SpecialStrings::default()
        },
    };
    let mut w = EmberWriter::new();
    put_chat_template(&mut w, &stored).unwrap();
    let bytes = AlignedBytes::copy_from(&w.to_vec(|_, _, _| Ok(())).unwrap());
    let header = EmberFile::parse(&bytes).unwrap().header;
    let loaded = get_chat_template(&header).unwrap().unwrap();
    assert_eq!(loaded, stored);
    let t = ChatTemplate::new(&loaded.source, loaded.special).unwrap();
    assert_eq!(t.render(&user("hi"), false).unwrap(), "<s><user>hi</s>\n");
}

fn fails_with(source: &str, messages: &[Message]) -> ChatError {
    let t = ChatTemplate::new(source, SpecialStrings::default()).unwrap();
    t.render(messages, true).unwrap_err()
}

#[test]
fn an_endless_loop_runs_out_of_fuel() {
    let source = "{% for i in range(100000) %}{% for j in range(100000) %}{% set k = i + j %}\
                  {% endfor %}{% endfor %}";
    assert_eq!(
        fails_with(source, &user("x")),
        ChatError::OutOfFuel {
            fuel: emberlm_formats::chat::DEFAULT_FUEL
        }
    );
}

#[test]
fn a_string_doubled_in_a_loop_runs_out_of_fuel_not_memory() {
    // 2^64 bytes if nothing stopped it: fuel pays for the bytes a concatenation creates.
    let source = "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}\
                  {% endfor %}{{ ns.s | length }}";
    assert!(matches!(
        fails_with(source, &user("x")),
        ChatError::OutOfFuel { .. }
    ));
}

#[test]
fn huge_output_is_cut_at_the_limit() {
    let source = "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}";
    assert_eq!(
        fails_with(source, &user("x")),
        ChatError::OutputTooLarge {
            limit: DEFAULT_MAX_OUTPUT
        }
    );
    // A smaller limit, set by the caller, applies exactly.
    let options = ChatOptions {
        max_output: 10,
        ..ChatOptions::default()
    };
    let t = ChatTemplate::with_options(
        "{{ messages[0].content }}",
        SpecialStrings::default(),
        options,
    )
    .unwrap();
    assert_eq!(t.render(&user("0123456789"), false).unwrap(), "0123456789");
    assert_eq!(
        t.render(&user("0123456789a"), false),
        Err(ChatError::OutputTooLarge { limit: 10 })
    );
}

#[test]
fn a_macro_calling_itself_hits_the_recursion_limit() {
    let source = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
    assert_eq!(
        fails_with(source, &user("x")),
        ChatError::RecursionLimit {
            limit: emberlm_formats::chat::DEFAULT_RECURSION_LIMIT
        }
    );
    let recursive_loop = "{% for m in [[1]] recursive %}{{ loop([[1]]) }}{% endfor %}";
    assert!(matches!(
        fails_with(recursive_loop, &user("x")),
        ChatError::RecursionLimit { .. }
    ));
}

#[test]
fn a_syntax_error_names_its_line() {
    let source = "{% for m in messages %}\n{{ m.content }}\n{% if m.role %}\n{% endfor %}";
    let err = ChatTemplate::new(source, SpecialStrings::default()).unwrap_err();
    assert!(
        matches!(&err, ChatError::Syntax { line: Some(4), .. }),
        "{err:?}"
    );
    let unclosed = "hello\n{{ messages[0].content }\n";
    assert_eq!(
        ChatTemplate::new(unclosed, SpecialStrings::default()).unwrap_err(),
        ChatError::Syntax {
            line: Some(2),
            message: "unexpected `}`, expected end of variable block".into()
        }
    );
    // transformers' assistant-mask tag is not supported.
    let generation = "{% generation %}{{ messages[0].content }}{% endgeneration %}";
    assert!(matches!(
        ChatTemplate::new(generation, SpecialStrings::default()),
        Err(ChatError::Syntax { line: Some(1), .. })
    ));
}

#[test]
fn raise_exception_carries_the_templates_message() {
    let source =
        "\n{% if messages | length > 1 %}{{ raise_exception('one ' ~ 'turn only') }}{% endif %}ok";
    let two = [Message::new("user", "a"), Message::new("assistant", "b")];
    assert_eq!(
        fails_with(source, &two),
        ChatError::Template("one turn only".into())
    );
    // From inside a macro, too.
    let in_macro = "{% macro check(m) %}{{ raise_exception('bad role: ' + m.role) }}{% endmacro %}\
                    {% for m in messages %}{{ check(m) }}{% endfor %}";
    assert_eq!(
        fails_with(in_macro, &user("x")),
        ChatError::Template("bad role: user".into())
    );
}

#[test]
fn other_render_failures_are_typed_with_their_line() {
    let source = "a\nb\n{{ messages[0].nothing.deeper }}";
    let err = fails_with(source, &user("x"));
    assert!(
        matches!(&err, ChatError::Render { line: Some(3), .. }),
        "{err:?}"
    );
}

#[test]
fn context_rules() {
    let t = ChatTemplate::new(
        "{{ tools }}|{{ documents }}|{{ bos_token }}|{{ flag }}",
        SpecialStrings::default(),
    )
    .unwrap();
    assert_eq!(t.render(&[], false), Err(ChatError::EmptyConversation));
    // Undefined special tokens print as nothing, tools and documents as Python's None.
    assert_eq!(t.render(&user("x"), false).unwrap(), "None|None||");
    assert_eq!(
        t.render_with(&user("x"), false, &[("flag", Value::from(false))])
            .unwrap(),
        "None|None||False"
    );
    assert_eq!(
        t.render_with(&user("x"), false, &[("messages", Value::from(1))]),
        Err(ChatError::ReservedName("messages".into()))
    );
}
