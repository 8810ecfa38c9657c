//! `proxy`: the MCU proxy in front of one Janus gateway.

fn main() -> std::process::ExitCode {
    runtime::cli::main(
        "proxy",
        "proxy.conf",
        &format!("nextcloud-spreed-signaling-proxy {}", proxy::VERSION),
        proxy::run_from_config,
    )
}
