//! `proxy`: the MCU proxy in front of one Janus gateway.
//! `proxy check --config FILE` tests the configuration and Janus instead.

fn main() -> std::process::ExitCode {
    runtime::cli::main_with_check(
        "proxy",
        "proxy.conf",
        &format!("nextcloud-spreed-signaling-proxy {}", proxy::VERSION),
        proxy::run_from_config,
        |path| async move { proxy::check::run(&path).await },
    )
}
