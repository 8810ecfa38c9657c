//! `signaling`: standalone signaling server for Nextcloud Talk.
//! `signaling check --config FILE` tests the configuration and every
//! dependency instead of serving.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("check") {
        args.remove(1);
        let mut config = std::path::PathBuf::from("server.conf");
        let mut it = args.iter().skip(1);
        while let Some(a) = it.next() {
            match a.trim_start_matches('-') {
                "config" => match it.next() {
                    Some(p) => config = p.into(),
                    None => return ExitCode::from(runtime::EXIT_CONFIG as u8),
                },
                c if c.starts_with("config=") => config = c["config=".len()..].into(),
                _ => {
                    eprintln!("usage: signaling check [--config FILE]");
                    return ExitCode::from(runtime::EXIT_CONFIG as u8);
                }
            }
        }
        // Only our own lines on stdout; warnings of the libraries to stderr.
        runtime::logging::init("error");
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
        let failed = rt.block_on(signaling::check::run(&config));
        rt.shutdown_timeout(std::time::Duration::from_secs(1));
        return if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    runtime::cli::main(
        "signaling",
        "server.conf",
        &format!("nextcloud-spreed-signaling {}", signaling::VERSION),
        signaling::run_from_config,
    )
}
