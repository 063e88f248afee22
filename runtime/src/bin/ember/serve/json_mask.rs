//! Structured output: `response_format` `{"type": "json_object"}` and `{"type": "json_schema"}`
//! enforced while sampling. A JSON Schema is compiled into a small graph of [`Schema`] nodes; a
//! pushdown recognizer ([`State`]) follows the text written so far through that graph; each step,
//! [`mask`] sets to −∞ every token whose text would leave the output unable to become a value
//! that validates. `json_object` is the schema `{"type": "object"}`.
//!
//! Decision: our own schema-driven recognizer rather than llguidance. The subset people use for
//! tool calls and extraction (types, properties/required, enum/const, items, min/maxItems,
//! anyOf, local `$ref`) is a few hundred lines over a JSON recognizer we already had;
//! llguidance brings a grammar compiler, its own tokenizer bridge and ~40 crates into a binary
//! meant to stay small and build on a Pi. Keywords outside the subset (`pattern`, `minLength`,
//! `minimum`, `format`, `oneOf`, ...) are refused with an error naming the keyword and where it
//! is, never silently ignored.
//!
//! What is generated, always a value that validates:
//! - objects hold only declared properties (each at most once, in any order, every `required`
//!   one before `}`), even when `additionalProperties` is absent; an object schema without
//!   `properties` allows any keys with any values (unless `additionalProperties: false`: `{}`);
//! - `enum`/`const` values are written as serde_json's compact text of the value, and only the
//!   values that also satisfy the schema's other keywords (e.g. `type`) are offered;
//! - numbers: at most 15 digits before and after the point and 2 exponent digits; integers
//!   without a fraction or exponent; whitespace outside strings in runs of at most 2; no `\u`
//!   escapes of surrogates (the character itself is written instead).
//!
//! `max_tokens` or the context can cut an answer before the value closes (finish_reason
//! `length`, as OpenAI does): the text is then a prefix of a valid value. If no token of the
//! vocabulary can continue (a recursive schema at the depth limit), the answer ends the same way.
//!
//! Cost: the vocabulary is a trie over token text ([`Vocab`], built once); the mask walks it
//! depth first, feeding one character per edge and skipping a whole subtree as soon as its
//! prefix is refused. Inside a string, where a character other than `"`, `\` or a control
//! character changes nothing, the mask jumps from one node holding such a character to the next
//! (precomputed), allowing the tokens in between as one range. So the cost per step follows the tokens that can continue, not the vocabulary
//! (README: measured times).

use serde_json::{Map, Value};

/// Containers open at once at most (a bound on the stack).
pub(crate) const MAX_DEPTH: usize = 64;
/// Whitespace characters in a row allowed outside strings.
const MAX_WS_RUN: u8 = 2;
/// Alternatives (from `anyOf`) followed at once at most; more are dropped (what remains is
/// still valid).
const MAX_ALTS: usize = 64;
/// `anyOf` expansions per character at most (a `$ref` cycle that reads no input ends here).
const MAX_EXPANSIONS: usize = 256;
/// Nodes in a compiled schema at most.
const MAX_NODES: usize = 4096;
/// Nesting of a schema document at most.
const MAX_SCHEMA_DEPTH: usize = 32;
/// Properties of one object, values of one `enum` at most (bit sets of a `u64`).
const MAX_KEYS: usize = 64;
/// Digits of an integer part or a fraction at most, and of an exponent.
const MAX_DIGITS: u8 = 15;
const MAX_EXP_DIGITS: u8 = 2;

type Id = u32;

/// A schema node: what one JSON value may be.
#[derive(Clone, Debug, PartialEq)]
enum Node {
    /// `keys[i]` is the JSON text of property i's name (with its quotes), its value
    /// `values[i]`; `open`: no declared keys, any key with any value.
    Object {
        keys: Vec<Box<[u8]>>,
        values: Vec<Id>,
        required: u64,
        open: bool,
    },
    Array {
        items: Id,
        min: u32,
        max: u32,
    },
    String,
    Number {
        integer: bool,
    },
    /// Exactly one of these JSON texts.
    Literals(Vec<Box<[u8]>>),
    AnyOf(Vec<Id>),
}

// Nodes every schema starts with.
const ANY: Id = 0;
const ANY_OBJECT: Id = 1;
const ANY_ARRAY: Id = 2;
const STRING: Id = 3;
const NUMBER: Id = 4;
const INTEGER: Id = 5;
const BOOLEAN: Id = 7;
const NULL: Id = 8;

