//! Finding and creating a session's publishers and subscribers on the
//! media server, and closing those its permissions no longer allow.

use std::sync::Arc;
use tracing::{debug, info};

use super::routing::McuData;
use super::session::{close_in_background, SessionListener};
use super::{
    CodecPrefs, McuClient, McuError, MediaTypes, PublisherParams, StreamType, SubscriberParams,
};
use crate::core::session::{
    ClientSession, PERMISSION_PUBLISH_AUDIO, PERMISSION_PUBLISH_MEDIA, PERMISSION_PUBLISH_SCREEN,
    PERMISSION_PUBLISH_VIDEO,
};
use crate::Hub;

pub(super) async fn get_or_create_publisher(
    hub: &Hub,
    session: &Arc<ClientSession>,
    stream: StreamType,
    data: &McuData,
    media: MediaTypes,
) -> Result<Arc<dyn McuClient>, McuError> {
    let mut replaced = None;
    if let Some(p) = session.with_mcu(|m| m.publishers.get(&stream).cloned()) {
        if data.sid.is_empty() || data.sid == p.sid() {
            // Renegotiation on the same publisher (`update-sdp`, or a
            // client that sends no sid).
            p.set_media(media);
            return Ok(p);
        }
        // A new sid: the client made a new peer connection (Talk does
        // after ICE failed or when it could not get an answer). The old
        // publisher is replaced; out of the map first, so that nothing
        // it still says reaches the client.
        info!(session = %session.public_id, stream = stream.as_str(), old = %p.sid(), new = %data.sid, "offer with a new sid, replacing the publisher");
        session.with_mcu(|m| {
            if m.publishers.get(&stream).is_some_and(|c| c.id() == p.id()) {
                m.publishers.remove(&stream);
            }
        });
        if let Some(m) = &hub.mcu_metrics {
            m.replaced_total.inc(&[stream.as_str()]);
        }
        replaced = Some(p);
    }
    let mcu = hub.mcu.clone().ok_or(McuError::NotConnected)?;
    let backend_cap = match stream {
        StreamType::Video => session.backend.max_stream_bitrate,
        StreamType::Screen => session.backend.max_screen_bitrate,
    }
    .max(0) as u64;
    let requested = data
        .bitrate
        .filter(|b| b.is_finite() && *b > 0.0)
        .map(|b| b as u64);
    let bitrate = match (requested, backend_cap) {
        (None, cap) => cap,
        (Some(b), 0) => b,
        (Some(b), cap) => b.min(cap),
    };
    let params = PublisherParams {
        id: session.public_id.clone(),
        sid: data.sid.clone(),
        stream,
        bitrate,
        media,
        codecs: CodecPrefs {
            audio: data.audiocodec.clone().filter(|s| !s.is_empty()),
            video: data.videocodec.clone().filter(|s| !s.is_empty()),
            vp9_profile: data.vp9profile.clone().filter(|s| !s.is_empty()),
            h264_profile: data.h264profile.clone().filter(|s| !s.is_empty()),
        },
        country: None,
        continents: Vec::new(),
    };
    let listener = Arc::new(SessionListener {
        session: Arc::downgrade(session),
        hub: hub.me.clone(),
    });
    let mut params = params;
    (params.country, params.continents) = location(hub, session);
    let publisher = mcu.new_publisher(listener, params).await;
    let replaced_any = replaced.is_some();
    // The replaced one goes either way (its subscribers follow the new
    // one, or the client's next offer).
    close_in_background(replaced.into_iter().collect());
    let publisher = publisher?;
    let prev = session.with_mcu(|m| match m.publishers.get(&stream) {
        Some(prev) => Some(prev.clone()),
        None => {
            m.publishers.insert(stream, publisher.clone());
            None
        }
    });
    if let Some(prev) = prev {
        // Another offer created one meanwhile.
        close_in_background(vec![publisher]);
        return Ok(prev);
    }
    if session.is_closed() {
        let all = session.with_mcu(|m| m.take_all());
        close_in_background(all);
        return Err(McuError::Closed);
    }
    info!(session = %session.public_id, stream = stream.as_str(), "publishing");
    if replaced_any {
        hub.announce_publisher_replaced(&session.public_id, stream);
    }
    Ok(publisher)
}

