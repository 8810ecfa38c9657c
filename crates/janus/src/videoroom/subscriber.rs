//! Subscribers: joining a publisher's feed (per API generation), starting
//! with the answer, switching feeds and choosing simulcast layers.

use serde_json::{json, Map, Value};

use super::{expect_videoroom, FeedId, RoomId};
use crate::client::Handle;
use crate::error::{Error, Result};
use crate::wire::{ApiGeneration, Jsep};

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
/// Errors the MCU handles: [`super::error_codes::NO_SUCH_FEED`] (publisher not
/// sending yet: wait for it and retry), [`super::error_codes::ALREADY_JOINED`]
/// (re-create the handle), [`super::error_codes::NO_SUCH_ROOM`].
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
