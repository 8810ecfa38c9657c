//! Just enough SDP to decide what an offer publishes (PERM-05): which
//! `m=` lines it has, and whether the text is SDP at all. Janus parses the
//! SDP for real; this check only has to refuse garbage before it reaches
//! Janus and find the media kinds for the permission check.

use super::MediaTypes;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("payload does not contain an sdp")]
    Missing,
    #[error("could not parse sdp: {0}")]
    Invalid(&'static str),
}

/// The media kinds of the `m=` lines of `sdp` (audio and video; others
/// such as `application` for data channels are ignored).
pub fn media_types(sdp: &str) -> Result<MediaTypes, SdpError> {
    let mut lines = sdp
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty());
    if lines.next() != Some("v=0") {
        return Err(SdpError::Invalid("must start with v=0"));
    }
    let (mut origin, mut name, mut timing) = (false, false, false);
    let mut media = MediaTypes::default();
    for line in lines {
        let bytes = line.as_bytes();
        if bytes.len() < 2 || bytes[1] != b'=' || !bytes[0].is_ascii_lowercase() {
            return Err(SdpError::Invalid("line is not <type>=<value>"));
        }
        let value = &line[2..];
        match bytes[0] {
            b'o' => origin = true,
            b's' => name = true,
            b't' => timing = true,
            b'm' => {
                let kind = value.split(' ').next().unwrap_or_default();
                let mut parts = value.split(' ');
                let _ = parts.next();
                let port = parts.next().unwrap_or_default();
                let proto = parts.next().unwrap_or_default();
                if port.is_empty() || proto.is_empty() {
                    return Err(SdpError::Invalid("incomplete m= line"));
                }
                match kind {
                    "audio" => media.insert(MediaTypes::AUDIO),
                    "video" => media.insert(MediaTypes::VIDEO),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if !(origin && name && timing) {
        return Err(SdpError::Invalid("o=, s= and t= lines are required"));
    }
    Ok(media)
}

/// One `m=` section: its kind, port, payload types and attribute lines.
struct Section<'a> {
    kind: &'a str,
    port: &'a str,
    formats: Vec<&'a str>,
    attrs: Vec<&'a str>,
}

fn sections(sdp: &str) -> Vec<Section<'_>> {
    let mut out: Vec<Section<'_>> = Vec::new();
    for line in sdp.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
        if let Some(m) = line.strip_prefix("m=") {
            let mut parts = m.split(' ');
            let kind = parts.next().unwrap_or_default();
            let port = parts.next().unwrap_or_default();
            let _proto = parts.next();
            out.push(Section {
                kind,
                port,
                formats: parts.collect(),
                attrs: Vec::new(),
            });
        } else if let (Some(a), Some(sec)) = (line.strip_prefix("a="), out.last_mut()) {
            sec.attrs.push(a);
        }
    }
    out
}

impl Section<'_> {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find_map(|a| a.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
    }

    fn has_flag(&self, name: &str) -> bool {
        self.attrs.contains(&name)
    }

    /// `a=<name>:<pt> <rest>` for payload type `pt`.
    fn for_pt(&self, name: &str, pt: &str) -> Option<&str> {
        self.attrs.iter().find_map(|a| {
            let rest = a.strip_prefix(name)?.strip_prefix(':')?;
            let (p, value) = rest.split_once(' ')?;
            (p == pt).then_some(value)
        })
    }

    fn extmap_id(&self, uri: &str) -> Option<u64> {
        self.attrs.iter().find_map(|a| {
            let rest = a.strip_prefix("extmap:")?;
            let (id, rest) = rest.split_once(' ')?;
            let id = id.split('/').next()?;
            (rest.split(' ').next() == Some(uri)).then(|| id.parse().ok())?
        })
    }
}