/// The client's country (GeoIP, overrides applied) and continents, to
/// place its streams on a proxy near it.
fn location(hub: &Hub, session: &Arc<ClientSession>) -> (Option<String>, Vec<String>) {
    let geoip = hub.geoip.read().clone();
    if !geoip.is_enabled() {
        return (None, Vec::new());
    }
    let ip = session
        .conn()
        .and_then(|c| c.remote_addr.parse::<std::net::IpAddr>().ok());
    let country = ip.and_then(|ip| geoip.lookup(ip));
    let continents = country
        .as_ref()
        .map(|c| geoip.client_continents(c))
        .unwrap_or_default();
    (country, continents)
}

pub(super) async fn get_or_create_subscriber(
    hub: &Hub,
    session: &Arc<ClientSession>,
    publisher: Arc<str>,
    stream: StreamType,
) -> Result<Arc<dyn McuClient>, McuError> {
    let key = (publisher.clone(), stream);
    if let Some(s) = session.with_mcu(|m| m.subscribers.get(&key).cloned()) {
        return Ok(s);
    }
    let subscriber = create_subscriber(hub, session, publisher, stream).await?;
    let prev = session.with_mcu(|m| match m.subscribers.get(&key) {
        Some(prev) => Some(prev.clone()),
        None => {
            m.subscribers.insert(key.clone(), subscriber.clone());
            None
        }
    });
    if let Some(prev) = prev {
        close_in_background(vec![subscriber]);
        return Ok(prev);
    }
    if session.is_closed() {
        let all = session.with_mcu(|m| m.take_all());
        close_in_background(all);
        return Err(McuError::Closed);
    }
    debug!(session = %session.public_id, publisher = %key.0, stream = stream.as_str(), "subscribing");
    Ok(subscriber)
}

/// A new subscriber of `publisher`'s `stream` for `session` (not
/// registered with the session).
pub(super) async fn create_subscriber(
    hub: &Hub,
    session: &Arc<ClientSession>,
    publisher: Arc<str>,
    stream: StreamType,
) -> Result<Arc<dyn McuClient>, McuError> {
    let mcu = hub.mcu.clone().ok_or(McuError::NotConnected)?;
    let listener = Arc::new(SessionListener {
        session: Arc::downgrade(session),
        hub: hub.me.clone(),
    });
    let mut params = SubscriberParams::new(publisher.clone(), stream);
    (params.country, params.continents) = location(hub, session);
    if hub.session_by_public_id(&publisher).is_none() {
        // Clustering: maybe another server's publisher.
        params.location = hub
            .remote_publisher(&publisher, stream, mcu.timeout())
            .await;
    }
    mcu.new_subscriber(listener, params).await
}

/// PERM-04: after a permission change, close the publishers the session
/// may no longer feed.
pub(crate) fn check_publisher_permissions(hub: &Hub, session: &ClientSession) {
    if hub.mcu.is_none() {
        return;
    }
    // Read the permissions first: `with_mcu` holds the state lock.
    let media = session.has_permission(PERMISSION_PUBLISH_MEDIA);
    let audio = session.has_permission(PERMISSION_PUBLISH_AUDIO);
    let video = session.has_permission(PERMISSION_PUBLISH_VIDEO);
    let screen = session.has_permission(PERMISSION_PUBLISH_SCREEN);
    let mut closing = Vec::new();
    session.with_mcu(|m| {
        if !media {
            if let Some(p) = m.publishers.get(&StreamType::Video) {
                let sends = p.media();
                if (sends.contains(MediaTypes::AUDIO) && !audio)
                    || (sends.contains(MediaTypes::VIDEO) && !video)
                {
                    closing.extend(m.publishers.remove(&StreamType::Video));
                }
            }
        }
        if !screen {
            closing.extend(m.publishers.remove(&StreamType::Screen));
        }
    });
    if !closing.is_empty() {
        info!(session = %session.public_id, count = closing.len(), "permissions revoked, closing publishers");
    }
    close_in_background(closing);
}
