//! Typed requests and events of the Janus VideoRoom plugin, as the MCU uses
//! them: one room per published stream (`publishers: 1`), publisher feed ids
//! chosen by the caller, subscribers that join a feed and get an offer.
//!
//! Both API generations are spoken ([`crate::ApiGeneration`]):
//! - Janus 0.x subscribes with `"feed": id` and takes stream selection
//!   (`substream`, `temporal`, `audio`, `video`) on the `join` itself.
//! - Janus 1.x (multistream) subscribes with `"streams": [{"feed": id}]`
//!   (upstream switched in "Subscribe through streams list instead of feed
//!   for multistream Janus"). It reads `substream`/`temporal` only inside the
//!   stream entries and ignores top-level `audio`/`video` on a join, so
//!   those go in the entry, and audio/video toggles are applied with a
//!   `configure` right after the join (1.x still honours the top-level
//!   `audio`/`video`/`substream`/`temporal` of a subscriber `configure`).
//!   When a publisher leaves, 1.x subscribers get an `updated` event without
//!   active media instead of a hangup ([`VideoRoomEvent::Updated`]).
//!
//! # Janus 1.1 behaviour the MCU has to live with
//!
//! Seen with Janus 1.1.2 (Debian) in this crate's tests:
//! - A WebRTC publisher's feed can only be subscribed once its
//!   PeerConnection is up (`webrtcup`); before that `join` fails with
//!   [`error_codes::NO_SUCH_FEED`], so subscribers wait for the publisher's
//!   `webrtcup` and retry (as upstream does).
//! - Destroying a room sends `destroyed` to its publisher only. Subscribers
//!   hear nothing, and a subscriber that has not answered its latest offer
//!   does not even get the `updated` event when the publisher leaves (Janus
//!   holds it back until the answer). The MCU must close the subscribers of
//!   a publisher it closes itself.
//! - The answer to a renegotiation offer ([`update_subscriber`], or the
//!   offer in an `updated` event) goes in a `start` request again.
//! - Janus trickles its first candidate before it replies to the `configure`
//!   that carried the offer. The reply and the candidates travel on
//!   different queues here; to give the client the answer before the
//!   candidates (as upstream does), handle the reply before reading further
//!   events of the handle.
//! - `add_remote_publisher` (1.1+) replies before the remote publisher is
//!   listed in the room: subscribing right after it can fail with
//!   [`error_codes::NO_SUCH_FEED`].
//! - Bad SDP in an offer is refused by the Janus core (error 465,
//!   [`crate::codes::JSEP_INVALID_SDP`]), not by the plugin.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::client::{Handle, PluginResponse};
use crate::error::{Error, Result};
use crate::events::PluginEvent;
use crate::wire::Jsep;

mod remote;
mod subscriber;

pub use remote::{
    add_remote_publisher, publish_remotely, remove_remote_publisher, unpublish_remotely,
    RemoteEndpoint,
};
pub use subscriber::{
    join_subscriber, select_stream, start_subscriber, subscriber_join_request, update_subscriber,
    StreamSelection, SubscriberJoined,
};

/// Package name of the plugin.
pub const PLUGIN: &str = crate::wire::VIDEOROOM_PLUGIN;

/// VideoRoom error codes (`error_code` in the plugin data).
pub mod error_codes {
    pub const UNKNOWN_ERROR: u64 = 499;
    pub const NO_MESSAGE: u64 = 421;
    pub const INVALID_JSON: u64 = 422;
    pub const INVALID_REQUEST: u64 = 423;
    /// The handle has not joined (e.g. `configure` before `join`).
    pub const JOIN_FIRST: u64 = 424;
    /// The handle already joined; a subscriber must be re-created to get a
    /// fresh offer.
    pub const ALREADY_JOINED: u64 = 425;
    pub const NO_SUCH_ROOM: u64 = 426;
    pub const ROOM_EXISTS: u64 = 427;
    /// The feed does not exist *or has not started sending yet* (its
    /// PeerConnection is not up): subscribers wait and retry.
    pub const NO_SUCH_FEED: u64 = 428;
    pub const MISSING_ELEMENT: u64 = 429;
    pub const INVALID_ELEMENT: u64 = 430;
    pub const INVALID_SDP_TYPE: u64 = 431;
    pub const PUBLISHERS_FULL: u64 = 432;
    pub const UNAUTHORIZED: u64 = 433;
    pub const ALREADY_PUBLISHED: u64 = 434;
    pub const NOT_PUBLISHED: u64 = 435;
    pub const ID_EXISTS: u64 = 436;
    pub const INVALID_SDP: u64 = 437;
}

