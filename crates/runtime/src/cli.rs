//! What `main` of every binary does: flags (`--config FILE`, `--version`,
//! Go-style single dashes accepted so existing unit files work), logging
//! from the config's `[app] loglevel`, a multi-threaded runtime, and the
//! exit code (64 for configuration errors).

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

fn usage(name: &str) -> ! {
    eprintln!("usage: {name} [check] [--config FILE] [--version]");
    std::process::exit(crate::EXIT_CONFIG);
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("could not start runtime: {e}");
            None
        }
    }
}

/// Like [`main`], with a `check` subcommand: `NAME check [--config FILE]`
/// runs `check(config path)`, which prints its findings and returns the
/// number of failures (exit code 0 only for none).
pub fn main_with_check<F, Fut, E, C, CFut>(
    name: &str,
    default_config: &str,
    version_line: &str,
    run: F,
    check: C,
) -> ExitCode
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
    C: FnOnce(PathBuf) -> CFut,
    CFut: Future<Output = usize>,
{
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("check") {
        return main(name, default_config, version_line, run);
    }
    let mut config = PathBuf::from(default_config);
    let mut rest = args.iter().skip(1);
    while let Some(a) = rest.next() {
        match a.trim_start_matches('-') {
            "config" => match rest.next() {
                Some(p) => config = PathBuf::from(p),
                None => usage(name),
            },
            c if c.starts_with("config=") => config = PathBuf::from(&c["config=".len()..]),
            _ => usage(name),
        }
    }
    // Only the findings on stdout; library errors to stderr.
    crate::logging::init("error");
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let failed = rt.block_on(check(config));
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
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
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
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
