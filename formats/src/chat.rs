//! Chat templates: a model's own Jinja template (`chat_template` in Hugging Face's
//! `tokenizer_config.json`, or `chat_template.jinja`) rendered as transformers'
//! `apply_chat_template(messages, tokenize=False)` renders it, byte for byte.
//!
//! # Why minijinja
//!
//! Chat templates are Jinja2 programs, and every Hugging Face model ships one: a hand-written
//! renderer per family would drift from the model's own file. minijinja (3.1, by Jinja's author)
//! is the Jinja engine Rust LLM servers use (text-generation-inference and mistral.rs among
//! them); with the features chosen here its only dependency is `indexmap`, and it meters
//! execution with *fuel* (instructions and bytes created), which a renderer of templates
//! downloaded from the Hub needs. minijinja-contrib 3.1's `pycompat` adds the Python string and
//! dict methods real templates call.
//!
//! # The environment (transformers' `_compile_jinja_template`)
//!
//! - `trim_blocks` and `lstrip_blocks` on; `keep_trailing_newline` off (Jinja's default, which
//!   transformers keeps): one newline at the very end of the template is dropped.
//! - `{% break %}` / `{% continue %}`, `namespace(...)`, macros, `loop.*` (with `previtem` /
//!   `nextitem`), `messages[::-1]` and the other Jinja built-ins minijinja has.
//! - `raise_exception(msg)` stops rendering with [`ChatError::Template`] carrying `msg`.
//! - `tojson` is transformers' filter: `json.dumps(x, ensure_ascii=False, indent=None,
//!   separators=None, sort_keys=False)` with the same arguments (an `indent` above 64 counts as
//!   64), no HTML escaping; maps keep insertion order as Python dicts do.
//! - `strftime_now(fmt)`: the current time formatted by `strftime`, in **UTC** (transformers uses
//!   the machine's local time); [`ChatOptions::now`] fixes the clock.
//! - Python string methods through pycompat: `strip`, `lstrip`, `rstrip`, `split`, `startswith`,
//!   `endswith`, `replace`, `upper`, `lower`, `title`, `find`, `count`, `join`, `splitlines`,
//!   `format`, `is*`, and on dicts `get`, `items`, `keys`, `values`.
//! - Printed values look as Python prints them: `None`, `True`, `False`, floats as `repr`.
//! - Undefined names and missing keys are Jinja's default `Undefined`: empty when printed, false
//!   in a test, an error when an attribute of them is read.
//! - The context is transformers': `messages` (each a map `{role, content}` in that order),
//!   `add_generation_prompt`, `tools` and `documents` (`None` unless given), the special tokens
//!   that are set (`bos_token`, `eos_token`, `pad_token`, `unk_token`), and any extra variables
//!   (e.g. `enable_thinking`), which override the special tokens as `**kwargs` do.
//!
//! Not supported: `{% generation %}` (transformers' assistant-mask extension: a syntax error
//! here), lists and dicts printed with `{{ }}` (minijinja's form, not Python's `repr`), Python
//! methods pycompat lacks (`str.partition`, `list.append`, ...), message content given as a list
//! of parts.
//!
//! # Limits
//!
//! A template is code from the Internet; rendering one is bounded by [`ChatOptions`]: `fuel`
//! (minijinja charges one unit per instruction and per 64 bytes of data it creates, so an endless
//! loop and a string that doubles in a loop both run out), a recursion limit (macro calls, nested
//! loops), and a cap on the rendered text. Each breach is its own [`ChatError`] variant. The
//! defaults ([`DEFAULT_FUEL`] 2M units, [`DEFAULT_RECURSION_LIMIT`] 100, [`DEFAULT_MAX_OUTPUT`]
//! 1 MiB) are hundreds of times what real conversations need and stop a hostile template within
//! about 50 ms. A syntax error is [`ChatError::Syntax`] with its line, found when compiling.

mod python;

use std::fmt;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::ValueKind;
use minijinja::{Environment, Error, ErrorKind, Output, State};

pub use crate::meta::SpecialStrings;
/// Template values for [`ChatTemplate::render_with`] (minijinja's, re-exported).
pub use minijinja::Value;

/// The template's name inside its environment: no extension, so no HTML auto-escaping.
const NAME: &str = "chat_template";

