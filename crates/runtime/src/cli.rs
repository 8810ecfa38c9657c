//! What `main` of every binary does: flags (`--config FILE`, `--version`,
//! Go-style single dashes accepted so existing unit files work), logging
//! from the config's `[app] loglevel`, a multi-threaded runtime, and the
//! exit code (64 for configuration errors).

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

fn usage(name: &str) -> ! {
    eprintln!("usage: {name} [--config FILE] [--version]");
    std::process::exit(crate::EXIT_CONFIG);
}

/// Parses the command line and runs `run(config path)` to completion.
pub fn main<F, Fut, E>(name: &str, default_config: &str, version_line: &str, run: F) -> ExitCode
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut config = PathBuf::from(default_config);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.trim_start_matches('-') {
            "version" => {
                println!("{version_line}");
                return ExitCode::SUCCESS;
            }
            "config" => match args.next() {
                Some(p) => config = PathBuf::from(p),
                None => usage(name),
            },
            a if a.starts_with("config=") => config = PathBuf::from(&a["config=".len()..]),
            "h" | "help" => usage(name),
            _ => {
                eprintln!("unknown argument: {arg}");
                usage(name);
            }
        }
    }
    let level = crate::config::Ini::load(&config)
        .map(|ini| ini.get_string("app", "loglevel", "info"))
        .unwrap_or_else(|_| "info".into());
    crate::logging::init(&level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("could not start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(config.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}: {e}", config.display());
            eprintln!("{name}: {}: {e}", config.display());
            ExitCode::from(crate::EXIT_CONFIG as u8)
        }
    }
}