fn base_nodes() -> Vec<Node> {
    let lits = |l: &[&str]| Node::Literals(l.iter().map(|s| s.as_bytes().into()).collect());
    vec![
        Node::AnyOf(vec![ANY_OBJECT, ANY_ARRAY, STRING, NUMBER, 6]),
        Node::Object {
            keys: vec![],
            values: vec![],
            required: 0,
            open: true,
        },
        Node::Array {
            items: ANY,
            min: 0,
            max: u32::MAX,
        },
        Node::String,
        Node::Number { integer: false },
        Node::Number { integer: true },
        lits(&["true", "false", "null"]),
        lits(&["true", "false"]),
        lits(&["null"]),
    ]
}

/// A compiled schema.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Schema {
    nodes: Vec<Node>,
    root: Id,
}

/// Why a schema was refused: the message and the JSON pointer of the part at fault.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SchemaError {
    pub(crate) path: String,
    pub(crate) message: String,
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{} at the schema's root", self.message)
        } else {
            write!(f, "{} at {}", self.message, self.path)
        }
    }
}

/// Keywords that describe and constrain nothing.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$comment",
    "$schema",
    "$id",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$defs",
    "definitions",
];
const STRUCTURAL: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "enum",
    "const",
    "anyOf",
    "allOf",
    "$ref",
];

impl Schema {
    /// `{"type": "object"}`: any JSON object (`json_object`).
    pub(crate) fn object() -> Schema {
        Schema {
            nodes: base_nodes(),
            root: ANY_OBJECT,
        }
    }

    /// Compiles a JSON Schema document, or names the first keyword outside the subset.
    pub(crate) fn compile(doc: &Value) -> Result<Schema, SchemaError> {
        let mut c = Compiler {
            nodes: base_nodes(),
            doc,
            refs: vec![],
            depth: 0,
        };
        let root = c.node(doc, "")?;
        Ok(Schema {
            nodes: c.nodes,
            root,
        })
    }
}

struct Compiler<'a> {
    nodes: Vec<Node>,
    doc: &'a Value,
    refs: Vec<(String, Id)>,
    depth: usize,
}

fn err(path: &str, message: impl Into<String>) -> SchemaError {
    SchemaError {
        path: path.to_string(),
        message: message.into(),
    }
}

/// `path` + `/` + `key` as a JSON pointer.
fn child(path: &str, key: &str) -> String {
    format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"))
}