pub type RoomId = u64;
pub type FeedId = u64;

/// Parameters of a `create` request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CreateRoom {
    pub description: String,
    /// Upstream publishes every stream in its own room: 1.
    pub publishers: u32,
    /// Maximum video bitrate of publishers, bits/s.
    pub bitrate: u64,
    /// The video-orientation RTP extension breaks orientation changes in
    /// Firefox, so upstream turns it off.
    pub videoorient_ext: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audiocodec: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub videocodec: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vp9_profile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h264_profile: Option<String>,
    /// A room id of our choice; Janus picks one if `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomId>,
    /// Never write the room to Janus's config file.
    pub permanent: bool,
}

impl CreateRoom {
    /// A room as upstream creates it for one published stream.
    pub fn for_stream(description: impl Into<String>, bitrate: u64) -> CreateRoom {
        CreateRoom {
            description: description.into(),
            publishers: 1,
            bitrate,
            videoorient_ext: false,
            audiocodec: None,
            videocodec: None,
            vp9_profile: None,
            h264_profile: None,
            room: None,
            permanent: false,
        }
    }
}

/// Reads an unsigned integer the way upstream's `convertIntValue` does
/// (Janus sends numbers; anything else counts as missing).
fn uint(data: &Value, key: &str) -> Option<u64> {
    data.get(key)?.as_u64()
}

fn request(body: Value, extra: impl Serialize, request: &'static str) -> Result<Value> {
    let mut body = body;
    let extra = serde_json::to_value(extra).map_err(|e| Error::Protocol {
        request,
        detail: e.to_string(),
    })?;
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    Ok(body)
}

/// Creates a room; returns its id.
pub async fn create_room(handle: &Handle, params: &CreateRoom) -> Result<RoomId> {
    let body = request(json!({"request": "create"}), params, "create")?;
    let response = handle.message(body, None).await?;
    uint(&response.data, "room")
        .filter(|room| *room != 0)
        .ok_or_else(|| Error::Protocol {
            request: "create",
            detail: format!("no room id in {}", response.data),
        })
}

/// Destroys a room; its publisher and subscribers get a `destroyed` event.
pub async fn destroy_room(handle: &Handle, room: RoomId) -> Result<()> {
    handle
        .message(json!({"request": "destroy", "room": room}), None)
        .await?;
    Ok(())
}

pub async fn room_exists(handle: &Handle, room: RoomId) -> Result<bool> {
    let response = handle
        .message(json!({"request": "exists", "room": room}), None)
        .await?;
    Ok(response
        .data
        .get("exists")
        .and_then(Value::as_bool)
        .unwrap_or(false))
}

/// One entry of [`list_rooms`].
#[derive(Clone, Debug, Deserialize)]
pub struct RoomSummary {
    pub room: RoomId,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub num_participants: u64,
}

/// All rooms (used by tests and diagnostics to check nothing leaked).
pub async fn list_rooms(handle: &Handle) -> Result<Vec<RoomSummary>> {
    let response = handle.message(json!({"request": "list"}), None).await?;
    let list = response
        .data
        .get("list")
        .cloned()
        .unwrap_or(Value::Array(Vec::new()));
    serde_json::from_value(list).map_err(|e| Error::Protocol {
        request: "list",
        detail: e.to_string(),
    })
}

/// One entry of [`list_participants`].
#[derive(Clone, Debug, Deserialize)]
pub struct Participant {
    pub id: FeedId,
    #[serde(default)]
    pub display: Option<String>,
    /// Whether it is actively publishing.
    #[serde(default)]
    pub publisher: bool,
}

pub async fn list_participants(handle: &Handle, room: RoomId) -> Result<Vec<Participant>> {
    let response = handle
        .message(json!({"request": "listparticipants", "room": room}), None)
        .await?;
    let list = response
        .data
        .get("participants")
        .cloned()
        .unwrap_or(Value::Array(Vec::new()));
    serde_json::from_value(list).map_err(|e| Error::Protocol {
        request: "listparticipants",
        detail: e.to_string(),
    })
}

/// Result of [`join_publisher`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherJoined {
    pub room: RoomId,
    pub id: FeedId,
    pub private_id: Option<u64>,
}

/// Joins `room` as publisher with feed id `id` (upstream: 1 for video, 2 for
/// screen).
pub async fn join_publisher(
    handle: &Handle,
    room: RoomId,
    id: FeedId,
    display: Option<&str>,
) -> Result<PublisherJoined> {
    let mut body = json!({"request": "join", "ptype": "publisher", "room": room, "id": id});
    if let (Some(display), Some(map)) = (display, body.as_object_mut()) {
        map.insert("display".to_owned(), Value::String(display.to_owned()));
    }
    let response = handle.message(body, None).await?;
    expect_videoroom(&response, "joined", "join")?;
    Ok(PublisherJoined {
        room: uint(&response.data, "room").unwrap_or(room),
        id: uint(&response.data, "id").unwrap_or(id),
        private_id: uint(&response.data, "private_id"),
    })
}