/// Default fuel: a 1000-message conversation (128 KB of text) through the test templates modelled
/// on Qwen3's, Gemma's and Llama 3's uses 31k to 57k units; an endless loop spends it all in
/// about 50 ms, and a string doubled in a loop stops before 128 MB (one unit per 64 bytes).
pub const DEFAULT_FUEL: u64 = 2_000_000;
/// Default recursion limit (minijinja counts macro calls, loops and includes).
pub const DEFAULT_RECURSION_LIMIT: usize = 100;
/// Default cap on the rendered text: 1 MiB, about 250k tokens of English.
pub const DEFAULT_MAX_OUTPUT: usize = 1 << 20;

/// One turn of a conversation. Any role is accepted: the template decides what it allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, or whatever the template knows.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl Message {
    /// A message from its role and text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Bounds on one render, and the clock `strftime_now` reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatOptions {
    /// minijinja fuel for one render.
    pub fuel: u64,
    /// Deepest nesting of macro calls and loops.
    pub recursion_limit: usize,
    /// Most bytes of rendered text.
    pub max_output: usize,
    /// `strftime_now` formats this time (seconds since the Unix epoch, UTC); `None`: the clock.
    pub now: Option<i64>,
}

impl Default for ChatOptions {
    fn default() -> ChatOptions {
        ChatOptions {
            fuel: DEFAULT_FUEL,
            recursion_limit: DEFAULT_RECURSION_LIMIT,
            max_output: DEFAULT_MAX_OUTPUT,
            now: None,
        }
    }
}

/// Why a template did not compile or render.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatError {
    /// The template is not valid Jinja (or uses syntax minijinja lacks).
    Syntax {
        /// 1-based line in the template source, when known.
        line: Option<usize>,
        /// minijinja's description.
        message: String,
    },
    /// The template called `raise_exception(message)`.
    Template(String),
    /// Rendering used all of [`ChatOptions::fuel`].
    OutOfFuel {
        /// The fuel the render had.
        fuel: u64,
    },
    /// Macro calls or loops nested deeper than [`ChatOptions::recursion_limit`].
    RecursionLimit {
        /// The limit.
        limit: usize,
    },
    /// The rendered text would exceed [`ChatOptions::max_output`] bytes.
    OutputTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Any other failure while rendering (an undefined attribute, a type error, ...).
    Render {
        /// 1-based line in the template source, when known.
        line: Option<usize>,
        /// minijinja's description.
        message: String,
    },
    /// No messages (transformers refuses an empty conversation too).
    EmptyConversation,
    /// An extra variable tried to replace `messages` or `add_generation_prompt`.
    ReservedName(String),
}

impl fmt::Display for ChatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |line: &Option<usize>| line.map(|l| format!(" (line {l})")).unwrap_or_default();
        match self {
            ChatError::Syntax { line, message } => {
                write!(f, "chat template syntax error{}: {message}", at(line))
            }
            ChatError::Template(m) => write!(f, "the chat template refused the messages: {m}"),
            ChatError::OutOfFuel { fuel } => {
                write!(f, "chat template ran out of fuel ({fuel} units)")
            }
            ChatError::RecursionLimit { limit } => {
                write!(f, "chat template nested deeper than the limit ({limit})")
            }
            ChatError::OutputTooLarge { limit } => {
                write!(f, "chat template output exceeds the limit ({limit} bytes)")
            }
            ChatError::Render { line, message } => {
                write!(f, "chat template failed{}: {message}", at(line))
            }
            ChatError::EmptyConversation => write!(f, "no messages to render"),
            ChatError::ReservedName(n) => write!(f, "{n:?} cannot be passed as an extra variable"),
        }
    }
}

impl std::error::Error for ChatError {}

/// The error `raise_exception` raises, found again in the error minijinja returns.
#[derive(Debug)]
struct Raised(String);

impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// A compiled chat template with its special tokens.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    special: SpecialStrings,
    options: ChatOptions,
}

impl ChatTemplate {
    /// Compiles `source` with the default limits.
    pub fn new(source: &str, special: SpecialStrings) -> Result<ChatTemplate, ChatError> {
        ChatTemplate::with_options(source, special, ChatOptions::default())
    }