impl Compiler<'_> {
    fn push(&mut self, n: Node, path: &str) -> Result<Id, SchemaError> {
        if self.nodes.len() >= MAX_NODES {
            return Err(err(
                path,
                format!("the schema has more than {MAX_NODES} parts"),
            ));
        }
        self.nodes.push(n);
        Ok((self.nodes.len() - 1) as Id)
    }

    fn node(&mut self, s: &Value, path: &str) -> Result<Id, SchemaError> {
        if self.depth >= MAX_SCHEMA_DEPTH {
            return Err(err(
                path,
                format!("the schema nests deeper than {MAX_SCHEMA_DEPTH}"),
            ));
        }
        self.depth += 1;
        let r = match s {
            Value::Bool(true) => Ok(ANY),
            Value::Bool(false) => Err(err(path, "the schema `false` accepts nothing")),
            Value::Object(m) => self.object_schema(m, path),
            _ => Err(err(path, "a schema must be an object or a boolean")),
        };
        self.depth -= 1;
        r
    }

    fn object_schema(&mut self, m: &Map<String, Value>, path: &str) -> Result<Id, SchemaError> {
        for k in m.keys() {
            if !ANNOTATIONS.contains(&k.as_str()) && !STRUCTURAL.contains(&k.as_str()) {
                return Err(err(path, format!("unsupported JSON Schema keyword `{k}`")));
            }
        }
        let structural: Vec<&str> = STRUCTURAL
            .iter()
            .copied()
            .filter(|k| m.contains_key(*k))
            .collect();
        let alone = |k: &str| -> Result<(), SchemaError> {
            match structural.iter().find(|&&o| o != k) {
                Some(o) => Err(err(
                    path,
                    format!("`{k}` together with `{o}` is not supported (use `{k}` alone)"),
                )),
                None => Ok(()),
            }
        };
        if let Some(r) = m.get("$ref") {
            alone("$ref")?;
            return self.reference(r, &child(path, "$ref"));
        }
        if let Some(a) = m.get("allOf") {
            alone("allOf")?;
            return match a.as_array().map(Vec::as_slice) {
                Some([one]) => self.node(one, &child(path, "allOf/0")),
                _ => Err(err(
                    &child(path, "allOf"),
                    "`allOf` is supported with exactly one schema",
                )),
            };
        }
        if let Some(a) = m.get("anyOf") {
            alone("anyOf")?;
            let p = child(path, "anyOf");
            let list = match a.as_array() {
                Some(l) if !l.is_empty() => l,
                _ => return Err(err(&p, "`anyOf` must be a non-empty array of schemas")),
            };
            let mut ids = Vec::with_capacity(list.len());
            for (i, s) in list.iter().enumerate() {
                ids.push(self.node(s, &child(&p, &i.to_string()))?);
            }
            return self.push(Node::AnyOf(ids), path);
        }
        let types: Vec<&str> = match m.get("type") {
            None => {
                if ["properties", "required", "additionalProperties"]
                    .iter()
                    .any(|k| m.contains_key(*k))
                {
                    vec!["object"]
                } else if ["items", "minItems", "maxItems"]
                    .iter()
                    .any(|k| m.contains_key(*k))
                {
                    vec!["array"]
                } else {
                    vec![]
                }
            }
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(l)) if !l.is_empty() => {
                let mut v = Vec::with_capacity(l.len());
                for t in l {
                    match t.as_str() {
                        Some(t) if !v.contains(&t) => v.push(t),
                        _ => {
                            return Err(err(
                                &child(path, "type"),
                                "`type` must hold distinct type names",
                            ));
                        }
                    }
                }
                v
            }
            Some(_) => {
                return Err(err(
                    &child(path, "type"),
                    "`type` must be a type name or an array of them",
                ));
            }
        };
        let mut ids = Vec::with_capacity(types.len());
        for t in &types {
            ids.push(match *t {
                "object" => self.object(m, path)?,
                "array" => self.array(m, path)?,
                "string" => STRING,
                "number" => NUMBER,
                "integer" => INTEGER,
                "boolean" => BOOLEAN,
                "null" => NULL,
                other => {
                    return Err(err(&child(path, "type"), format!("unknown type {other:?}")));
                }
            });
        }
        let base = match ids.as_slice() {
            [] => ANY,
            [one] => *one,
            _ => self.push(Node::AnyOf(ids), path)?,
        };
        let (values, p) = match (m.get("enum"), m.get("const")) {
            (Some(_), Some(_)) => return Err(err(path, "`enum` together with `const`")),
            (Some(Value::Array(l)), None) if !l.is_empty() => (l.as_slice(), child(path, "enum")),
            (Some(_), None) => {
                return Err(err(
                    &child(path, "enum"),
                    "`enum` must be a non-empty array",
                ));
            }
            (None, Some(v)) => (std::slice::from_ref(v), child(path, "const")),
            (None, None) => return Ok(base),
        };
        if values.len() > MAX_KEYS {
            return Err(err(&p, format!("more than {MAX_KEYS} values")));
        }
        // Only the values the rest of the schema accepts (e.g. `type`).
        let mut texts: Vec<Box<[u8]>> = Vec::with_capacity(values.len());
        for v in values {
            let text = v.to_string();
            let mut st = State::at(&self.nodes, base);
            if st.feed_nodes(&self.nodes, &text)
                && st.live().iter().any(|a| a.accepting(&self.nodes))
                && !texts.iter().any(|t| **t == *text.as_bytes())
            {
                texts.push(text.into_bytes().into());
            }
        }
        if texts.is_empty() {
            return Err(err(&p, "no value matches the schema's other keywords"));
        }
        self.push(Node::Literals(texts), path)
    }

    fn object(&mut self, m: &Map<String, Value>, path: &str) -> Result<Id, SchemaError> {
        let mut keys: Vec<Box<[u8]>> = vec![];
        let mut values: Vec<Id> = vec![];
        if let Some(props) = m.get("properties") {
            let pp = child(path, "properties");
            let Value::Object(props) = props else {
                return Err(err(&pp, "`properties` must be an object"));
            };
            if props.len() > MAX_KEYS {
                return Err(err(&pp, format!("more than {MAX_KEYS} properties")));
            }
            for (k, s) in props {
                keys.push(Value::String(k.clone()).to_string().into_bytes().into());
                values.push(self.node(s, &child(&pp, k))?);
            }
        }
        let additional = match m.get("additionalProperties") {
            None | Some(Value::Bool(true)) => true,
            Some(Value::Bool(false)) => false,
            Some(Value::Object(o)) if o.is_empty() => true,
            Some(_) => {
                return Err(err(
                    &child(path, "additionalProperties"),
                    "`additionalProperties` must be true or false (a schema is not supported)",
                ));
            }
        };
        let mut required = 0u64;
        if let Some(r) = m.get("required") {
            let rp = child(path, "required");
            let Value::Array(r) = r else {
                return Err(err(&rp, "`required` must be an array of names"));
            };
            for name in r {
                let Some(name) = name.as_str() else {
                    return Err(err(&rp, "`required` must be an array of names"));
                };
                let text = Value::String(name.to_string()).to_string();
                match keys.iter().position(|k| **k == *text.as_bytes()) {
                    Some(i) => required |= 1 << i,
                    None => {
                        return Err(err(
                            &rp,
                            format!("required property {name:?} is not declared in `properties`"),
                        ));
                    }
                }
            }
        }
        let open = keys.is_empty() && additional;
        self.push(
            Node::Object {
                keys,
                values,
                required,
                open,
            },
            path,
        )
    }

    fn array(&mut self, m: &Map<String, Value>, path: &str) -> Result<Id, SchemaError> {
        let items = match m.get("items") {
            None => ANY,
            Some(Value::Array(_)) => {
                return Err(err(
                    &child(path, "items"),
                    "`items` as an array (tuples) is not supported",
                ));
            }
            Some(s) => self.node(s, &child(path, "items"))?,
        };
        let bound = |k: &str, default: u32| -> Result<u32, SchemaError> {
            match m.get(k) {
                None => Ok(default),
                Some(v) => v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        err(&child(path, k), format!("`{k}` must be a whole number ≥ 0"))
                    }),
            }
        };
        let (min, max) = (bound("minItems", 0)?, bound("maxItems", u32::MAX)?);
        if min > max {
            return Err(err(path, "`minItems` is larger than `maxItems`"));
        }
        self.push(Node::Array { items, min, max }, path)
    }

    /// A local reference: `#`, `#/$defs/NAME` or any JSON pointer into the document.
    fn reference(&mut self, r: &Value, path: &str) -> Result<Id, SchemaError> {
        let Some(r) = r.as_str() else {
            return Err(err(path, "`$ref` must be a string"));
        };
        if let Some(&(_, id)) = self.refs.iter().find(|(s, _)| s == r) {
            return Ok(id);
        }
        let Some(pointer) = r.strip_prefix('#') else {
            return Err(err(path, "only local references (`#/...`) are supported"));
        };
        let Some(target) = self.doc.pointer(pointer) else {
            return Err(err(path, format!("`{r}` points to nothing in the schema")));
        };
        // A placeholder first, so that a recursive reference finds it.
        let id = self.push(Node::AnyOf(vec![]), path)?;
        self.refs.push((r.to_string(), id));
        let body = self.node(target, r)?;
        self.nodes[id as usize] = Node::AnyOf(vec![body]);
        Ok(id)
    }
}

