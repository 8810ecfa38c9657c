//! Client message handlers: one module per kind of message.

pub mod hello;
pub mod internal;
pub mod message;
pub mod room;