/// What a publisher sends (`configure`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PublisherConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<bool>,
    /// Bits/s; overrides the room's bitrate for this publisher.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitrate: Option<u64>,
}

impl PublisherConfig {
    /// Audio, video and data on: what upstream sends with every offer.
    pub fn all_media() -> PublisherConfig {
        PublisherConfig {
            audio: Some(true),
            video: Some(true),
            data: Some(true),
            bitrate: None,
        }
    }
}

/// Result of [`configure_publisher`].
#[derive(Clone, Debug, PartialEq)]
pub struct PublisherConfigured {
    /// Janus's answer if an offer was sent.
    pub jsep: Option<Jsep>,
    pub data: Value,
}

/// Configures a joined publisher; with an `offer`, Janus answers with an SDP
/// answer (an offer without an answer is a protocol error).
pub async fn configure_publisher(
    handle: &Handle,
    config: &PublisherConfig,
    offer: Option<Jsep>,
) -> Result<PublisherConfigured> {
    let with_offer = offer.is_some();
    let body = request(json!({"request": "configure"}), config, "configure")?;
    let response = handle.message(body, offer).await?;
    if with_offer && !response.jsep.as_ref().is_some_and(Jsep::is_answer) {
        return Err(Error::Protocol {
            request: "configure",
            detail: "no SDP answer from Janus".to_owned(),
        });
    }
    Ok(PublisherConfigured {
        jsep: response.jsep,
        data: response.data,
    })
}

fn expect_videoroom(
    response: &PluginResponse,
    expected: &str,
    request: &'static str,
) -> Result<()> {
    match response.data.get("videoroom").and_then(Value::as_str) {
        Some(kind) if kind == expected => Ok(()),
        other => Err(Error::Protocol {
            request,
            detail: format!("expected videoroom {expected:?}, got {other:?}"),
        }),
    }
}

/// A VideoRoom event the MCU reacts to.
#[derive(Clone, Debug, PartialEq)]
pub enum VideoRoomEvent {
    /// The room was destroyed: close the publisher or subscriber.
    Destroyed,
    /// Janus 1.x: a subscription changed. `media_gone` is set when the
    /// event lists streams and none of the audio/video ones is active any
    /// more, i.e. the publisher left; upstream closes the subscriber then.
    /// An `updated` without streams (nothing changed) has `media_gone`
    /// false. Janus attaches a new offer (the removed m-lines inactive).
    Updated {
        streams: Vec<Value>,
        media_gone: bool,
        jsep: Option<Jsep>,
    },
    /// A `configure` produced a new offer for the subscriber (publisher
    /// renegotiation); forward it to the client.
    UpdateOffer(Jsep),
    /// Reported through the core `slowlink` event as well.
    SlowLink,
    /// The plugin reported an error asynchronously.
    Error { code: u64, reason: String },
    /// Anything else (`joined`, `talking`, simulcast layer changes, ...).
    Other { videoroom: String },
}