/// An open container and where in it the text is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    Obj { node: Id, used: u64, st: ObjSt },
    Arr { node: Id, count: u32, st: ArrSt },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ObjSt {
    /// Right after `{`: a key or `}`.
    KeyOrEnd,
    /// After `,`: a key.
    Key,
    /// After key number .0 (`FREE`: an undeclared key of an open object): `:`.
    Colon(u8),
    CommaOrEnd,
}
const FREE: u8 = u8::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ArrSt {
    /// Right after `[`.
    Open,
    CommaOrEnd,
}

/// The token being lexed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    None,
    /// A string with any content (`key`: an open object's key); `esc`: after `\`; `hex`: \u
    /// digits left.
    Str {
        key: bool,
        esc: bool,
        hex: u8,
    },
    /// A declared key of the innermost object: the candidates (bits) and bytes matched.
    Key {
        cand: u64,
        pos: u16,
    },
    /// One of a `Literals` node's texts.
    Lit {
        node: Id,
        cand: u64,
        pos: u16,
    },
    Num {
        st: Num,
        integer: bool,
        digits: u8,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Num {
    fn complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::Exp)
    }
}

/// One way the text so far can continue (anyOf makes several).
#[derive(Debug, PartialEq)]
struct Alt {
    stack: Vec<Frame>,
    /// A value of this node comes next (never an `AnyOf`: those are expanded into alternatives).
    want: Option<Id>,
    lex: Lex,
    ws: u8,
}

impl Clone for Alt {
    fn clone(&self) -> Alt {
        Alt {
            stack: self.stack.clone(),
            want: self.want,
            lex: self.lex,
            ws: self.ws,
        }
    }

    // Reuses the stack's allocation: the mask clones states in its inner loop.
    fn clone_from(&mut self, src: &Alt) {
        self.stack.clone_from(&src.stack);
        self.want = src.want;
        self.lex = src.lex;
        self.ws = src.ws;
    }
}

fn has(set: u64, i: usize) -> bool {
    (set >> i) & 1 == 1
}

