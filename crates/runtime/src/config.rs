//! Reader for the INI-style configuration files of the signaling server and
//! the proxy (`server.conf`, `proxy.conf`).
//!
//! The Go server reads these files with `github.com/dlintw/goconf`. Existing
//! deployments must keep working unchanged, so this reader reproduces that
//! library's dialect, quirks included:
//!
//! * The text is processed line by line (split at `\n`); every line is trimmed
//!   of surrounding Unicode whitespace first, so `\r\n` endings and indentation
//!   do not matter.
//! * A line whose first character is `#` or `;`, or whose first three
//!   characters are `rem` in any letter case, is a comment. The `rem` rule also
//!   swallows options such as `remote = x`; goconf behaves the same way.
//! * `[name]` starts a section. The name is trimmed and lower-cased. A section
//!   may appear more than once; its options are merged.
//! * Options seen before the first header belong to the section `default`
//!   (as do options under `[DEFAULT]`). Lookups never fall back to `default`.
//! * An option line is split at the first `=` or `:`, whichever comes first
//!   (so `url = http://host:1` and `url: http://host:1` are both fine). Names
//!   are trimmed and lower-cased; values are trimmed and keep their case.
//!   The separator must not be the first character: a line such as
//!   `::1 = DE` is not an option (see the next rule).
//! * In a value, a `#` or `;` preceded by a space or a tab starts a trailing
//!   comment. `url = https://x/#a` keeps its `#a`; `secret = a #b` is `a`.
//! * A line that is not a comment, header or option continues the previous
//!   option of the same section: it is appended after a `\n`. Without such an
//!   option the line is a syntax error.
//! * A repeated option replaces the earlier value (the option keeps its first
//!   position in [`Ini::keys`]).
//! * `%(name)s` in a value is replaced by the value of option `name` of the
//!   same section, else of `default`, repeatedly (at most 200 replacements).
//!   A reference to a missing or empty option makes the value unusable:
//!   [`Ini::get`] then yields `""` (what the Go server ends up with) and the
//!   typed getters and [`Ini::require`] report [`ConfigError::Invalid`].
//! * Booleans accept `1 t true y yes on` and `0 f false n no off` in any
//!   letter case; integers are plain decimal with an optional sign.
//!
//! Deliberate differences:
//!
//! * Extension: `${NAME}` in a value is replaced by the environment variable
//!   `NAME` (`NAME` matching `[A-Za-z_][A-Za-z0-9_]*`), so secrets can be
//!   passed to containers without writing them into the file. The expansion
//!   happens once, after `%(name)s` references are resolved; the inserted text
//!   is not examined again. An unset variable fails the whole parse with
//!   [`ConfigError::EnvVar`]. `$${` yields a literal `${`; any other `$` is
//!   kept as it is.
//! * A leading UTF-8 byte order mark is ignored, and a file that is not valid
//!   UTF-8 is rejected.
//! * Typed getters return an error for an unparsable value where the Go
//!   server silently used the zero value. Callers that want the old leniency
//!   can use `unwrap_or(default)`.
//! * Empty values count as unset for [`Ini::get_string`], [`Ini::get_bool`]
//!   and [`Ini::get_int`], which return the caller's default for them (the Go
//!   server's callers also treat empty values as "use the default").

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

mod parse;
mod values;

pub use values::{split_list, split_whitespace_list, Secret};

/// Environment variables `PREFIX__SECTION__KEY` override the files read by
/// [`Ini::load`] once a binary has set its prefix ([`set_env_prefix`]).
static ENV_PREFIX: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Makes [`Ini::load`] apply environment overrides named
/// `PREFIX__SECTION__KEY` (e.g. `SIGNALING__SESSIONS__HASHKEY`), for
/// containers. Set once, by `main`.
pub fn set_env_prefix(prefix: &'static str) {
    let _ = ENV_PREFIX.set(prefix);
}

/// Our goconf reader as a format of the `config` crate: sections become
/// tables of string values.
#[derive(Debug, Clone, Copy, Default)]
pub struct GoConf;

impl ::config::Format for GoConf {
    fn parse(
        &self,
        uri: Option<&String>,
        text: &str,
    ) -> Result<::config::Map<String, ::config::Value>, Box<dyn std::error::Error + Send + Sync>>
    {
        let ini = Ini::parse(text)?;
        let mut root = ::config::Map::new();
        for section in ini.sections() {
            let mut table = ::config::Map::new();
            for (key, value) in ini.keys(section) {
                table.insert(key.to_owned(), ::config::Value::new(uri, value.to_owned()));
            }
            root.insert(section.to_owned(), ::config::Value::new(uri, table));
        }
        Ok(root)
    }
}

impl ::config::FileStoredFormat for GoConf {
    fn file_extensions(&self) -> &'static [&'static str] {
        &["conf", "in"]
    }
}

/// Name of the section that holds options written before any header.
pub const DEFAULT_SECTION: &str = "default";

/// Errors from reading a configuration or from interpreting one of its values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line could not be understood (`line` starts at 1).
    #[error("configuration line {line}: {msg}")]
    Syntax { line: usize, msg: String },
    /// A required option is absent or empty.
    #[error("[{section}] {key}: a value is required")]
    Missing { section: String, key: String },
    /// An option has a value that cannot be used. The value is printed, so
    /// code validating secrets should put a redacted text into `value`.
    #[error("[{section}] {key}: invalid value {value:?}: {reason}")]
    Invalid {
        section: String,
        key: String,
        value: String,
        reason: String,
    },
    /// A value refers to an environment variable that is not set.
    #[error("[{section}] {key}: environment variable {var} is not set (or not valid UTF-8)")]
    EnvVar {
        section: String,
        key: String,
        var: String,
    },
}

