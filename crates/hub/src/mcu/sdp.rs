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