fn bits(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

impl Alt {
    fn done(&self) -> bool {
        self.stack.is_empty() && self.want.is_none() && self.lex == Lex::None
    }

    fn accepting(&self, nodes: &[Node]) -> bool {
        self.stack.is_empty()
            && self.want.is_none()
            && match self.lex {
                Lex::None => true,
                Lex::Num { st, .. } => st.complete(),
                Lex::Lit { node, cand, pos } => lit_complete(nodes, node, cand, pos).is_some(),
                _ => false,
            }
    }

    /// Feeds one character; false when the text stops being a prefix of a valid value.
    fn push(&mut self, nodes: &[Node], c: char) -> bool {
        match self.lex {
            Lex::Str { key, esc, hex } => {
                self.lex = if hex > 0 {
                    // `hex` 5: after `\uD`, where 8..F would start a surrogate: refused (lone
                    // ones are not Unicode text; write the character itself).
                    let ok = match hex {
                        5 => matches!(c, '0'..='7'),
                        _ => c.is_ascii_hexdigit(),
                    };
                    if !ok {
                        return false;
                    }
                    let hex = match (hex, c) {
                        (4, 'd' | 'D') => 5,
                        (5, _) => 2,
                        _ => hex - 1,
                    };
                    Lex::Str {
                        key,
                        esc: false,
                        hex,
                    }
                } else if esc {
                    match c {
                        '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't' => Lex::Str {
                            key,
                            esc: false,
                            hex: 0,
                        },
                        'u' => Lex::Str {
                            key,
                            esc: false,
                            hex: 4,
                        },
                        _ => return false,
                    }
                } else {
                    match c {
                        '"' => {
                            self.lex = Lex::None;
                            if key {
                                self.set_top_obj(ObjSt::Colon(FREE));
                            } else {
                                self.value_done();
                            }
                            return true;
                        }
                        '\\' => Lex::Str {
                            key,
                            esc: true,
                            hex: 0,
                        },
                        c if (c as u32) < 0x20 => return false,
                        _ => return true,
                    }
                };
                true
            }
            Lex::Num {
                st,
                integer,
                digits,
            } => {
                let digit = c.is_ascii_digit();
                let next = match (st, c) {
                    (Num::Minus, '0') => Some((Num::Zero, 1)),
                    (Num::Minus, '1'..='9') => Some((Num::Int, 1)),
                    (Num::Int, _) if digit && digits < MAX_DIGITS => Some((Num::Int, digits + 1)),
                    (Num::Zero | Num::Int, '.') if !integer => Some((Num::Dot, 0)),
                    (Num::Dot, _) if digit => Some((Num::Frac, 1)),
                    (Num::Frac, _) if digit && digits < MAX_DIGITS => Some((Num::Frac, digits + 1)),
                    (Num::Zero | Num::Int | Num::Frac, 'e' | 'E') if !integer => Some((Num::E, 0)),
                    (Num::E, '+' | '-') => Some((Num::ESign, 0)),
                    (Num::E | Num::ESign, _) if digit => Some((Num::Exp, 1)),
                    (Num::Exp, _) if digit && digits < MAX_EXP_DIGITS => {
                        Some((Num::Exp, digits + 1))
                    }
                    _ => None,
                };
                match next {
                    Some((st, digits)) => {
                        self.lex = Lex::Num {
                            st,
                            integer,
                            digits,
                        };
                        true
                    }
                    None if st.complete() && !digit => {
                        self.lex = Lex::None;
                        self.value_done();
                        self.structural(nodes, c)
                    }
                    None => false,
                }
            }
            Lex::Key { cand, pos } => {
                let Some(Frame::Obj { node, .. }) = self.stack.last() else {
                    return false;
                };
                let Node::Object { keys, .. } = &nodes[*node as usize] else {
                    return false;
                };
                let Some((cand, pos)) = lit_advance(keys, cand, pos, c) else {
                    return false;
                };
                // A key's text ends with its closing quote: at most one is complete, and it is
                // no other key's prefix.
                match (0..keys.len()).find(|&i| has(cand, i) && keys[i].len() == pos as usize) {
                    Some(i) => {
                        self.lex = Lex::None;
                        if let Some(Frame::Obj { used, .. }) = self.stack.last_mut() {
                            *used |= 1 << i;
                        }
                        self.set_top_obj(ObjSt::Colon(i as u8));
                    }
                    None => self.lex = Lex::Key { cand, pos },
                }
                true
            }
            Lex::Lit { node, cand, pos } => self.lit_push(nodes, node, cand, pos, c),
            Lex::None => self.structural(nodes, c),
        }
    }

    fn lit_push(&mut self, nodes: &[Node], node: Id, cand: u64, pos: u16, c: char) -> bool {
        let Node::Literals(lits) = &nodes[node as usize] else {
            return false;
        };
        match lit_advance(lits, cand, pos, c) {
            Some((cand, pos)) => {
                let all_complete =
                    (0..lits.len()).all(|i| !has(cand, i) || lits[i].len() == pos as usize);
                if all_complete {
                    self.lex = Lex::None;
                    self.value_done();
                } else {
                    self.lex = Lex::Lit { node, cand, pos };
                }
                true
            }
            // `1` of the literals `1` and `12`, ended by what follows.
            None if lit_complete(nodes, node, cand, pos).is_some() => {
                self.lex = Lex::None;
                self.value_done();
                self.structural(nodes, c)
            }
            None => false,
        }
    }

    fn set_top_obj(&mut self, to: ObjSt) {
        if let Some(Frame::Obj { st, .. }) = self.stack.last_mut() {
            *st = to;
        }
    }

    /// A value just ended.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Obj { st, .. }) => *st = ObjSt::CommaOrEnd,
            Some(Frame::Arr { count, st, .. }) => {
                *count = count.saturating_add(1);
                *st = ArrSt::CommaOrEnd;
            }
            None => {}
        }
    }

    fn close(&mut self) -> bool {
        self.stack.pop();
        self.value_done();
        true
    }

    fn structural(&mut self, nodes: &[Node], c: char) -> bool {
        if matches!(c, ' ' | '\t' | '\n' | '\r') {
            if self.done() {
                return false;
            }
            self.ws += 1;
            return self.ws <= MAX_WS_RUN;
        }
        self.ws = 0;
        if let Some(n) = self.want {
            if c == ']' {
                if let Some(&Frame::Arr {
                    node,
                    count: 0,
                    st: ArrSt::Open,
                }) = self.stack.last()
                {
                    if matches!(nodes[node as usize], Node::Array { min: 0, .. }) {
                        self.want = None;
                        return self.close();
                    }
                }
            }
            self.want = None;
            return self.start(nodes, n, c);
        }
        let Some(&top) = self.stack.last() else {
            return false; // done
        };
        match top {
            Frame::Obj { node, used, st } => {
                let Node::Object {
                    keys,
                    values,
                    required,
                    open,
                } = &nodes[node as usize]
                else {
                    return false;
                };
                let left = bits(keys.len()) & !used;
                match (st, c) {
                    (ObjSt::KeyOrEnd | ObjSt::Key, '"') if *open => {
                        self.lex = Lex::Str {
                            key: true,
                            esc: false,
                            hex: 0,
                        };
                        true
                    }
                    (ObjSt::KeyOrEnd | ObjSt::Key, '"') if left != 0 => {
                        // Every key's text starts with its quote.
                        self.lex = Lex::Key { cand: left, pos: 1 };
                        true
                    }
                    (ObjSt::KeyOrEnd | ObjSt::CommaOrEnd, '}') if used & required == *required => {
                        self.close()
                    }
                    (ObjSt::Colon(k), ':') => {
                        self.want = Some(values.get(k as usize).copied().unwrap_or(ANY));
                        true
                    }
                    (ObjSt::CommaOrEnd, ',') if *open || left != 0 => {
                        self.set_top_obj(ObjSt::Key);
                        true
                    }
                    _ => false,
                }
            }
            Frame::Arr { node, count, st } => {
                let Node::Array { items, min, max } = nodes[node as usize] else {
                    return false;
                };
                match (st, c) {
                    (_, ']') if count >= min => self.close(),
                    (ArrSt::CommaOrEnd, ',') if count < max => {
                        self.want = Some(items);
                        true
                    }
                    _ => false,
                }
            }
        }
    }

    /// Starts a value of node `n` with `c`.
    fn start(&mut self, nodes: &[Node], n: Id, c: char) -> bool {
        match &nodes[n as usize] {
            Node::Object { .. } if c == '{' && self.stack.len() < MAX_DEPTH => {
                self.stack.push(Frame::Obj {
                    node: n,
                    used: 0,
                    st: ObjSt::KeyOrEnd,
                });
                true
            }
            Node::Array { items, max, .. } if c == '[' && self.stack.len() < MAX_DEPTH => {
                self.stack.push(Frame::Arr {
                    node: n,
                    count: 0,
                    st: ArrSt::Open,
                });
                if *max > 0 {
                    self.want = Some(*items);
                }
                true
            }
            Node::String if c == '"' => {
                self.lex = Lex::Str {
                    key: false,
                    esc: false,
                    hex: 0,
                };
                true
            }
            Node::Number { integer } => {
                let st = match c {
                    '-' => Num::Minus,
                    '0' => Num::Zero,
                    '1'..='9' => Num::Int,
                    _ => return false,
                };
                self.lex = Lex::Num {
                    st,
                    integer: *integer,
                    digits: u8::from(c != '-'),
                };
                true
            }
            Node::Literals(lits) => self.lit_push(nodes, n, bits(lits.len()), 0, c),
            _ => false,
        }
    }
}

