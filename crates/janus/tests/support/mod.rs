//! The real-Janus harness lives in testkit (shared with the signaling tests).

pub use testkit::janus::*;