/// One option of a section.
#[derive(Clone)]
struct Entry {
    key: String,
    /// The value after `%(name)s` and `${NAME}` replacement; `""` if
    /// `unresolved` is set.
    value: String,
    /// Why a `%(name)s` reference could not be replaced, if it could not.
    unresolved: Option<String>,
    /// Line (from 1) where the option's value is written (the last time,
    /// if repeated); 0 if set by code.
    line: usize,
}

#[derive(Clone)]
struct Section {
    name: String,
    /// Line (from 1) of the section's first header; 0 without one.
    line: usize,
    entries: Vec<Entry>,
    /// Option name -> position in `entries`.
    index: HashMap<String, usize>,
}

impl Section {
    fn new(name: String) -> Self {
        Section {
            name,
            line: 0,
            entries: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn entry(&self, key: &str) -> Option<&Entry> {
        self.index.get(key).map(|&i| &self.entries[i])
    }

    fn set(&mut self, key: String, value: String, line: usize) {
        match self.index.get(&key) {
            Some(&i) => {
                let entry = &mut self.entries[i];
                entry.value = value;
                entry.unresolved = None;
                if line > 0 {
                    entry.line = line;
                }
            }
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push(Entry {
                    key,
                    value,
                    unresolved: None,
                    line,
                });
            }
        }
    }
}

/// A parsed configuration file.
///
/// Sections and options keep the order in which they first appear. Section and
/// option names are case-insensitive; the section name `""` means `default`.
/// `Debug` lists section and option names only, never values.
#[derive(Clone, Default)]
pub struct Ini {
    sections: Vec<Section>,
    /// Lower-cased section name -> position in `sections`.
    index: HashMap<String, usize>,
    /// Lines without `=` or `:` that goconf appends to the previous option:
    /// (line, section, option).
    continuations: Vec<(usize, String, String)>,
}

impl fmt::Debug for Ini {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for section in &self.sections {
            let keys: Vec<&str> = section.entries.iter().map(|e| e.key.as_str()).collect();
            map.entry(&section.name, &keys);
        }
        map.finish()
    }
}

impl Ini {
    /// Parses configuration text, taking `${NAME}` values from the process
    /// environment.
    pub fn parse(text: &str) -> Result<Ini, ConfigError> {
        Self::parse_with_env(text, |name| std::env::var(name).ok())
    }

