//! Reading the text: the line-by-line first pass (sections, options,
//! continuation lines, comments) and the second pass that resolves
//! `%(name)s` references and `${NAME}` variables. The dialect is described
//! in the parent module.

use super::{lower, ConfigError, Ini, Section, DEFAULT_SECTION};

/// Upper bound on `%(name)s` replacements within one value (as in goconf).
const MAX_SUBSTITUTIONS: usize = 200;

/// Longest excerpt of an offending line quoted in a syntax error.
const MAX_QUOTED_LINE: usize = 80;

/// Replaces `%(name)s` references the way goconf does: always the leftmost
/// one, looking the name up in `section` and then in `default`, at most
/// [`MAX_SUBSTITUTIONS`] times.
fn interpolate(raw: &str, section: &Section, default: Option<&Section>) -> Result<String, String> {
    let mut value = raw.to_owned();
    let mut count = 0;
    while count < MAX_SUBSTITUTIONS {
        let Some((start, end, name)) = find_reference(&value) else {
            return Ok(value);
        };
        let name = lower(name);
        let replacement = section
            .entry(&name)
            .or_else(|| default.and_then(|d| d.entry(&name)))
            .map(|e| e.value.as_str())
            .unwrap_or_default();
        if replacement.is_empty() {
            return Err(format!("%({name})s refers to a missing or empty option"));
        }
        value.replace_range(start..end, replacement);
        count += 1;
    }
    Err(format!(
        "more than {MAX_SUBSTITUTIONS} %(name)s replacements (circular reference?)"
    ))
}

