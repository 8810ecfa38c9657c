//! Strict reading of a configuration: which sections and keys a binary
//! knows, so that a typo (`backend = nc1`, `[backends]`), a stray line or a
//! secret still at its placeholder is reported with its line instead of
//! being silently ignored like the Go server does.
//!
//! These are warnings (an existing Go `server.conf` must keep starting);
//! errors that make a configuration unusable are reported by the code
//! reading the values, with exit code 64.

use crate::config::Ini;

/// The sections and keys a binary reads.
#[derive(Debug)]
pub struct Schema {
    /// Known sections with their keys; a key list of `["*"]` takes any key
    /// (e.g. `[geoip-overrides]`: addresses to countries).
    pub sections: &'static [(&'static str, &'static [&'static str])],
    /// Sections named in the value of a key, and the keys they take: for
    /// the signaling server, one section per id in `[backend] backends`.
    pub listed: Option<ListedSections>,
    /// Sections the Go server reads that this implementation does not use.
    pub upstream_only: &'static [&'static str],
    /// `(section, key)` of secrets to check for placeholder values; `key`
    /// in every listed section is checked as well when `listed_secret`.
    pub secrets: &'static [(&'static str, &'static str)],
    pub listed_secret: Option<&'static str>,
}

/// Sections whose names are the comma-separated value of `[section] key`.
#[derive(Debug)]
pub struct ListedSections {
    pub section: &'static str,
    pub key: &'static str,
    pub keys: &'static [&'static str],
}

/// One finding, at a line of the file (0: not from the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lint {
    pub line: usize,
    pub message: String,
}

/// Text in a value that marks a secret as not yet set: our shipped files
/// use `change-me`, the Go server's sample `the-shared-secret`, ...
const PLACEHOLDERS: &[&str] = &[
    "change-me",
    "changeme",
    "replace-me",
    "the-secret-for-session-checksums",
    "-encryption-key-",
    "the-shared-secret",
];

/// Whether a secret's value is a placeholder from a sample configuration.
pub fn is_placeholder(value: &str) -> bool {
    let v = value.to_ascii_lowercase();
    PLACEHOLDERS.iter().any(|p| v.contains(p))
}

impl Schema {
    fn known_keys(&self, section: &str, listed: &[String]) -> Option<&'static [&'static str]> {
        if let Some((_, keys)) = self.sections.iter().find(|(s, _)| *s == section) {
            return Some(keys);
        }
        match &self.listed {
            Some(l) if listed.iter().any(|id| id == section) => Some(l.keys),
            _ => None,
        }
    }

    /// Ids in the listing key (`[backend] backends`), lower-cased as
    /// section names are.
    fn listed_ids(&self, ini: &Ini) -> Vec<String> {
        let Some(l) = &self.listed else {
            return Vec::new();
        };
        crate::config::split_list(ini.get(l.section, l.key).unwrap_or_default(), ',')
            .into_iter()
            .map(|s| s.to_ascii_lowercase())
            .collect()
    }

    /// Everything worth a warning in `ini`, in line order.
    pub fn lint(&self, ini: &Ini) -> Vec<Lint> {
        let listed = self.listed_ids(ini);
        let mut out = Vec::new();
        for section in ini.sections() {
            if section == crate::config::DEFAULT_SECTION {
                continue;
            }
            let line = ini.section_line(section).unwrap_or(0);
            let Some(keys) = self.known_keys(section, &listed) else {
                let message = if self.upstream_only.contains(&section) {
                    format!(
                        "section [{section}] is read by the Go server but not by this one; ignored"
                    )
                } else if self.listed.is_some() {
                    let l = self
                        .listed
                        .as_ref()
                        .map(|l| {
                            format!(" (a backend must be listed in [{}] {})", l.section, l.key)
                        })
                        .unwrap_or_default();
                    format!("unknown section [{section}], ignored{l}")
                } else {
                    format!("unknown section [{section}], ignored")
                };
                out.push(Lint { line, message });
                continue;
            };
            if keys == ["*"] {
                continue;
            }
            for (key, _) in ini.keys(section) {
                if !keys.contains(&key) {
                    let hint = close_match(key, keys)
                        .map(|k| format!(" (did you mean {k}?)"))
                        .unwrap_or_default();
                    out.push(Lint {
                        line: ini.key_line(section, key).unwrap_or(line),
                        message: format!("unknown key {key} in [{section}], ignored{hint}"),
                    });
                }
            }
        }
        let mut secrets: Vec<(String, &str)> = self
            .secrets
            .iter()
            .map(|(s, k)| ((*s).to_owned(), *k))
            .collect();
        if let Some(k) = self.listed_secret {
            secrets.extend(listed.iter().map(|id| (id.clone(), k)));
        }
        for (section, key) in secrets {
            if ini.get(&section, key).is_some_and(is_placeholder) {
                out.push(Lint {
                    line: ini.key_line(&section, key).unwrap_or(0),
                    message: format!(
                        "[{section}] {key} is still the sample's placeholder: set a random secret (e.g. openssl rand -hex 16)"
                    ),
                });
            }
        }
        for (line, section, key) in ini.continuation_lines() {
            out.push(Lint {
                line: *line,
                message: format!(
                    "line is not \"key = value\"; read as a continuation of [{section}] {key} (goconf rule)"
                ),
            });
        }
        out.sort_by_key(|l| l.line);
        out
    }
}

