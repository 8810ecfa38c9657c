//! `signaling`: standalone signaling server for Nextcloud Talk.
//! `signaling check --config FILE` tests the configuration and every
//! dependency instead of serving.

/// jemalloc returns freed memory to the system (settings in
/// `.cargo/config.toml`).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    runtime::cli::main_with_check(
        "signaling",
        "server.conf",
        &format!("nextcloud-spreed-signaling {}", signaling::VERSION),
        signaling::run_from_config,
        |path| async move { signaling::check::run(&path).await },
    )
}
