//! Error codes a client sees, in one place (the names and texts are the
//! Go server's).

use proto::client::Error;

pub fn err_invalid_format() -> Error {
    Error::new("invalid_format", "Invalid data format.")
}
pub fn err_hello_expected() -> Error {
    Error::new("hello_expected", "Expected Hello request.")
}
pub fn err_auth_failed() -> Error {
    Error::new("auth_failed", "The user could not be authenticated.")
}
pub fn err_room_join_failed() -> Error {
    Error::new("room_join_failed", "Could not join the room.")
}
pub fn err_invalid_client_type() -> Error {
    Error::new("invalid_client_type", "The client type is not supported.")
}
pub fn err_invalid_backend() -> Error {
    Error::new("invalid_backend", "The backend URL is not supported.")
}
pub fn err_invalid_token() -> Error {
    Error::new("invalid_token", "The passed token is invalid.")
}
pub fn err_no_such_session() -> Error {
    Error::new("no_such_session", "The session to resume does not exist.")
}
pub fn err_too_many_requests() -> Error {
    Error::new("too_many_requests", "Too many requests.")
}
pub fn err_internal(e: impl std::fmt::Display) -> Error {
    Error::new("internal_error", e.to_string())
}