/// The candidates among `lits` (bits of `cand`, `pos` bytes matched) that `c` continues.
fn lit_advance(lits: &[Box<[u8]>], cand: u64, pos: u16, c: char) -> Option<(u64, u16)> {
    let mut buf = [0u8; 4];
    let b = c.encode_utf8(&mut buf).as_bytes();
    let p = pos as usize;
    let mut next = 0u64;
    for (i, l) in lits.iter().enumerate() {
        if has(cand, i) && l.get(p..p + b.len()) == Some(b) {
            next |= 1 << i;
        }
    }
    (next != 0).then_some((next, (p + b.len()) as u16))
}

/// The candidate literal matched whole, if one is.
fn lit_complete(nodes: &[Node], node: Id, cand: u64, pos: u16) -> Option<usize> {
    let Node::Literals(lits) = &nodes[node as usize] else {
        return None;
    };
    (0..lits.len()).find(|&i| has(cand, i) && lits[i].len() == pos as usize)
}

/// The recognizer's state after the text so far: the alternatives still alive.
#[derive(Clone, Debug)]
pub(crate) struct State {
    /// The first `len` are alive; the rest keep their allocations for reuse.
    alts: Vec<Alt>,
    len: usize,
}

impl State {
    /// Before the first character: a value of the schema's root comes.
    pub(crate) fn new(schema: &Schema) -> State {
        State::at(&schema.nodes, schema.root)
    }

