//! Certificates for tests, made with the `openssl` CLI.

use std::io;
use std::path::PathBuf;
use std::process::Command;

use crate::process::TempDir;

/// `openssl` with `args`, failing with its output.
pub(crate) fn openssl(args: &[&str]) -> io::Result<()> {
    let out = Command::new("openssl").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, valid for
/// `days`, made with the `openssl` CLI: `<dir>/<name>.crt` and `.key`.
pub fn self_signed_cert(dir: &TempDir, name: &str, days: u32) -> io::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (
        dir.join(&format!("{name}.crt")),
        dir.join(&format!("{name}.key")),
    );
    let s = |p: &PathBuf| p.display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-days",
        &days.to_string(),
        "-keyout",
        &s(&key),
        "-out",
        &s(&cert),
    ])?;
    Ok((cert, key))
}