impl VideoRoomEvent {
    /// Interprets a plugin event; `None` if it is not from the VideoRoom.
    pub fn parse(event: &PluginEvent) -> Option<VideoRoomEvent> {
        if event.plugin != PLUGIN {
            return None;
        }
        let data = &event.data;
        let videoroom = data.get("videoroom")?.as_str()?;
        if let Some(code) = uint(data, "error_code") {
            let reason = data
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            return Some(VideoRoomEvent::Error { code, reason });
        }
        Some(match videoroom {
            "destroyed" => VideoRoomEvent::Destroyed,
            "slow_link" => VideoRoomEvent::SlowLink,
            "updated" => {
                let streams = data
                    .get("streams")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let media_active = streams.iter().any(|s| {
                    let kind = s.get("type").and_then(Value::as_str);
                    matches!(kind, Some("audio" | "video"))
                        && s.get("active") != Some(&Value::Bool(false))
                });
                VideoRoomEvent::Updated {
                    media_gone: !streams.is_empty() && !media_active,
                    streams,
                    jsep: event.jsep.clone().filter(Jsep::is_offer),
                }
            }
            "event" if data.get("configured").and_then(Value::as_str) == Some("ok") => {
                match event
                    .jsep
                    .as_ref()
                    .filter(|j| j.is_offer() && !j.sdp.is_empty())
                {
                    Some(jsep) => VideoRoomEvent::UpdateOffer(jsep.clone()),
                    None => VideoRoomEvent::Other {
                        videoroom: videoroom.to_owned(),
                    },
                }
            }
            other => VideoRoomEvent::Other {
                videoroom: other.to_owned(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::wire::ApiGeneration;

    #[test]
    fn create_room_request_shape() {
        let mut params = CreateRoom::for_stream("abc|video", 1_048_576);
        params.videocodec = Some("vp9,vp8".to_owned());
        let body = request(json!({"request": "create"}), &params, "create").unwrap();
        assert_eq!(
            body,
            json!({"request": "create", "description": "abc|video", "publishers": 1, "bitrate": 1_048_576,
                   "videoorient_ext": false, "videocodec": "vp9,vp8", "permanent": false})
        );
    }

    #[test]
    fn subscriber_join_per_generation() {
        let sel = StreamSelection {
            substream: Some(1),
            temporal: None,
            audio: Some(false),
            video: None,
        };
        assert_eq!(
            subscriber_join_request(7, 1, ApiGeneration::Legacy, &sel),
            json!({"request": "join", "ptype": "subscriber", "room": 7, "feed": 1, "substream": 1, "audio": false})
        );
        assert_eq!(
            subscriber_join_request(7, 2, ApiGeneration::Multistream, &sel),
            json!({"request": "join", "ptype": "subscriber", "room": 7, "streams": [{"feed": 2, "substream": 1}]})
        );
    }

    #[test]
    fn stream_selection_from_payload() {
        let p = |v: Value| StreamSelection::from_payload(v.as_object().unwrap());
        assert_eq!(
            p(json!({"substream": 2.0, "temporal": 0, "audio": true})).unwrap(),
            StreamSelection {
                substream: Some(2),
                temporal: Some(0),
                audio: Some(true),
                video: None
            }
        );
        assert!(!p(json!({"type": "offer"})).unwrap().has_values());
        assert!(p(json!({"substream": "1"})).is_err());
        assert!(p(json!({"substream": 3})).is_err());
        assert!(p(json!({"temporal": -1})).is_err());
        assert!(p(json!({"video": 1})).is_err());
    }

    fn event(data: Value, jsep: Option<Jsep>) -> PluginEvent {
        PluginEvent {
            plugin: PLUGIN.to_owned(),
            data,
            jsep,
            transaction: None,
        }
    }

    #[test]
    fn parses_events_like_upstream() {
        assert_eq!(
            VideoRoomEvent::parse(&event(json!({"videoroom": "destroyed", "room": 1}), None)),
            Some(VideoRoomEvent::Destroyed)
        );
        let gone = VideoRoomEvent::parse(&event(
            json!({"videoroom": "updated", "streams": [
                {"type": "audio", "active": false}, {"type": "video", "active": false}, {"type": "data"}]}),
            None,
        ));
        assert!(matches!(
            gone,
            Some(VideoRoomEvent::Updated {
                media_gone: true,
                ..
            })
        ));
        let alive = VideoRoomEvent::parse(&event(
            json!({"videoroom": "updated", "streams": [{"type": "audio", "active": false}, {"type": "video"}]}),
            None,
        ));
        assert!(matches!(
            alive,
            Some(VideoRoomEvent::Updated {
                media_gone: false,
                ..
            })
        ));
        let unchanged =
            VideoRoomEvent::parse(&event(json!({"videoroom": "updated", "streams": []}), None));
        assert!(matches!(
            unchanged,
            Some(VideoRoomEvent::Updated {
                media_gone: false,
                ..
            })
        ));
        assert_eq!(
            VideoRoomEvent::parse(&event(
                json!({"videoroom": "event", "configured": "ok"}),
                Some(Jsep::offer("v=0"))
            )),
            Some(VideoRoomEvent::UpdateOffer(Jsep::offer("v=0")))
        );
        assert_eq!(
            VideoRoomEvent::parse(&event(
                json!({"videoroom": "event", "configured": "ok"}),
                None
            )),
            Some(VideoRoomEvent::Other {
                videoroom: "event".to_owned()
            })
        );
        assert_eq!(
            VideoRoomEvent::parse(&event(
                json!({"videoroom": "event", "error_code": 428, "error": "No such feed"}),
                None
            )),
            Some(VideoRoomEvent::Error {
                code: 428,
                reason: "No such feed".to_owned()
            })
        );
        let other_plugin = PluginEvent {
            plugin: "janus.plugin.echotest".to_owned(),
            ..event(json!({}), None)
        };
        assert_eq!(VideoRoomEvent::parse(&other_plugin), None);
    }
}
