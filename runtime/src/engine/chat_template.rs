//! Chat messages → prompt text, with the checkpoint's own Jinja template.
//!
//! Rendering must match what transformers' `apply_chat_template` produces
//! byte for byte, or the model sees a prompt it was never trained on. So the
//! environment copies transformers': `trim_blocks` + `lstrip_blocks`, loop
//! controls, Python string/dict methods (minijinja-contrib `pycompat`),
//! `raise_exception`, `strftime_now`, and a `tojson` that formats like
//! Python's `json.dumps` (", " and ": " separators, no HTML escaping), which
//! minijinja's built-in does not.
//!
//! Template source, in transformers' order of precedence: a separate
//! `chat_template.jinja`, then `chat_template.json`'s `chat_template`, then
//! `tokenizer_config.json`'s `chat_template` (a string, or a list of
//! `{name, template}` of which `default` is used).

use std::{fs, io, path::Path, path::PathBuf};

use minijinja::{Environment, Error, ErrorKind, Value, value::Kwargs};
use serde_json::Value as Json;

use super::tokenizer::{TokenizerConfig, TokenizerError, read_json_if_present};
use crate::checkpoint::gguf::Gguf;

const NAME: &str = "chat";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Config(#[from] TokenizerError),
    #[error("{source_name}: the chat template does not compile: {source}")]
    Compile {
        source_name: String,
        #[source]
        source: Error,
    },
    #[error("{0}: `chat_template` lists named templates but none is called \"default\"")]
    NoDefault(String),
    #[error("this model has no chat template; send a plain prompt instead")]
    Missing,
    #[error("the chat template rejected the messages: {0}")]
    Render(String),
}

/// A compiled chat template plus the special tokens it may reference.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// `bos_token`, `eos_token`, ... as the template context sees them.
    special_tokens: Vec<(&'static str, String)>,
    /// The template text, where the tool-call format is read from.
    source: String,
}

