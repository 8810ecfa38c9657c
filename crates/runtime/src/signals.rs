//! Unix signals as a stream of typed events: SIGINT/SIGTERM stop, SIGHUP
//! reloads, SIGUSR1 drains.

use futures_util::StreamExt;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Stop,
    Reload,
    Drain,
}

/// Start listening for signals; events arrive on the returned channel.
pub fn listen() -> std::io::Result<mpsc::Receiver<Signal>> {
    let mut signals = signal_hook_tokio::Signals::new([SIGHUP, SIGINT, SIGTERM, SIGUSR1])?;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Some(sig) = signals.next().await {
            let event = match sig {
                SIGHUP => Signal::Reload,
                SIGUSR1 => Signal::Drain,
                _ => Signal::Stop,
            };
            if tx.send(event).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