/// The streams of a publisher as Janus's `add_remote_publisher` wants them
/// (and upstream's `get-publisher-streams` returns them): one object per
/// `m=` line of the answer Janus gave the publisher, with the negotiated
/// codec and options; simulcast is seen in the publisher's offer. Codec
/// profiles are left out: Janus 1.1.2 declares them booleans there.
pub fn publisher_streams(offer: &str, answer: &str) -> Vec<serde_json::Value> {
    let offered = sections(offer);
    let mut out = Vec::new();
    for (mindex, sec) in sections(answer).iter().enumerate() {
        let kind = match sec.kind {
            "audio" => "audio",
            "video" => "video",
            "application" => "data",
            _ => continue,
        };
        let mut s = serde_json::Map::new();
        s.insert("type".into(), kind.into());
        s.insert("mindex".into(), (mindex as u64).into());
        s.insert(
            "mid".into(),
            sec.attr("mid").unwrap_or(&mindex.to_string()).into(),
        );
        if sec.port == "0" || sec.has_flag("inactive") {
            s.insert("disabled".into(), true.into());
        }
        if kind != "data" {
            let pt = sec.formats.first().copied().unwrap_or_default();
            if let Some(codec) = sec.for_pt("rtpmap", pt).and_then(|v| v.split('/').next()) {
                s.insert("codec".into(), codec.to_ascii_lowercase().into());
            }
            let fmtp = sec.for_pt("fmtp", pt).unwrap_or_default();
            let param = |name: &str| fmtp.split(';').any(|p| p.trim() == format!("{name}=1"));
            if kind == "audio" {
                s.insert("stereo".into(), param("stereo").into());
                s.insert("fec".into(), param("useinbandfec").into());
                s.insert("dtx".into(), param("usedtx").into());
            } else {
                let simulcast = offered.get(mindex).is_some_and(|o| {
                    o.attr("simulcast").is_some()
                        || o.attrs.iter().any(|a| a.starts_with("ssrc-group:SIM"))
                });
                s.insert("simulcast".into(), simulcast.into());
                if let Some(id) = sec.extmap_id("urn:3gpp:video-orientation") {
                    s.insert("videoorient_ext_id".into(), id.into());
                }
                if let Some(id) =
                    sec.extmap_id("http://www.webrtc.org/experiments/rtp-hdrext/playout-delay")
                {
                    s.insert("playoutdelay_ext_id".into(), id.into());
                }
            }
        }
        out.push(serde_json::Value::Object(s));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";

    #[test]
    fn finds_media_kinds() {
        let m = media_types(OFFER).unwrap();
        assert!(m.contains(MediaTypes::AUDIO));
        assert!(m.contains(MediaTypes::VIDEO));
        let audio_only = OFFER.replace("m=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "");
        let m = media_types(&audio_only).unwrap();
        assert!(m.contains(MediaTypes::AUDIO));
        assert!(!m.contains(MediaTypes::VIDEO));
    }

    #[test]
    fn streams_for_a_remote_publisher() {
        let offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=mid:a0\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:v1\r\na=simulcast:send h;l\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:d2\r\n";
        let answer = "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:a0\r\na=recvonly\r\n\
            a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:v1\r\na=rtpmap:96 VP8/90000\r\n\
            a=extmap:13 urn:3gpp:video-orientation\r\n\
            m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:d2\r\n";
        let s = publisher_streams(offer, answer);
        assert_eq!(
            serde_json::Value::Array(s),
            serde_json::json!([
                {"type": "audio", "mindex": 0, "mid": "a0", "codec": "opus",
                 "stereo": false, "fec": true, "dtx": false},
                {"type": "video", "mindex": 1, "mid": "v1", "codec": "vp8",
                 "simulcast": true, "videoorient_ext_id": 13},
                {"type": "data", "mindex": 2, "mid": "d2", "disabled": true},
            ])
        );
        assert!(publisher_streams("", "garbage").is_empty());
    }

    #[test]
    fn refuses_garbage() {
        assert!(media_types("").is_err());
        assert!(media_types("hello world").is_err());
        assert!(media_types("v=0\r\nthis is not sdp\r\n").is_err());
        assert!(media_types("v=0\r\no=- 1 2 IN IP4 1.2.3.4\r\n").is_err());
        assert!(media_types("v=0\no=x\ns=-\nt=0 0\nm=audio\n").is_err());
        assert_eq!(
            media_types("v=0\no=x\ns=-\nt=0 0\n").unwrap(),
            MediaTypes::default()
        );
    }
}
