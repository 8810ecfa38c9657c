//! `proxy`: the MCU proxy in front of one Janus gateway.

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ! {
    eprintln!("usage: proxy [--config FILE] [--version]");
    std::process::exit(runtime::EXIT_CONFIG);
}

fn main() -> ExitCode {
    let mut config = PathBuf::from("proxy.conf");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        // Go-style single-dash flags too, so existing unit files work.
        match arg.trim_start_matches('-') {
            "version" => {
                println!("nextcloud-spreed-signaling-proxy {}", proxy::VERSION);
                return ExitCode::SUCCESS;
            }
            "config" => match args.next() {
                Some(p) => config = PathBuf::from(p),
                None => usage(),
            },
            a if a.starts_with("config=") => config = PathBuf::from(&a["config=".len()..]),
            "h" | "help" => usage(),
            _ => {
                eprintln!("unknown argument: {arg}");
                usage();
            }
        }
    }
    let level = runtime::config::Ini::load(&config)
        .map(|ini| ini.get_string("app", "loglevel", "info"))
        .unwrap_or_else(|_| "info".into());
    runtime::logging::init(&level);
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
    match rt.block_on(proxy::run_from_config(config.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}: {e}", config.display());
            eprintln!("proxy: {}: {e}", config.display());
            ExitCode::from(runtime::EXIT_CONFIG as u8)
        }
    }
}
