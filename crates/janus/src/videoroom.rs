//! Typed requests and events of the Janus VideoRoom plugin, as the MCU uses
//! them: one room per published stream (`publishers: 1`), publisher feed ids
//! chosen by the caller, subscribers that join a feed and get an offer.
//!
//! Both API generations are spoken ([`ApiGeneration`]):
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
use serde_json::{json, Map, Value};

use crate::client::{Handle, PluginResponse};
use crate::error::{Error, Result};
use crate::events::PluginEvent;
use crate::wire::{ApiGeneration, Jsep};

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

/// Stream selection of a subscriber: simulcast substream / temporal layer
/// and audio/video toggles. `None` leaves a property unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamSelection {
    pub substream: Option<u8>,
    pub temporal: Option<u8>,
    pub audio: Option<bool>,
    pub video: Option<bool>,
}

impl StreamSelection {
    pub fn has_values(&self) -> bool {
        self.substream.is_some()
            || self.temporal.is_some()
            || self.audio.is_some()
            || self.video.is_some()
    }

    /// Reads the selection from a client payload (`requestoffer`,
    /// `selectStream`): numbers for `substream`/`temporal`, booleans for
    /// `audio`/`video`, like upstream's `parseStreamSelection`. Janus only
    /// knows layers 0..=2, so larger values are rejected here rather than
    /// by Janus.
    pub fn from_payload(
        payload: &Map<String, Value>,
    ) -> std::result::Result<StreamSelection, String> {
        fn layer(
            payload: &Map<String, Value>,
            key: &str,
        ) -> std::result::Result<Option<u8>, String> {
            match payload.get(key) {
                None => Ok(None),
                Some(value) => match value.as_f64() {
                    Some(n) if (0.0..=2.0).contains(&n) => Ok(Some(n as u8)),
                    _ => Err(format!("unsupported {key} value: {value}")),
                },
            }
        }
        fn flag(
            payload: &Map<String, Value>,
            key: &str,
        ) -> std::result::Result<Option<bool>, String> {
            match payload.get(key) {
                None => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(value) => Err(format!("unsupported {key} value: {value}")),
            }
        }
        Ok(StreamSelection {
            substream: layer(payload, "substream")?,
            temporal: layer(payload, "temporal")?,
            audio: flag(payload, "audio")?,
            video: flag(payload, "video")?,
        })
    }

    fn layers_into(&self, map: &mut Map<String, Value>) {
        if let Some(v) = self.substream {
            map.insert("substream".to_owned(), v.into());
        }
        if let Some(v) = self.temporal {
            map.insert("temporal".to_owned(), v.into());
        }
    }

    fn toggles_into(&self, map: &mut Map<String, Value>) {
        if let Some(v) = self.audio {
            map.insert("audio".to_owned(), v.into());
        }
        if let Some(v) = self.video {
            map.insert("video".to_owned(), v.into());
        }
    }

    fn all_into(&self, map: &mut Map<String, Value>) {
        self.layers_into(map);
        self.toggles_into(map);
    }
}

/// The `join` request of a subscriber for `generation`.
pub fn subscriber_join_request(
    room: RoomId,
    feed: FeedId,
    generation: ApiGeneration,
    selection: &StreamSelection,
) -> Value {
    let mut body = Map::new();
    body.insert("request".to_owned(), "join".into());
    body.insert("ptype".to_owned(), "subscriber".into());
    body.insert("room".to_owned(), room.into());
    match generation {
        ApiGeneration::Legacy => {
            body.insert("feed".to_owned(), feed.into());
            selection.all_into(&mut body);
        }
        ApiGeneration::Multistream => {
            let mut stream = Map::new();
            stream.insert("feed".to_owned(), feed.into());
            selection.layers_into(&mut stream);
            body.insert(
                "streams".to_owned(),
                Value::Array(vec![Value::Object(stream)]),
            );
        }
    }
    Value::Object(body)
}

/// Result of [`join_subscriber`].
#[derive(Clone, Debug, PartialEq)]
pub struct SubscriberJoined {
    /// Janus's offer to the subscriber.
    pub jsep: Jsep,
    pub data: Value,
}

/// Joins `room` as subscriber of `feed` and returns Janus's offer.
///
/// Errors the MCU handles: [`error_codes::NO_SUCH_FEED`] (publisher not
/// sending yet: wait for it and retry), [`error_codes::ALREADY_JOINED`]
/// (re-create the handle), [`error_codes::NO_SUCH_ROOM`].
pub async fn join_subscriber(
    handle: &Handle,
    room: RoomId,
    feed: FeedId,
    generation: ApiGeneration,
    selection: &StreamSelection,
) -> Result<SubscriberJoined> {
    let response = handle
        .message(
            subscriber_join_request(room, feed, generation, selection),
            None,
        )
        .await?;
    let jsep = match &response.jsep {
        Some(jsep) if jsep.is_offer() => jsep.clone(),
        _ => {
            return Err(Error::Protocol {
                request: "join",
                detail: "no SDP offer from Janus".to_owned(),
            })
        }
    };
    if generation == ApiGeneration::Multistream
        && (selection.audio.is_some() || selection.video.is_some())
    {
        let toggles = StreamSelection {
            substream: None,
            temporal: None,
            ..*selection
        };
        select_stream(handle, &toggles).await?;
    }
    Ok(SubscriberJoined {
        jsep,
        data: response.data,
    })
}

/// Starts a subscriber with the client's SDP answer.
pub async fn start_subscriber(handle: &Handle, room: RoomId, answer: Jsep) -> Result<()> {
    let response = handle
        .message(json!({"request": "start", "room": room}), Some(answer))
        .await?;
    expect_videoroom(&response, "event", "start")?;
    Ok(())
}

/// Renegotiates a subscriber in place (`configure` with `update: true`,
/// upstream's `update-sdp` feature) and returns the new offer, if Janus made
/// one.
pub async fn update_subscriber(
    handle: &Handle,
    selection: &StreamSelection,
) -> Result<Option<Jsep>> {
    let mut body = Map::new();
    body.insert("request".to_owned(), "configure".into());
    body.insert("update".to_owned(), true.into());
    selection.all_into(&mut body);
    let response = handle.message(Value::Object(body), None).await?;
    Ok(response.jsep.filter(Jsep::is_offer))
}

/// Changes the stream selection of a started subscriber. Does nothing when
/// the selection is empty.
pub async fn select_stream(handle: &Handle, selection: &StreamSelection) -> Result<()> {
    if !selection.has_values() {
        return Ok(());
    }
    let mut body = Map::new();
    body.insert("request".to_owned(), "configure".into());
    selection.all_into(&mut body);
    handle.message(Value::Object(body), None).await?;
    Ok(())
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
