//! Value helpers for configuration users: [`Secret`] (a value that never
//! prints itself) and the list splitters.

use std::fmt;

/// A secret (key, password, shared secret). `Debug` and `Display` print `***`
/// so it cannot leak into logs by accident; [`Secret::expose`] gives the text.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Splits at `sep`, trims every item and drops empty ones
/// (`"a, b,,c "` -> `["a", "b", "c"]`).
pub fn split_list(value: &str, sep: char) -> Vec<String> {
    value
        .split(sep)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Splits at runs of whitespace (`" a  b\tc"` -> `["a", "b", "c"]`).
pub fn split_whitespace_list(value: &str) -> Vec<String> {
    value.split_whitespace().map(str::to_owned).collect()
}
