//! `proxy`: the MCU proxy in front of one Janus gateway.
//! `proxy check --config FILE` tests the configuration and Janus instead.

/// jemalloc returns freed memory to the system (settings in
/// `.cargo/config.toml`).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    runtime::cli::main_with_check(
        "proxy",
        "proxy.conf",
        &format!("nextcloud-spreed-signaling-proxy {}", proxy::VERSION),
        proxy::run_from_config,
        |path| async move { proxy::check::run(&path).await },
    )
}