    /// Before a value of node `root` of `nodes`.
    fn at(nodes: &[Node], root: Id) -> State {
        let mut s = State {
            alts: vec![Alt {
                stack: Vec::with_capacity(8),
                want: Some(root),
                lex: Lex::None,
                ws: 0,
            }],
            len: 1,
        };
        s.expand(nodes);
        s
    }

    fn empty() -> State {
        State {
            alts: vec![],
            len: 0,
        }
    }

    fn live(&self) -> &[Alt] {
        &self.alts[..self.len]
    }

    /// The text so far is a whole valid value (the answer may end here).
    pub(crate) fn accepting(&self, schema: &Schema) -> bool {
        self.live().iter().any(|a| a.accepting(&schema.nodes))
    }

    /// The value is closed: no character can follow.
    pub(crate) fn done(&self) -> bool {
        self.len > 0 && self.live().iter().all(Alt::done)
    }

    /// Feeds `s`; false (the state then undefined) when the text stops being a valid prefix.
    pub(crate) fn feed(&mut self, schema: &Schema, s: &str) -> bool {
        self.feed_nodes(&schema.nodes, s)
    }

    fn feed_nodes(&mut self, nodes: &[Node], s: &str) -> bool {
        let mut next = State::empty();
        for c in s.chars() {
            self.step_into(nodes, c, &mut next);
            std::mem::swap(self, &mut next);
            if self.len == 0 {
                return false;
            }
        }
        true
    }

    /// Inside a string in every alternative, where a plain character changes nothing.
    pub(crate) fn plain_string(&self) -> bool {
        self.live().iter().all(|a| {
            matches!(
                a.lex,
                Lex::Str {
                    esc: false,
                    hex: 0,
                    ..
                }
            )
        })
    }

    fn push_clone(&mut self, a: &Alt) {
        if self.len < self.alts.len() {
            self.alts[self.len].clone_from(a);
        } else {
            self.alts.push(a.clone());
        }
        self.len += 1;
    }

    fn remove(&mut self, i: usize) {
        self.alts.swap(i, self.len - 1);
        self.len -= 1;
    }

