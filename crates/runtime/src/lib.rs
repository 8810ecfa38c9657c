//! Process plumbing shared by the binaries: configuration files, logging,
//! signals, graceful shutdown, HTTP listeners and Prometheus metrics.
//!
//! Nothing here knows about signaling; the hub and the binaries build on it.

pub mod check;
pub mod cli;
pub mod closing;
pub mod config;
pub mod dates;
pub mod dns_srv;
pub mod etcd;
pub mod keys;
pub mod limits;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod reload;
pub mod schema;
pub mod shutdown;
pub mod signals;
pub mod tls;
pub mod upgrade;
pub mod x509;

/// Exit code for a configuration that cannot be used (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;