/// Finds the leftmost `%(name)s` with `name` made of ASCII letters, digits,
/// `_`, `.` and `-`. Returns the byte range of the whole reference and the name.
fn find_reference(value: &str) -> Option<(usize, usize, &str)> {
    let bytes = value.as_bytes();
    let mut from = 0;
    while let Some(pos) = value[from..].find("%(") {
        let start = from + pos;
        let name_start = start + 2;
        let name_len = bytes[name_start..]
            .iter()
            .take_while(|&&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
            .count();
        let name_end = name_start + name_len;
        if name_len > 0 && bytes[name_end..].starts_with(b")s") {
            return Some((start, name_end + 2, &value[name_start..name_end]));
        }
        from = start + 1;
    }
    None
}

/// Replaces `${NAME}` by the variable's value and `$${` by `${`. Returns the
/// name of the first unset variable as the error.
fn expand_env(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !value.contains("${") {
        return Ok(value.to_owned());
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        if let Some(after) = tail.strip_prefix("${") {
            if let Some(close) = after.find('}') {
                let name = &after[..close];
                if is_env_name(name) {
                    out.push_str(&env(name).ok_or_else(|| name.to_owned())?);
                    rest = &after[close + 1..];
                    continue;
                }
            }
        }
        out.push('$');
        rest = &tail[1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Cuts a value at the first `#` or `;` that follows a space or a tab.
fn strip_comment(value: &str) -> &str {
    let cut = value
        .as_bytes()
        .windows(2)
        .position(|w| matches!(w[0], b' ' | b'\t') && matches!(w[1], b'#' | b';'));
    match cut {
        Some(i) => &value[..i],
        None => value,
    }
}

fn syntax(index: usize, what: &str, line: &str) -> ConfigError {
    let mut quoted: String = line.chars().take(MAX_QUOTED_LINE).collect();
    if quoted.len() < line.len() {
        quoted.push('…');
    }
    ConfigError::Syntax {
        line: index + 1,
        msg: format!("{what}: {quoted:?}"),
    }
}

impl Ini {
    pub(super) fn section_index_or_insert(&mut self, name: String) -> usize {
        if let Some(&i) = self.index.get(&name) {
            return i;
        }
        let i = self.sections.len();
        self.index.insert(name.clone(), i);
        self.sections.push(Section::new(name));
        i
    }

    /// First pass: builds the sections with the values as written.
    pub(super) fn parse_raw(text: &str) -> Result<Ini, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut ini = Ini::default();
        // The section receiving options; `None` after a header with an empty
        // name (goconf accepts such a header but no option under it).
        let mut current: Option<usize> = None;
        let mut current_name = DEFAULT_SECTION.to_owned();
        // The option that continuation lines extend.
        let mut last_key: Option<String> = None;

        for (number, line) in text.split('\n').enumerate() {
            let line = line.trim();
            let bytes = line.as_bytes();
            if bytes.is_empty()
                || bytes[0] == b'#'
                || bytes[0] == b';'
                || (bytes.len() >= 3 && bytes[..3].eq_ignore_ascii_case(b"rem"))
            {
                continue;
            }
            if bytes[0] == b'[' && bytes.len() >= 2 && bytes[bytes.len() - 1] == b']' {
                let name = lower(line[1..line.len() - 1].trim());
                last_key = None;
                if name.is_empty() {
                    current = None;
                } else {
                    let i = ini.section_index_or_insert(name.clone());
                    if ini.sections[i].line == 0 {
                        ini.sections[i].line = number + 1;
                    }
                    current = Some(i);
                }
                current_name = name;
                continue;
            }
            let section = match current {
                Some(i) => i,
                None if current_name.is_empty() => {
                    return Err(syntax(
                        number,
                        "option under a section header without a name",
                        line,
                    ));
                }
                None => {
                    // Options before the first header go to `default`.
                    let i = ini.section_index_or_insert(DEFAULT_SECTION.to_owned());
                    current = Some(i);
                    i
                }
            };
            match line.find(['=', ':']) {
                Some(sep) if sep > 0 => {
                    let key = lower(line[..sep].trim());
                    let value = strip_comment(&line[sep + 1..]).trim().to_owned();
                    ini.sections[section].set(key.clone(), value, number + 1);
                    last_key = Some(key);
                }
                _ => {
                    let Some(key) = &last_key else {
                        return Err(syntax(
                            number,
                            "expected \"key = value\", a [section] header or a comment",
                            line,
                        ));
                    };
                    let addition = strip_comment(line).trim();
                    let section = &mut ini.sections[section];
                    ini.continuations
                        .push((number + 1, section.name.clone(), key.clone()));
                    if let Some(&i) = section.index.get(key) {
                        let value = &mut section.entries[i].value;
                        value.push('\n');
                        value.push_str(addition);
                    }
                }
            }
        }
        Ok(ini)
    }

    /// Second pass: replaces `%(name)s` references and `${NAME}` variables.
    pub(super) fn resolve(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        enum Failure {
            /// A `%(name)s` reference that cannot be resolved.
            Reference(String),
            /// An unset environment variable.
            EnvVar(String),
        }

        let default = self.index.get(DEFAULT_SECTION).map(|&i| &self.sections[i]);
        // Computed for every option before any is replaced, since values
        // refer to each other as written.
        let resolved: Vec<Vec<Result<String, Failure>>> = self
            .sections
            .iter()
            .map(|section| {
                section
                    .entries
                    .iter()
                    .map(|entry| {
                        let value = interpolate(&entry.value, section, default)
                            .map_err(Failure::Reference)?;
                        expand_env(&value, env).map_err(Failure::EnvVar)
                    })
                    .collect()
            })
            .collect();

        for (section, values) in self.sections.iter_mut().zip(resolved) {
            for (entry, value) in section.entries.iter_mut().zip(values) {
                match value {
                    Ok(value) => entry.value = value,
                    Err(Failure::EnvVar(var)) => {
                        return Err(ConfigError::EnvVar {
                            section: section.name.clone(),
                            key: entry.key.clone(),
                            var,
                        });
                    }
                    Err(Failure::Reference(reason)) => {
                        tracing::warn!(
                            section = %section.name,
                            key = %entry.key,
                            "configuration value unusable: {reason}"
                        );
                        entry.value = String::new();
                        entry.unresolved = Some(reason);
                    }
                }
            }
        }
        Ok(())
    }
}
