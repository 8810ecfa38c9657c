//! `proxy`: the MCU proxy in front of one Janus gateway.
//! `proxy check --config FILE` tests the configuration and Janus instead.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("check") {
        args.remove(1);
        let config = match args
            .iter()
            .position(|a| a.trim_start_matches('-') == "config")
        {
            Some(i) => match args.get(i + 1) {
                Some(p) => std::path::PathBuf::from(p),
                None => return ExitCode::from(runtime::EXIT_CONFIG as u8),
            },
            None => std::path::PathBuf::from("proxy.conf"),
        };
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
        let failed = rt.block_on(proxy::check::run(&config));
        rt.shutdown_timeout(std::time::Duration::from_secs(1));
        return if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    runtime::cli::main(
        "proxy",
        "proxy.conf",
        &format!("nextcloud-spreed-signaling-proxy {}", proxy::VERSION),
        proxy::run_from_config,
    )
}
