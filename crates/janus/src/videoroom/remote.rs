//! Remote publishers (Janus >= 1.1): a publisher on this Janus fed by RTP
//! from another Janus, and the other side's `publish_remotely`.

use serde_json::{json, Value};

use super::{uint, FeedId, RoomId};
use crate::client::Handle;
use crate::error::{Error, Result};

/// Where a remote publisher on another Janus receives RTP (the answer to
/// [`add_remote_publisher`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteEndpoint {
    pub id: FeedId,
    pub port: u16,
    pub rtcp_port: u16,
}

/// Creates, in `room` of this Janus, a publisher `id` fed by RTP from
/// another Janus (`publish_remotely` there), with the streams the real
/// publisher has (`streams`: Janus's `mid`/`mindex`/`type`/`codec`...
/// objects). Janus >= 1.1. Returns the ports the other Janus must send to.
pub async fn add_remote_publisher(
    handle: &Handle,
    room: RoomId,
    id: FeedId,
    streams: &Value,
) -> Result<RemoteEndpoint> {
    let response = handle
        .message(
            json!({"request": "add_remote_publisher", "room": room, "id": id, "streams": streams}),
            None,
        )
        .await?;
    let port = |key: &str| uint(&response.data, key).and_then(|p| u16::try_from(p).ok());
    match (port("port"), port("rtcp_port")) {
        (Some(port), rtcp) if port != 0 => Ok(RemoteEndpoint {
            id: uint(&response.data, "id").unwrap_or(id),
            port,
            rtcp_port: rtcp.unwrap_or(0),
        }),
        _ => Err(Error::Protocol {
            request: "add_remote_publisher",
            detail: format!("no port in {}", response.data),
        }),
    }
}

/// Removes a publisher created by [`add_remote_publisher`]; its
/// subscribers are told the feed left.
pub async fn remove_remote_publisher(handle: &Handle, room: RoomId, id: FeedId) -> Result<()> {
    handle
        .message(
            json!({"request": "remove_remote_publisher", "room": room, "id": id}),
            None,
        )
        .await?;
    Ok(())
}

/// Starts sending the media of local publisher `publisher` in `room` to a
/// remote publisher on another Janus (`host`:`port`, RTCP to `rtcp_port`),
/// under the caller's name `remote_id` (unique per publisher).
pub async fn publish_remotely(
    handle: &Handle,
    room: RoomId,
    publisher: FeedId,
    remote_id: &str,
    host: &str,
    port: u16,
    rtcp_port: u16,
) -> Result<()> {
    let mut body = json!({
        "request": "publish_remotely", "room": room, "publisher_id": publisher,
        "remote_id": remote_id, "host": host, "port": port,
    });
    if rtcp_port != 0 {
        body["rtcp_port"] = json!(rtcp_port);
    }
    handle.message(body, None).await?;
    Ok(())
}

/// Stops what [`publish_remotely`] started under `remote_id`.
pub async fn unpublish_remotely(
    handle: &Handle,
    room: RoomId,
    publisher: FeedId,
    remote_id: &str,
) -> Result<()> {
    handle
        .message(
            json!({"request": "unpublish_remotely", "room": room, "publisher_id": publisher, "remote_id": remote_id}),
            None,
        )
        .await?;
    Ok(())
}
