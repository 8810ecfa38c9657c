//! Janus gateway client (work in progress).
