//! `proxy genkey`: a new RSA key pair for a signaling server's proxy token.
//! The private key goes to the signaling server (`[mcu] token_key`), the
//! public key to every proxy it may use (`[tokens] <id>`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum GenkeyError {
    #[error("{0}")]
    Key(#[from] runtime::keys::KeyError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token id {0:?}: use letters, digits, '-', '_' and '.' only")]
    Id(String),
}

/// Writes `text` to a new file (never over an existing one) with `mode`.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), GenkeyError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|source| GenkeyError::Write {
            path: path.to_owned(),
            source,
        })
}

/// Generates the pair for token `id` as `DIR/ID.key` (mode 0600) and
/// `DIR/ID.pub` (0644); returns the two paths.
pub fn generate(id: &str, dir: &Path, bits: usize) -> Result<(PathBuf, PathBuf), GenkeyError> {
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(GenkeyError::Id(id.to_owned()));
    }
    let (private, public) = runtime::keys::generate(bits)?;
    let key = dir.join(format!("{id}.key"));
    let public_path = dir.join(format!("{id}.pub"));
    // Refuse before writing anything if either exists.
    for p in [&key, &public_path] {
        if p.exists() {
            return Err(GenkeyError::Write {
                path: p.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists; not overwritten",
                ),
            });
        }
    }
    write_new(&key, &private, 0o600)?;
    write_new(&public_path, &public, 0o644)?;
    Ok((key, public_path))
}

/// The lines to add to both configurations, for the operator.
pub fn instructions(id: &str, key: &Path, public: &Path) -> String {
    format!(
        "wrote {key} (private, 0600) and {public}\n\
         \n\
         signaling server, server.conf (the key readable by its user only):\n\
         \x20 [mcu]\n\
         \x20 type = proxy\n\
         \x20 token_id = {id}\n\
         \x20 token_key = {key}\n\
         \n\
         every proxy it uses, proxy.conf, then reload the proxy (SIGHUP):\n\
         \x20 [tokens]\n\
         \x20 {id} = {public}\n",
        key = key.display(),
        public = public.display(),
    )
}