/// A known key one edit (insertion, deletion, substitution) or a missing or
/// extra trailing `s` away from `key`.
fn close_match(key: &str, keys: &[&'static str]) -> Option<&'static str> {
    keys.iter().copied().find(|k| edit_distance(key, k) <= 1)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: Schema = Schema {
        sections: &[
            ("http", &["listen"]),
            ("backend", &["backends", "secret"]),
            ("geoip-overrides", &["*"]),
        ],
        listed: Some(ListedSections {
            section: "backend",
            key: "backends",
            keys: &["url", "secret"],
        }),
        upstream_only: &["grpc"],
        secrets: &[("backend", "secret")],
        listed_secret: Some("secret"),
    };

    fn lint(text: &str) -> Vec<Lint> {
        SCHEMA.lint(&Ini::parse(text).expect("parses"))
    }

    #[test]
    fn clean_file_has_no_findings() {
        let text = "[http]\nlisten = 1\n[backend]\nbackends = nc1\n[nc1]\nurl = u\nsecret = s3cr3t\n[geoip-overrides]\n10.0.0.0/8 = DE\n";
        assert_eq!(lint(text), []);
    }

    #[test]
    fn typos_are_named_with_their_line() {
        let text =
            "[http]\nlisten = 1\n[backend]\nbackend = nc1\n[backends]\nx = 1\n[grpc]\nlisten = 2\n";
        let l = lint(text);
        assert_eq!(l.len(), 3, "{l:?}");
        assert_eq!(l[0].line, 4);
        assert!(
            l[0].message.contains("unknown key backend in [backend]"),
            "{l:?}"
        );
        assert!(l[0].message.contains("did you mean backends?"), "{l:?}");
        assert_eq!(l[1].line, 5);
        assert!(l[1].message.contains("unknown section [backends]"), "{l:?}");
        assert_eq!(l[2].line, 7);
        assert!(l[2].message.contains("Go server"), "{l:?}");
    }

    #[test]
    fn garbage_line_and_placeholders() {
        let text = "[backend]\nbackends = nc1\n[nc1]\nurl = u\nthis is garbage\nsecret = change-me-please\n";
        let l = lint(text);
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!(l[0].line, 5);
        assert!(l[0].message.contains("continuation of [nc1] url"), "{l:?}");
        assert_eq!(l[1].line, 6);
        assert!(
            l[1].message
                .contains("[nc1] secret is still the sample's placeholder"),
            "{l:?}"
        );
    }

    #[test]
    fn distance() {
        assert_eq!(edit_distance("backend", "backends"), 1);
        assert_eq!(edit_distance("listen", "listen"), 0);
        assert_eq!(edit_distance("abc", "xyz"), 3);
    }
}