impl ChatTemplate {
    /// Finds and compiles the template of the model in `dir`; `Ok(None)` if
    /// the model has none (base models), which only chat requests mind.
    /// `gguf`: the model's GGUF headers, whose `tokenizer.chat_template` is
    /// the last place looked.
    pub fn load(
        dir: &Path,
        config: &TokenizerConfig,
        gguf: Option<&Gguf>,
    ) -> Result<Option<Self>, TemplateError> {
        let Some((origin, source)) = find_source(dir, &config.raw, gguf)? else {
            return Ok(None);
        };
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.clone())
            .map_err(|source| TemplateError::Compile {
                source_name: origin,
                source,
            })?;
        let mut special_tokens = Vec::new();
        for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
            let value = match key {
                "bos_token" => config.bos_token.clone(),
                "eos_token" => config.eos_token.clone(),
                _ => config
                    .raw
                    .get(key)
                    .and_then(Json::as_str)
                    .map(str::to_owned),
            };
            special_tokens.push((key, value.unwrap_or_default()));
        }
        Ok(Some(Self {
            env,
            special_tokens,
            source,
        }))
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages` (a JSON array of message objects) and, for tool
    /// use, `tools`. `add_generation_prompt` appends the assistant header.
    pub fn render(
        &self,
        messages: &Json,
        tools: Option<&Json>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| TemplateError::Render(e.to_string()))?;
        // `tools` and `documents` are always defined, `none` when absent, as transformers
        // passes them: Llama 3.1's template tests `tools is not none`, which an undefined
        // variable passes.
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from_serialize(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            (
                "tools",
                tools.map_or(Value::from(()), Value::from_serialize),
            ),
            ("documents", Value::from(())),
        ];
        for (key, value) in &self.special_tokens {
            ctx.push((key, Value::from(value.as_str())));
        }
        let ctx: Value = ctx.into_iter().collect();
        template
            .render(ctx)
            .map_err(|e| TemplateError::Render(render_message(&e)))
    }
}

/// `raise_exception` messages are written for users; other errors get
/// minijinja's description.
fn render_message(e: &Error) -> String {
    e.detail().map_or_else(|| e.to_string(), str::to_owned)
}

fn find_source(
    dir: &Path,
    config: &Json,
    gguf: Option<&Gguf>,
) -> Result<Option<(String, String)>, TemplateError> {
    let jinja = dir.join("chat_template.jinja");
    match fs::read_to_string(&jinja) {
        Ok(source) => return Ok(Some((jinja.display().to_string(), source))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(TemplateError::Io {
                path: jinja,
                source,
            });
        }
    }
    let json_file = dir.join("chat_template.json");
    if let Some(v) = read_json_if_present(&json_file)?
        && let Some(found) = from_config_value(v.get("chat_template"), &json_file)?
    {
        return Ok(Some(found));
    }
    if let Some(found) = from_config_value(
        config.get("chat_template"),
        &dir.join("tokenizer_config.json"),
    )? {
        return Ok(Some(found));
    }
    // A GGUF directory without tokenizer_config.json: the template the
    // converter stored in the file's metadata.
    const KEY: &str = "tokenizer.chat_template";
    Ok(gguf.and_then(|gguf| {
        let t = gguf.string(KEY)?;
        Some((
            format!("{} ({KEY})", gguf.files()[0].display()),
            t.to_owned(),
        ))
    }))
}

fn from_config_value(
    v: Option<&Json>,
    origin: &Path,
) -> Result<Option<(String, String)>, TemplateError> {
    let origin_name = origin.display().to_string();
    match v {
        Some(Json::String(s)) => Ok(Some((origin_name, s.clone()))),
        Some(Json::Array(named)) => named
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template").and_then(Json::as_str))
            .map(|s| Some((origin_name.clone(), s.to_owned())))
            .ok_or(TemplateError::NoDefault(origin_name)),
        _ => Ok(None),
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Current local time, `strftime`-formatted (Llama 3.1 templates print the
/// date into the system prompt).
fn strftime_now(format: String) -> Result<String, Error> {
    jiff::fmt::strtime::format(format.as_str(), &jiff::Zoned::now())
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("strftime_now: {e}")))
}

/// Python `json.dumps(value, ensure_ascii=False, indent=..., sort_keys=...)`.
fn tojson(value: Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent.or(kwargs.get::<Option<Value>>("indent")?) {
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v)?),
        None => None,
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let mut out = String::new();
    let fmt = PyJson {
        indent,
        sort_keys,
        ensure_ascii,
    };
    fmt.write(&mut out, &value, 0)?;
    Ok(Value::from_safe_string(out))
}

struct PyJson {
    indent: Option<usize>,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl PyJson {
    fn write(&self, out: &mut String, v: &Value, depth: usize) -> Result<(), Error> {
        use minijinja::value::ValueKind as K;
        match v.kind() {
            K::Undefined | K::None => out.push_str("null"),
            K::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            K::Number if v.is_integer() => out.push_str(&v.to_string()),
            K::Number => out.push_str(&py_float(f64::try_from(v.clone())?)),
            K::String => self.string(out, v.as_str().unwrap_or_default()),
            K::Seq | K::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container(out, '[', ']', items.len(), depth, |out, i| {
                    self.write(out, &items[i], depth + 1)
                })?;
            }
            K::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                self.container(out, '{', '}', keys.len(), depth, |out, i| {
                    let key = &keys[i];
                    self.string(out, &key.to_string());
                    out.push_str(": ");
                    self.write(out, &v.get_item(key)?, depth + 1)
                })?;
            }
            _ => self.string(out, &v.to_string()),
        }
        Ok(())
    }

    fn container(
        &self,
        out: &mut String,
        open: char,
        close: char,
        len: usize,
        depth: usize,
        mut item: impl FnMut(&mut String, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if len == 0 {
            out.push(close);
            return Ok(());
        }
        for i in 0..len {
            match self.indent {
                Some(n) => {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    out.push_str(&" ".repeat(n * (depth + 1)));
                }
                None if i > 0 => out.push_str(", "),
                None => {}
            }
            item(out, i)?;
        }
        if let Some(n) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
        out.push(close);
        Ok(())
    }

    fn string(&self, out: &mut String, s: &str) {
        let quoted = serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""));
        if !self.ensure_ascii {
            out.push_str(&quoted);
            return;
        }
        for c in quoted.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
}

/// Python's `repr(float)` for the common cases: `1.0`, `0.5`, `1e+20`.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let s = serde_json::to_string(&f).unwrap_or_else(|_| f.to_string());
    match s.split_once('e') {
        Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
        _ => s,
    }
}

#[cfg(test)]
mod tests;