    /// Parses configuration text, taking `${NAME}` values from `env` (which
    /// returns `None` for an unset variable). Meant for tests.
    pub fn parse_with_env<F>(text: &str, env: F) -> Result<Ini, ConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let mut ini = Self::parse_raw(text)?;
        ini.resolve(&env)?;
        Ok(ini)
    }

    /// Reads and parses the file at `path`. Errors from parsing do not name
    /// the file; callers should add it to their message.
    pub fn load(path: &Path) -> Result<Ini, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|err| {
            let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
            let line = 1 + valid.iter().filter(|&&b| b == b'\n').count();
            ConfigError::Syntax {
                line,
                msg: "the file is not valid UTF-8".to_owned(),
            }
        })?;
        let mut ini = Self::parse(&text)?;
        if let Some(prefix) = ENV_PREFIX.get() {
            let env = ::config::Environment::with_prefix(prefix)
                .prefix_separator("__")
                .separator("__");
            ini.apply_layers(&text, env)?;
        }
        Ok(ini)
    }

    /// Layers the file (through our goconf reader, plugged into the
    /// `config` crate as a format) and `env` into one configuration, and
    /// takes every value that differs from the file's (set or changed in the
    /// environment). Lines, continuation notes and unresolved references of
    /// options the environment does not touch are kept.
    pub fn apply_layers(
        &mut self,
        text: &str,
        env: ::config::Environment,
    ) -> Result<Vec<(String, String)>, ConfigError> {
        let layered_error = |e: ::config::ConfigError| ConfigError::Syntax {
            line: 0,
            msg: format!("environment overrides: {e}"),
        };
        let merged = ::config::Config::builder()
            .add_source(::config::File::from_str(text, GoConf))
            .add_source(env)
            .build()
            .map_err(layered_error)?;
        let table = ::config::Source::collect(&merged).map_err(layered_error)?;
        let mut taken = Vec::new();
        for (section, value) in table {
            // A variable without a section part (`SIGNALING__X`) names no
            // option.
            let Ok(options) = value.into_table() else {
                continue;
            };
            for (key, value) in options {
                let Ok(value) = value.into_string() else {
                    continue;
                };
                if self.get(&section, &key) != Some(value.as_str()) {
                    self.set(&section, &key, &value);
                    taken.push((section.clone(), key));
                }
            }
        }
        for (section, key) in &taken {
            tracing::info!("[{section}] {key} set by the environment");
        }
        Ok(taken)
    }

    /// The value of an option: `None` if the section or the option is absent,
    /// `Some("")` if it is present but empty (or its `%(name)s` reference
    /// cannot be resolved).
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.entry(section, key).map(|e| e.value.as_str())
    }

    /// The value of an option, or `default` if it is absent or empty.
    pub fn get_string(&self, section: &str, key: &str, default: &str) -> String {
        match self.get(section, key) {
            Some(value) if !value.is_empty() => value.to_owned(),
            _ => default.to_owned(),
        }
    }

    /// A boolean option; `default` if it is absent or empty.
    pub fn get_bool(&self, section: &str, key: &str, default: bool) -> Result<bool, ConfigError> {
        let Some(value) = self.usable_value(section, key)? else {
            return Ok(default);
        };
        parse_bool(value).ok_or_else(|| {
            invalid(
                section,
                key,
                value,
                "expected true/false, yes/no, on/off, t/f, y/n or 1/0",
            )
        })
    }

    /// A decimal integer option; `default` if it is absent or empty.
    pub fn get_int(&self, section: &str, key: &str, default: i64) -> Result<i64, ConfigError> {
        let Some(value) = self.usable_value(section, key)? else {
            return Ok(default);
        };
        value
            .parse::<i64>()
            .map_err(|_| invalid(section, key, value, "expected a decimal integer"))
    }

    /// The value of an option that must be present and not empty.
    pub fn require(&self, section: &str, key: &str) -> Result<&str, ConfigError> {
        self.usable_value(section, key)?
            .ok_or_else(|| ConfigError::Missing {
                section: display_section(section).to_owned(),
                key: key.to_owned(),
            })
    }

    /// The value of an option wrapped as a [`Secret`] (empty if absent).
    pub fn get_secret(&self, section: &str, key: &str) -> Secret {
        Secret::new(self.get(section, key).unwrap_or_default())
    }

    /// Whether the section exists. `default` (and `""`) always exists.
    pub fn has_section(&self, section: &str) -> bool {
        let name = section_name(section);
        name == DEFAULT_SECTION || self.index.contains_key(&name)
    }

    /// Names of the sections in the order they first appear (lower-cased).
    /// `default` is included only if the text put options under it or named
    /// it in a header.
    pub fn sections(&self) -> impl Iterator<Item = &str> + '_ {
        self.sections.iter().map(|s| s.name.as_str())
    }

    /// Options of a section as `(name, value)` in the order they first appear;
    /// names are lower-cased. Options of `default` are not included. Empty if
    /// the section does not exist.
    pub fn keys(&self, section: &str) -> Vec<(&str, &str)> {
        self.section(section)
            .map(|s| {
                s.entries
                    .iter()
                    .map(|e| (e.key.as_str(), e.value.as_str()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sets an option, creating the section if needed. The value is stored
    /// as given: no `%(name)s` or `${NAME}` replacement, and options that
    /// referred to this one keep their earlier value.
    pub fn set(&mut self, section: &str, key: &str, value: &str) {
        let idx = self.section_index_or_insert(section_name(section));
        self.sections[idx].set(lower(key.trim()), value.to_owned(), 0);
    }

    /// Line (from 1) where the option's value is written (the last time, if
    /// repeated); `None` if absent or set by code.
    pub fn key_line(&self, section: &str, key: &str) -> Option<usize> {
        self.entry(section, key).map(|e| e.line).filter(|&l| l > 0)
    }

    /// Line (from 1) of a section's first header; `None` if absent or
    /// without a header.
    pub fn section_line(&self, section: &str) -> Option<usize> {
        self.section(section).map(|s| s.line).filter(|&l| l > 0)
    }

    /// Lines that goconf reads as a continuation of the previous option
    /// (a line with neither `=` nor `:`): `(line, section, option)`. Valid,
    /// but in a server configuration almost always a mistake.
    pub fn continuation_lines(&self) -> &[(usize, String, String)] {
        &self.continuations
    }

    fn section(&self, section: &str) -> Option<&Section> {
        self.index
            .get(&section_name(section))
            .map(|&i| &self.sections[i])
    }

    fn entry(&self, section: &str, key: &str) -> Option<&Entry> {
        self.section(section)?.entry(&lower(key))
    }

    /// `Ok(None)` for absent or empty options, an error for values whose
    /// `%(name)s` reference cannot be resolved.
    fn usable_value(&self, section: &str, key: &str) -> Result<Option<&str>, ConfigError> {
        match self.entry(section, key) {
            None => Ok(None),
            Some(Entry {
                unresolved: Some(reason),
                ..
            }) => Err(invalid(section, key, "", reason)),
            Some(e) if e.value.is_empty() => Ok(None),
            Some(e) => Ok(Some(e.value.as_str())),
        }
    }
}

/// Parses the boolean spellings goconf accepts, ignoring letter case.
pub fn parse_bool(value: &str) -> Option<bool> {
    match lower(value).as_str() {
        "1" | "t" | "true" | "y" | "yes" | "on" => Some(true),
        "0" | "f" | "false" | "n" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Lower-cases character by character (like Go's `strings.ToLower`).
fn lower(s: &str) -> String {
    s.chars().flat_map(char::to_lowercase).collect()
}

fn section_name(section: &str) -> String {
    if section.is_empty() {
        DEFAULT_SECTION.to_owned()
    } else {
        lower(section)
    }
}

fn display_section(section: &str) -> &str {
    if section.is_empty() {
        DEFAULT_SECTION
    } else {
        section
    }
}

fn invalid(section: &str, key: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        section: display_section(section).to_owned(),
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_through_the_config_crate() {
        let text = "[http]\nlisten = 127.0.0.1:8080\n[sessions]\nhashkey = from-file\n[Geo]\n10.0.0.0/8 = DE\n";
        let mut ini = Ini::parse(text).unwrap();
        let env: ::config::Map<String, String> = [
            ("SIGNALING__SESSIONS__HASHKEY", "from-env"),
            ("SIGNALING__NC1__SECRET", "s3cr3t"),
            ("SIGNALING__HTTP__LISTEN", "127.0.0.1:8080"),
            ("SIGNALING_HASH_KEY", "not ours"),
            ("OTHER__SESSIONS__BLOCKKEY", "not ours"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let env = ::config::Environment::with_prefix("SIGNALING")
            .prefix_separator("__")
            .separator("__")
            .source(Some(env));
        let mut taken = ini.apply_layers(text, env).unwrap();
        taken.sort();
        // Only what differs from the file is taken.
        assert_eq!(
            taken,
            [
                ("nc1".to_owned(), "secret".to_owned()),
                ("sessions".to_owned(), "hashkey".to_owned())
            ]
        );
        assert_eq!(ini.get("sessions", "hashkey"), Some("from-env"));
        assert_eq!(ini.get("nc1", "secret"), Some("s3cr3t"));
        assert_eq!(ini.get("sessions", "blockkey"), None);
        // Untouched options keep their line; keys with dots survive.
        assert_eq!(ini.key_line("http", "listen"), Some(2));
        assert_eq!(ini.get("geo", "10.0.0.0/8"), Some("DE"));
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Ini {
        Ini::parse_with_env(text, no_env).unwrap()
    }

    fn parse_err(text: &str) -> ConfigError {
        Ini::parse_with_env(text, no_env).unwrap_err()
    }

    #[test]
    fn sections_and_options_in_file_order() {
        let ini = parse("[b]\nz = 1\na = 2\n[a]\nx = 3\n");
        assert_eq!(ini.sections().collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(ini.keys("b"), [("z", "1"), ("a", "2")]);
        assert_eq!(ini.keys("a"), [("x", "3")]);
        assert!(ini.keys("missing").is_empty());
        assert_eq!(ini.get("a", "x"), Some("3"));
        assert_eq!(ini.get("a", "y"), None);
        assert_eq!(ini.get("c", "x"), None);
    }

    #[test]
    fn empty_and_whitespace_only_input() {
        for text in ["", "\n\n", "   \t\r\n", "\u{feff}", "# only a comment"] {
            let ini = parse(text);
            assert_eq!(ini.sections().count(), 0, "{text:?}");
            assert!(ini.has_section("default"));
            assert!(ini.has_section(""));
        }
    }

    #[test]
    fn comment_lines() {
        let ini = parse(
            "# hash\n; semicolon\n  # indented\nrem windows style\nREM upper\nRemark = 1\n\
             remote = 2\n[s]\n#k = 1\n;k = 2\nk = 3\n",
        );
        // Lines starting with "rem" are comments even when they look like options.
        assert_eq!(ini.get("default", "remark"), None);
        assert_eq!(ini.get("default", "remote"), None);
        assert_eq!(ini.keys("s"), [("k", "3")]);
        assert!(ini.sections().all(|s| s != "default"));
    }

    #[test]
    fn trailing_comments_need_leading_whitespace() {
        let ini = parse(
            "[s]\na = one # comment\nb = two\t; comment\nc = x#y\nd = x;y\n\
             e = https://host/path/#frag\nf = # only comment\ng = a ;b #c\nh =#x\ni = v ;\n",
        );
        assert_eq!(ini.get("s", "a"), Some("one"));
        assert_eq!(ini.get("s", "b"), Some("two"));
        assert_eq!(ini.get("s", "c"), Some("x#y"));
        assert_eq!(ini.get("s", "d"), Some("x;y"));
        assert_eq!(ini.get("s", "e"), Some("https://host/path/#frag"));
        assert_eq!(ini.get("s", "f"), Some(""));
        assert_eq!(ini.get("s", "g"), Some("a"));
        assert_eq!(ini.get("s", "h"), Some("#x"));
        assert_eq!(ini.get("s", "i"), Some("v"));
    }

    #[test]
    fn separators() {
        let ini = parse(
            "[s]\na = 1\nb: 2\nc=3\nd:4\nurl = http://host:8080/x\nurl2: http://h/?a=b\n\
             e : f = g\nweird key name = v\n",
        );
        assert_eq!(ini.get("s", "a"), Some("1"));
        assert_eq!(ini.get("s", "b"), Some("2"));
        assert_eq!(ini.get("s", "c"), Some("3"));
        assert_eq!(ini.get("s", "d"), Some("4"));
        assert_eq!(ini.get("s", "url"), Some("http://host:8080/x"));
        assert_eq!(ini.get("s", "url2"), Some("http://h/?a=b"));
        // The first separator wins, whichever it is.
        assert_eq!(ini.get("s", "e"), Some("f = g"));
        assert_eq!(ini.get("s", "weird key name"), Some("v"));
    }

    #[test]
    fn case_insensitive_names_case_sensitive_values() {
        let ini = parse("[Backend]\nBackends = One,Two\n[BACKEND]\nAllowAll = TRUE\n");
        assert_eq!(ini.sections().collect::<Vec<_>>(), ["backend"]);
        assert_eq!(ini.get("backend", "backends"), Some("One,Two"));
        assert_eq!(ini.get("BACKEND", "BACKENDS"), Some("One,Two"));
        assert!(ini.get_bool("Backend", "allowall", false).unwrap());
        assert!(ini.has_section("bAcKeNd"));
        assert_eq!(
            ini.keys("backend"),
            [("backends", "One,Two"), ("allowall", "TRUE")]
        );
    }

    #[test]
    fn whitespace_and_line_endings() {
        let ini = parse("  [ sec ]  \r\n\t key \t=\t value with  inner  spaces \t\r\nlast=x");
        assert_eq!(ini.sections().collect::<Vec<_>>(), ["sec"]);
        assert_eq!(ini.get("sec", "key"), Some("value with  inner  spaces"));
        // The last line needs no newline.
        assert_eq!(ini.get("sec", "last"), Some("x"));
        // A lone \r does not end a line.
        let ini = parse("[s]\na = 1\rb = 2\n");
        assert_eq!(ini.get("s", "a"), Some("1\rb = 2"));
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        let ini = parse("\u{feff}[s]\na = 1\n");
        assert_eq!(ini.get("s", "a"), Some("1"));
    }

    #[test]
    fn default_section() {
        let ini = parse("top = 1\n[s]\nk = 2\n[DEFAULT]\nlater = 3\n");
        assert_eq!(ini.sections().collect::<Vec<_>>(), ["default", "s"]);
        assert_eq!(ini.get("default", "top"), Some("1"));
        assert_eq!(ini.get("", "top"), Some("1"));
        assert_eq!(ini.get("", "later"), Some("3"));
        // No fallback from a section to `default`.
        assert_eq!(ini.get("s", "top"), None);
    }

    #[test]
    fn duplicates() {
        let ini = parse("[s]\na = 1\nb = 2\nA = 3\n[t]\nx = 1\n[s]\nc = 4\nb = 5\n");
        assert_eq!(ini.sections().collect::<Vec<_>>(), ["s", "t"]);
        assert_eq!(ini.keys("s"), [("a", "3"), ("b", "5"), ("c", "4")]);
    }

    #[test]
    fn empty_values() {
        let ini = parse("[s]\na =\nb = \nc:\n");
        assert_eq!(ini.get("s", "a"), Some(""));
        assert_eq!(ini.get("s", "b"), Some(""));
        assert_eq!(ini.get("s", "c"), Some(""));
        assert_eq!(ini.get_string("s", "a", "dflt"), "dflt");
        assert_eq!(ini.get_string("s", "zz", "dflt"), "dflt");
        assert!(ini.get_bool("s", "a", true).unwrap());
        assert_eq!(ini.get_int("s", "a", 7).unwrap(), 7);
        assert!(matches!(
            ini.require("s", "a"),
            Err(ConfigError::Missing { .. })
        ));
    }

    #[test]
    fn continuation_lines() {
        let ini = parse(
            "[s]\nlist = first\n  second ; comment\n\n# between\n   third\nother = x\n[t]\ny = 1\n",
        );
        assert_eq!(ini.get("s", "list"), Some("first\nsecond\nthird"));
        assert_eq!(ini.get("s", "other"), Some("x"));
        // A line that starts with a separator continues the previous option.
        let ini = parse("[geoip-overrides]\n10.0.0.1 = DE\n::1 = FR\n");
        assert_eq!(ini.get("geoip-overrides", "10.0.0.1"), Some("DE\n::1 = FR"));
        // An IPv6 key is split at its first colon.
        let ini = parse("[geoip-overrides]\n2001:db8::/32 = DE\n");
        assert_eq!(ini.keys("geoip-overrides"), [("2001", "db8::/32 = DE")]);
        // An unterminated header is a plain line, so it continues too.
        let ini = parse("[s]\na = 1\n[t\n");
        assert_eq!(ini.get("s", "a"), Some("1\n[t"));
        assert!(!ini.has_section("t"));
    }

    #[test]
    fn syntax_errors() {
        let err = parse_err("[s]\nnot an option\n");
        assert!(matches!(err, ConfigError::Syntax { line: 2, .. }), "{err}");
        // A header resets the option that could be continued.
        let err = parse_err("[s]\na = 1\n[t]\ndangling\n");
        assert!(matches!(err, ConfigError::Syntax { line: 4, .. }), "{err}");
        let err = parse_err("= value\n");
        assert!(matches!(err, ConfigError::Syntax { line: 1, .. }), "{err}");
        let err = parse_err("\n\n::1 = DE\n");
        assert!(matches!(err, ConfigError::Syntax { line: 3, .. }), "{err}");
        assert!(err.to_string().contains("line 3"), "{err}");
        assert!(err.to_string().contains("::1 = DE"), "{err}");
        // A header with an empty name is accepted, an option below it is not.
        let ini = parse("[s]\n[]\n[ ]\n");
        assert_eq!(ini.sections().collect::<Vec<_>>(), ["s"]);
        let err = parse_err("[s]\n[ ]\na = 1\n");
        assert!(matches!(err, ConfigError::Syntax { line: 3, .. }), "{err}");
        // ...but a later named header makes options valid again.
        let ini = parse("[]\n[s]\na = 1\n");
        assert_eq!(ini.get("s", "a"), Some("1"));
    }

    #[test]
    fn long_lines_are_shortened_in_errors() {
        let line = "x".repeat(500);
        let err = parse_err(&line);
        let msg = err.to_string();
        assert!(msg.len() < 200, "{msg}");
        assert!(msg.contains('…'));
    }

    #[test]
    fn odd_headers() {
        let ini = parse("[a]b]\nk = 1\n[[c]]\nk = 2\n[rem]\nk = 3\n");
        assert_eq!(ini.sections().collect::<Vec<_>>(), ["a]b", "[c]", "rem"]);
        assert_eq!(ini.get("rem", "k"), Some("3"));
    }

    #[test]
    fn booleans() {
        let truthy = [
            "1", "t", "T", "true", "True", "TRUE", "y", "Y", "yes", "YES", "on", "On",
        ];
        let falsy = [
            "0", "f", "F", "false", "FALSE", "n", "N", "no", "No", "off", "OFF",
        ];
        for v in truthy {
            let ini = parse(&format!("[s]\nk = {v}\n"));
            assert!(ini.get_bool("s", "k", false).unwrap(), "{v}");
        }
        for v in falsy {
            let ini = parse(&format!("[s]\nk = {v}\n"));
            assert!(!ini.get_bool("s", "k", true).unwrap(), "{v}");
        }
        for v in ["2", "enabled", "nope", "truee", "yes please", "-1", "oui"] {
            let ini = parse(&format!("[s]\nk = {v}\n"));
            let err = ini.get_bool("s", "k", false).unwrap_err();
            assert!(matches!(err, ConfigError::Invalid { .. }));
            let msg = err.to_string();
            assert!(msg.contains("[s] k"), "{msg}");
            assert!(msg.contains(v), "{msg}");
        }
        let ini = parse("[s]\n");
        assert!(ini.get_bool("s", "k", true).unwrap());
        assert!(!ini.get_bool("other", "k", false).unwrap());
    }

    #[test]
    fn integers() {
        let ini = parse(
            "[s]\na = 15\nb = -3\nc = +7\nd = 0\ne = 15s\nf = 1_000\ng = 0x10\n\
             h = 99999999999999999999\ni = 1.5\nj = 9223372036854775807\nk = +\n",
        );
        assert_eq!(ini.get_int("s", "a", 0).unwrap(), 15);
        assert_eq!(ini.get_int("s", "b", 0).unwrap(), -3);
        assert_eq!(ini.get_int("s", "c", 0).unwrap(), 7);
        assert_eq!(ini.get_int("s", "d", 5).unwrap(), 0);
        assert_eq!(ini.get_int("s", "j", 0).unwrap(), i64::MAX);
        assert_eq!(ini.get_int("s", "missing", 42).unwrap(), 42);
        for key in ["e", "f", "g", "h", "i", "k"] {
            let err = ini.get_int("s", key, 0).unwrap_err();
            assert!(err.to_string().contains(&format!("[s] {key}")), "{err}");
        }
    }

    #[test]
    fn require() {
        let ini = parse("[s]\na = x\nb =\n");
        assert_eq!(ini.require("s", "a").unwrap(), "x");
        for (section, key) in [("s", "b"), ("s", "c"), ("t", "a")] {
            let err = ini.require(section, key).unwrap_err();
            assert!(matches!(err, ConfigError::Missing { .. }));
            assert_eq!(
                err.to_string(),
                format!("[{section}] {key}: a value is required")
            );
        }
        let err = ini.require("", "top").unwrap_err();
        assert_eq!(err.to_string(), "[default] top: a value is required");
    }

    #[test]
    fn references() {
        let ini = parse(
            "host = example.com\nport = 443\n[s]\nurl = https://%(host)s:%(port)s/x\n\
             port = 8443\nlocal = %(url)s/y\nmissing = %(nope)s\nempty =\nuses_empty = %(empty)s\n\
             not_a_ref = %(bad name)s %() %(x)\ncase = %(HOST)s\n",
        );
        // The section's own option wins over `default`.
        assert_eq!(ini.get("s", "url"), Some("https://example.com:8443/x"));
        // References are resolved recursively.
        assert_eq!(ini.get("s", "local"), Some("https://example.com:8443/x/y"));
        assert_eq!(ini.get("s", "case"), Some("example.com"));
        assert_eq!(ini.get("s", "not_a_ref"), Some("%(bad name)s %() %(x)"));
        for key in ["missing", "uses_empty"] {
            assert_eq!(ini.get("s", key), Some(""));
            assert_eq!(ini.get_string("s", key, "d"), "d");
            let err = ini.require("s", key).unwrap_err();
            assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
            assert!(ini.get_bool("s", key, false).is_err());
            assert!(ini.get_int("s", key, 0).is_err());
        }
    }

    #[test]
    fn circular_references() {
        let ini = parse("[s]\na = %(b)s\nb = %(a)s\nc = x\n");
        let err = ini.require("s", "a").unwrap_err();
        assert!(err.to_string().contains("circular"), "{err}");
        assert_eq!(ini.get("s", "c"), Some("x"));
    }

    #[test]
    fn environment_variables() {
        let env = |name: &str| match name {
            "SECRET" => Some("s3cr3t".to_owned()),
            "_X1" => Some("%(other)s ${SECRET}".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let ini = Ini::parse_with_env(
            "[s]\na = ${SECRET}\nb = pre-${SECRET}-post\nc = ${_X1}\nd = $${SECRET}\n\
             e = $SECRET\nf = ${not valid}\ng = ${SECRET\nh = $\ni = cost: 5$\nj = ${EMPTY}\n\
             other = o\nk = %(a)s!\nl = $$${SECRET}\n",
            env,
        )
        .unwrap();
        assert_eq!(ini.get("s", "a"), Some("s3cr3t"));
        assert_eq!(ini.get("s", "b"), Some("pre-s3cr3t-post"));
        // Inserted text is not examined again.
        assert_eq!(ini.get("s", "c"), Some("%(other)s ${SECRET}"));
        assert_eq!(ini.get("s", "d"), Some("${SECRET}"));
        assert_eq!(ini.get("s", "e"), Some("$SECRET"));
        assert_eq!(ini.get("s", "f"), Some("${not valid}"));
        assert_eq!(ini.get("s", "g"), Some("${SECRET"));
        assert_eq!(ini.get("s", "h"), Some("$"));
        assert_eq!(ini.get("s", "i"), Some("cost: 5$"));
        assert_eq!(ini.get("s", "j"), Some(""));
        // References are resolved before variables are expanded.
        assert_eq!(ini.get("s", "k"), Some("s3cr3t!"));
        // Scanned left to right: a lone "$", then the "$${" escape.
        assert_eq!(ini.get("s", "l"), Some("$${SECRET}"));

        let err = Ini::parse_with_env("[first]\nok = 1\n[Sessions]\nHashKey = ${UNSET_VAR}\n", env)
            .unwrap_err();
        match &err {
            ConfigError::EnvVar { section, key, var } => {
                assert_eq!(
                    (section.as_str(), key.as_str(), var.as_str()),
                    ("sessions", "hashkey", "UNSET_VAR")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("[sessions] hashkey") && msg.contains("UNSET_VAR"),
            "{msg}"
        );
    }

    #[test]
    fn process_environment_is_used_by_parse() {
        // PATH is set in any environment the tests run in.
        let path = std::env::var("PATH").unwrap();
        let ini = Ini::parse("[s]\np = ${PATH}\n").unwrap();
        assert_eq!(ini.get("s", "p"), Some(path.as_str()));
    }

    #[test]
    fn set_overrides_and_creates() {
        let mut ini = parse("[s]\na = 1\n");
        ini.set("S", "A", "2");
        ini.set("new", "Key", "${NOT_EXPANDED}");
        assert_eq!(ini.get("s", "a"), Some("2"));
        assert_eq!(ini.get("new", "key"), Some("${NOT_EXPANDED}"));
        assert_eq!(ini.sections().collect::<Vec<_>>(), ["s", "new"]);
    }

    #[test]
    fn debug_output_hides_values() {
        let ini = parse("[sessions]\nhashkey = very-secret-value\n");
        let text = format!("{ini:?}");
        assert!(text.contains("hashkey"), "{text}");
        assert!(!text.contains("very-secret-value"), "{text}");
    }

    #[test]
    fn secrets_are_not_printed() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some(***)");
        assert_eq!(secret.expose(), "hunter2");
        assert_eq!(secret, Secret::from("hunter2"));
        assert!(Secret::default().is_empty());
        let ini = parse("[clients]\ninternalsecret = abc\n");
        assert_eq!(ini.get_secret("clients", "internalsecret").expose(), "abc");
        assert!(ini.get_secret("clients", "missing").is_empty());
    }

    #[test]
    fn list_helpers() {
        assert_eq!(split_list("a, b,,c ,", ','), ["a", "b", "c"]);
        assert_eq!(split_list("", ','), Vec::<String>::new());
        assert_eq!(split_list(" , ", ','), Vec::<String>::new());
        assert_eq!(split_list("one", ','), ["one"]);
        assert_eq!(split_list("x y;z", ';'), ["x y", "z"]);
        assert_eq!(split_whitespace_list(" a  b\tc\nd "), ["a", "b", "c", "d"]);
        assert_eq!(split_whitespace_list("   "), Vec::<String>::new());
    }

    #[test]
    fn load_reads_files_and_reports_errors() {
        let dir = std::env::temp_dir().join(format!("ini-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        let good = dir.join("good.conf");
        std::fs::write(&good, "[http]\nlisten = 127.0.0.1:9\n").unwrap();
        let ini = Ini::load(&good).unwrap();
        assert_eq!(ini.get("http", "listen"), Some("127.0.0.1:9"));

        let missing = dir.join("missing.conf");
        let err = Ini::load(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }));
        assert!(err.to_string().contains("missing.conf"), "{err}");

        let binary = dir.join("binary.conf");
        std::fs::write(&binary, b"[s]\na = 1\nb = \xff\xfe\n").unwrap();
        let err = Ini::load(&binary).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { line: 3, .. }), "{err}");

        std::fs::remove_dir_all(&dir).unwrap();
    }

    const SERVER_CONF: &str = include_str!("../../../server.conf.in");

    #[test]
    fn shipped_server_conf_parses_with_expected_values() {
        let ini = Ini::parse_with_env(SERVER_CONF, no_env).unwrap();
        assert_eq!(
            ini.sections().collect::<Vec<_>>(),
            [
                "http",
                "https",
                "app",
                "sessions",
                "clients",
                "backend",
                "nats",
                "mcu",
                "turn",
                "geoip",
                "geoip-overrides",
                "continent-overrides",
                "stats"
            ]
        );
        assert_eq!(
            split_whitespace_list(ini.require("http", "listen").unwrap()),
            ["127.0.0.1:8080"]
        );
        assert_eq!(ini.get("https", "listen"), None);
        assert_eq!(ini.get_int("http", "readtimeout", 15).unwrap(), 15);
        assert!(!ini.get_bool("app", "debug", true).unwrap());
        assert_eq!(ini.get_string("app", "loglevel", "info"), "info");
        let hashkey = ini.require("sessions", "hashkey").unwrap();
        assert!([32, 64].contains(&hashkey.len()), "{}", hashkey.len());
        let blockkey = ini.require("sessions", "blockkey").unwrap();
        assert!([16, 24, 32].contains(&blockkey.len()), "{}", blockkey.len());
        assert!(hashkey.contains("change-me") && blockkey.contains("change-me"));
        assert!(ini
            .require("clients", "internalsecret")
            .unwrap()
            .contains("change-me"));
        assert_eq!(ini.get("backend", "backends"), None);
        assert!(!ini.get_bool("backend", "allowall", true).unwrap());
        assert_eq!(ini.get_int("backend", "timeout", 0).unwrap(), 10);
        assert_eq!(ini.get_int("backend", "connectionsperhost", 0).unwrap(), 8);
        assert_eq!(ini.get("nats", "url"), Some("nats://loopback"));
        assert_eq!(ini.get("mcu", "type"), None);
        assert_eq!(ini.get("mcu", "url"), None);
        assert!(!ini.has_section("backend-id"));
        assert!(ini.keys("geoip-overrides").is_empty());
        assert!(ini.keys("continent-overrides").is_empty());
        assert_eq!(
            ini.get_string("stats", "allowed_ips", "127.0.0.1"),
            "127.0.0.1"
        );
    }

    /// Every key of the Go server's `server.conf` must appear in the sample,
    /// active or as a commented-out example that parses once uncommented.
    #[test]
    fn shipped_server_conf_documents_every_key() {
        // Uncomment "#key = ..." and "#[section]" lines; prose comments start
        // with "# " and stay comments.
        let uncommented: String = SERVER_CONF
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if !rest.is_empty() && !rest.starts_with([' ', '#']) => rest,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let ini = Ini::parse_with_env(&uncommented, no_env).unwrap();
        let expected: &[(&str, &[&str])] = &[
            ("http", &["listen", "readtimeout", "writetimeout"]),
            (
                "https",
                &[
                    "listen",
                    "readtimeout",
                    "writetimeout",
                    "certificate",
                    "key",
                ],
            ),
            ("app", &["debug", "allowsubscribeany", "loglevel"]),
            ("sessions", &["hashkey", "blockkey"]),
            ("clients", &["internalsecret"]),
            (
                "backend",
                &[
                    "backends",
                    "allowall",
                    "secret",
                    "timeout",
                    "connectionsperhost",
                    "skipverify",
                    "allowed",
                    "allowhttp",
                    "sessionlimit",
                ],
            ),
            (
                "backend-id",
                &[
                    "url",
                    "secret",
                    "sessionlimit",
                    "maxstreambitrate",
                    "maxscreenbitrate",
                ],
            ),
            ("another-backend", &["url", "secret"]),
            ("nats", &["url"]),
            (
                "mcu",
                &[
                    "type",
                    "url",
                    "maxstreambitrate",
                    "maxscreenbitrate",
                    "timeout",
                    "proxytimeout",
                    "urltype",
                    "skipverify",
                    "token_id",
                    "token_key",
                    "dnsdiscovery",
                    "endpoints",
                    "discoverysrv",
                    "discoveryservice",
                    "clientkey",
                    "clientcert",
                    "cacert",
                    "keyprefix",
                ],
            ),
            ("turn", &["apikey", "secret", "servers"]),
            ("geoip", &["license", "url"]),
            ("geoip-overrides", &["127.0.0.1", "192.168.0.0/24"]),
            ("continent-overrides", &["af", "sa"]),
            ("stats", &["allowed_ips"]),
        ];
        for (section, keys) in expected {
            for key in *keys {
                assert!(
                    ini.get(section, key).is_some(),
                    "[{section}] {key} is not in server.conf.in"
                );
            }
        }
        // Commented examples hold the documented defaults.
        assert_eq!(
            ini.get_int("mcu", "maxstreambitrate", 0).unwrap(),
            1_048_576
        );
        assert_eq!(
            ini.get_int("mcu", "maxscreenbitrate", 0).unwrap(),
            2_097_152
        );
        assert_eq!(ini.get_int("mcu", "proxytimeout", 0).unwrap(), 2);
        assert_eq!(ini.get_int("mcu", "timeout", 0).unwrap(), 10);
        assert_eq!(ini.get("mcu", "urltype"), Some("static"));
        assert_eq!(ini.get_int("http", "readtimeout", 0).unwrap(), 15);
        assert_eq!(ini.get_int("https", "writetimeout", 0).unwrap(), 15);
        assert_eq!(ini.get("app", "loglevel"), Some("info"));
    }

    /// Small deterministic generator so the robustness test needs no crates.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_input_never_panics() {
        const PIECES: &[&str] = &[
            "[", "]", "=", ":", "#", ";", " ", "\t", "\n", "\r\n", "\r", "%(", ")s", "%(a)s",
            "%(b)s", "${", "}", "$", "${A}", "${B}", "$${", "a", "b", "rem", "REM", "default", "é",
            "ß", "İ", "😀", "\u{feff}", "\u{a0}", "\u{2028}", "\0", "0", "1", "yes", "x y", "[s]",
            "[]", "a = ", "b:", " #", "\t;",
        ];
        let env = |name: &str| (name == "A").then(|| "%(a)s${B}".to_owned());
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut parsed = 0;
        for round in 0..20_000 {
            let mut text = String::new();
            for _ in 0..rng.below(40) {
                text.push_str(PIECES[rng.below(PIECES.len())]);
            }
            if round % 7 == 0 {
                // Arbitrary characters, including ones outside the pieces.
                for _ in 0..rng.below(20) {
                    let c = char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('?');
                    text.push(c);
                }
            }
            let Ok(ini) = Ini::parse_with_env(&text, env) else {
                continue;
            };
            parsed += 1;
            let _ = format!("{ini:?}");
            let names: Vec<String> = ini.sections().map(str::to_owned).collect();
            for section in &names {
                assert!(ini.has_section(section));
                let keys: Vec<String> = ini
                    .keys(section)
                    .iter()
                    .map(|(k, _)| (*k).to_owned())
                    .collect();
                for key in &keys {
                    assert!(
                        ini.get(section, key).is_some(),
                        "{text:?} [{section}] {key}"
                    );
                    let _ = ini.get_string(section, key, "");
                    let _ = ini.get_bool(section, key, false).map_err(|e| e.to_string());
                    let _ = ini.get_int(section, key, 0).map_err(|e| e.to_string());
                    let _ = ini.require(section, key).map_err(|e| e.to_string());
                }
            }
        }
        // Make sure the getters were exercised, not only the error paths.
        assert!(parsed > 2_000, "only {parsed} inputs parsed");
    }
}