    /// Compiles `source` with the given limits and clock.
    pub fn with_options(
        source: &str,
        special: SpecialStrings,
        options: ChatOptions,
    ) -> Result<ChatTemplate, ChatError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| syntax_error(&e))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(options.fuel));
        env.set_recursion_limit(options.recursion_limit);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", python::tojson);
        env.add_function("raise_exception", |msg: Value| -> Result<Value, Error> {
            let msg = match msg.as_str() {
                Some(s) => s.to_string(),
                None => msg.to_string(),
            };
            Err(Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(Raised(msg)))
        });
        let now = options.now;
        env.add_function("strftime_now", move |format: &str| {
            let secs = now.unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64)
            });
            python::strftime(format, secs)
        });
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| syntax_error(&e))?;
        Ok(ChatTemplate {
            env,
            special,
            options,
        })
    }

    /// The conversation as the model reads it; `add_generation_prompt` appends the header that
    /// opens the assistant's reply.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        self.render_with(messages, add_generation_prompt, &[])
    }

    /// [`render`](Self::render) with extra template variables, e.g. `("tools", list)` or
    /// `("enable_thinking", false)`. Build values with `Value::from`, `Value::from_iter` (lists)
    /// and `Value::from_pairs` (maps, kept in order).
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &[(&str, Value)],
    ) -> Result<String, ChatError> {
        if messages.is_empty() {
            return Err(ChatError::EmptyConversation);
        }
        let mut ctx: Vec<(&str, Value)> = Vec::new();
        let s = &self.special;
        for (name, v) in [
            ("bos_token", &s.bos_token),
            ("eos_token", &s.eos_token),
            ("pad_token", &s.pad_token),
            ("unk_token", &s.unk_token),
        ] {
            if let Some(v) = v {
                ctx.push((name, Value::from(v.as_str())));
            }
        }
        ctx.push(("tools", Value::from(())));
        ctx.push(("documents", Value::from(())));
        for (name, v) in extra {
            if *name == "messages" || *name == "add_generation_prompt" {
                return Err(ChatError::ReservedName(name.to_string()));
            }
            ctx.push((name, v.clone()));
        }
        let msgs: Value = messages
            .iter()
            .map(|m| {
                Value::from_pairs([("role", m.role.as_str()), ("content", m.content.as_str())])
            })
            .collect();
        ctx.push(("messages", msgs));
        ctx.push(("add_generation_prompt", Value::from(add_generation_prompt)));
        // Later pairs replace earlier ones: extra variables override the special tokens.
        let ctx = Value::from_pairs(ctx);

        let template = self.env.get_template(NAME).map_err(|e| syntax_error(&e))?;
        let mut out = Capped {
            buf: Vec::new(),
            limit: self.options.max_output,
            overflowed: false,
        };
        let result = template.render_captured_to(ctx, &mut out).map(|_| ());
        if out.overflowed {
            return Err(ChatError::OutputTooLarge {
                limit: self.options.max_output,
            });
        }
        result.map_err(|e| self.render_error(&e))?;
        String::from_utf8(out.buf).map_err(|e| ChatError::Render {
            line: None,
            message: e.to_string(),
        })
    }

    fn render_error(&self, e: &Error) -> ChatError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = source {
            if let Some(Raised(msg)) = s.downcast_ref::<Raised>() {
                return ChatError::Template(msg.clone());
            }
            source = s.source();
        }
        match e.kind() {
            ErrorKind::OutOfFuel => ChatError::OutOfFuel {
                fuel: self.options.fuel,
            },
            ErrorKind::InvalidOperation if e.detail() == Some("recursion limit exceeded") => {
                ChatError::RecursionLimit {
                    limit: self.options.recursion_limit,
                }
            }
            ErrorKind::SyntaxError => syntax_error(e),
            _ => ChatError::Render {
                line: e.line(),
                message: describe(e),
            },
        }
    }
}

fn syntax_error(e: &Error) -> ChatError {
    let message = match (e.kind(), e.detail()) {
        (ErrorKind::SyntaxError, Some(d)) => d.to_string(),
        _ => describe(e),
    };
    ChatError::Syntax {
        line: e.line(),
        message,
    }
}

/// The error's kind and detail without minijinja's location suffix (the line is its own field).
fn describe(e: &Error) -> String {
    match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    }
}

/// Prints values as Python does where that differs from minijinja: `None`, `True`, `False`,
/// and floats in `repr` form.
fn python_formatter(out: &mut Output, state: &mut State, v: &Value) -> Result<(), Error> {
    let text = match v.kind() {
        ValueKind::None => "None".to_string(),
        ValueKind::Bool => (if v.is_true() { "True" } else { "False" }).to_string(),
        ValueKind::Number if !v.is_integer() => python::number_repr(v, false),
        _ => return minijinja::escape_formatter(out, state, v),
    };
    out.write_str(&text)
        .map_err(|_| Error::new(ErrorKind::WriteFailure, "write failed"))
}

/// A byte sink that refuses to grow past `limit`.
struct Capped {
    buf: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.overflowed = true;
            return Err(io::Error::other("chat template output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_is_shared_across_threads() {
        fn sync<T: Send + Sync>() {}
        sync::<ChatTemplate>();
    }
}
