//! `signaling`: standalone signaling server for Nextcloud Talk.
//! `signaling check --config FILE` tests the configuration and every
//! dependency instead of serving.

fn main() -> std::process::ExitCode {
    runtime::cli::main_with_check(
        "signaling",
        "server.conf",
        &format!("nextcloud-spreed-signaling {}", signaling::VERSION),
        signaling::run_from_config,
        |path| async move { signaling::check::run(&path).await },
    )
}
