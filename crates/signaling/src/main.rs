//! `signaling`: standalone signaling server for Nextcloud Talk.

fn main() -> std::process::ExitCode {
    runtime::cli::main(
        "signaling",
        "server.conf",
        &format!("nextcloud-spreed-signaling {}", signaling::VERSION),
        signaling::run_from_config,
    )
}