    /// `out` = this state after `c` (possibly empty).
    fn step_into(&self, nodes: &[Node], c: char, out: &mut State) {
        out.len = 0;
        for a in self.live() {
            out.push_clone(a);
            if !out.alts[out.len - 1].push(nodes, c) {
                out.len -= 1;
            }
        }
        out.expand(nodes);
        let mut i = 1;
        while i < out.len {
            if out.alts[..i].contains(&out.alts[i]) {
                out.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Replaces every alternative that wants an `AnyOf` by one per branch.
    fn expand(&mut self, nodes: &[Node]) {
        let mut budget = MAX_EXPANSIONS;
        let mut i = 0;
        while i < self.len {
            let Some(Node::AnyOf(branches)) = self.alts[i].want.map(|n| &nodes[n as usize]) else {
                i += 1;
                continue;
            };
            if branches.is_empty() || budget == 0 {
                self.remove(i);
                continue;
            }
            budget -= 1;
            for &b in &branches[1..] {
                if self.len >= MAX_ALTS {
                    break;
                }
                let a = self.alts[i].clone();
                self.push_clone(&a);
                self.alts[self.len - 1].want = Some(b);
            }
            self.alts[i].want = Some(branches[0]);
        }
    }
}

/// The vocabulary as a trie over token text, in depth-first order: node `i` is one character
/// at `depth[i]` (0: a token's first), its subtree is `i..end[i]`, its own tokens
/// `ids[tok[i]..tok[i + 1]]` and its subtree's `ids[tok[i]..tok[end[i]]]`.
pub(crate) struct Vocab {
    chars: Vec<char>,
    depth: Vec<u16>,
    end: Vec<u32>,
    tok: Vec<u32>,
    ids: Vec<u32>,
    /// `next_special[i]`: the first node at or after `i` whose character changes a string's
    /// state (`"`, `\`, control), or the node count.
    next_special: Vec<u32>,
    max_depth: usize,
}

impl Vocab {
    /// Nodes of the trie.
    #[cfg_attr(not(test), allow(dead_code))] // reported by the mask_cost measurement
    pub(crate) fn nodes(&self) -> usize {
        self.chars.len()
    }
}

fn changes_string(c: char) -> bool {
    c == '"' || c == '\\' || (c as u32) < 0x20
}

impl Vocab {
    /// `texts[id]`: token id's text (`None`: never allowed, e.g. special tokens).
    pub(crate) fn new(texts: &[Option<String>]) -> Vocab {
        let mut order: Vec<(Vec<char>, u32)> = (texts.iter().enumerate())
            .filter_map(|(id, t)| match t {
                Some(t) if !t.is_empty() => Some((t.chars().collect(), id as u32)),
                _ => None,
            })
            .collect();
        order.sort_unstable();
        let mut v = Vocab {
            chars: vec![],
            depth: vec![],
            end: vec![],
            tok: vec![],
            ids: Vec::with_capacity(order.len()),
            next_special: vec![],
            max_depth: 0,
        };
        let mut path: Vec<usize> = vec![];
        let mut prev: &[char] = &[];
        for (t, id) in &order {
            let common = prev.iter().zip(t).take_while(|(a, b)| a == b).count();
            for &n in &path[common..] {
                v.end[n] = v.chars.len() as u32;
            }
            path.truncate(common);
            for (k, &c) in t.iter().enumerate().skip(common) {
                path.push(v.chars.len());
                v.chars.push(c);
                v.depth.push(k as u16);
                v.end.push(0);
                v.tok.push(v.ids.len() as u32);
            }
            // Identical texts follow each other: the same (last made) node.
            v.ids.push(*id);
            v.max_depth = v.max_depth.max(t.len());
            prev = t;
        }
        for &n in &path {
            v.end[n] = v.chars.len() as u32;
        }
        v.tok.push(v.ids.len() as u32);
        let mut next = v.chars.len() as u32;
        v.next_special = vec![0; v.chars.len()];
        for i in (0..v.chars.len()).rev() {
            if changes_string(v.chars[i]) {
                next = i as u32;
            }
            v.next_special[i] = next;
        }
        v
    }
}

/// Scratch for [`mask`]: one state per trie depth and the allowed flags, kept between calls.
pub(crate) struct Masker {
    states: Vec<State>,
    at: Vec<usize>,
    allowed: Vec<bool>,
}

impl Masker {
    pub(crate) fn new() -> Masker {
        Masker {
            states: vec![],
            at: vec![],
            allowed: vec![],
        }
    }
}

/// Sets to −∞ the logit of every token whose text would stop `state` from becoming a valid
/// value; returns how many tokens remain allowed (end-of-text tokens are the caller's).
pub(crate) fn mask(
    schema: &Schema,
    state: &State,
    vocab: &Vocab,
    m: &mut Masker,
    logits: &mut [f32],
) -> usize {
    let nodes = &schema.nodes;
    m.allowed.clear();
    m.allowed.resize(logits.len(), false);
    while m.states.len() < vocab.max_depth + 1 {
        m.states.push(State::empty());
    }
    m.at.resize(vocab.max_depth + 1, 0);
    m.states[0].clone_from(state);
    m.at[0] = 0;
    let allow = |allowed: &mut [bool], from: u32, to: u32| {
        for &id in &vocab.ids[from as usize..to as usize] {
            if let Some(a) = allowed.get_mut(id as usize) {
                *a = true;
            }
        }
    };
    let mut i = 0;
    while i < vocab.chars.len() {
        let d = vocab.depth[i] as usize;
        let c = vocab.chars[i];
        let end = vocab.end[i] as usize;
        let parent = m.at[d];
        if !changes_string(c) && m.states[parent].plain_string() {
            // Inside a string, plain characters change nothing: every node of this subtree
            // before the next special one continues the string, with the parent's state.
            let special = (vocab.next_special[i] as usize).min(end);
            allow(&mut m.allowed, vocab.tok[i], vocab.tok[special]);
            if special < end {
                // Its ancestors below `i` are plain: they share the parent's state.
                for a in &mut m.at[d + 1..=vocab.depth[special] as usize] {
                    *a = parent;
                }
            }
            i = special;
            continue;
        }
        // `parent` ≤ d < d + 1: split to borrow both.
        let (lo, hi) = m.states.split_at_mut(d + 1);
        lo[parent].step_into(nodes, c, &mut hi[0]);
        if hi[0].len == 0 {
            i = end;
            continue;
        }
        m.at[d + 1] = d + 1;
        allow(&mut m.allowed, vocab.tok[i], vocab.tok[i + 1]);
        i += 1;
    }
    let mut n = 0;
    for (l, &a) in logits.iter_mut().zip(&m.allowed) {
        if a {
            n += 1;
        } else {
            *l = f32::NEG_INFINITY;
        }
    }
    n
}
