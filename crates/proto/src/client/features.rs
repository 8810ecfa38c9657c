//! Feature names: what the server announces in `hello` / welcome, and what
//! clients may announce.

pub const FEATURE_MCU: &str = "mcu";
pub const FEATURE_SIMULCAST: &str = "simulcast";
pub const FEATURE_UPDATE_SDP: &str = "update-sdp";
pub const FEATURE_OFFER_CODECS: &str = "offer-codecs";
pub const FEATURE_AUDIO_VIDEO_PERMISSIONS: &str = "audio-video-permissions";
pub const FEATURE_TRANSIENT_DATA: &str = "transient-data";
pub const FEATURE_INCALL_ALL: &str = "incall-all";
pub const FEATURE_VIRTUAL_SESSIONS: &str = "virtual-sessions";
pub const FEATURE_WELCOME: &str = "welcome";
pub const FEATURE_HELLO_V2: &str = "hello-v2";
pub const FEATURE_SWITCHTO: &str = "switchto";
pub const FEATURE_DIALOUT: &str = "dialout";
pub const FEATURE_FEDERATION: &str = "federation";
pub const FEATURE_RECIPIENT_CALL: &str = "recipient-call";
pub const FEATURE_JOIN_FEATURES: &str = "join-features";
pub const FEATURE_CHAT_RELAY: &str = "chat-relay";
/// Talk may send only the changed participants (upstream PR #1175, not yet
/// released there): the server keeps the call state itself.
pub const FEATURE_CHANGED_USERS: &str = "changed-users";

/// Client features (hello `features`).
pub const CLIENT_FEATURE_CHAT_RELAY: &str = "chat-relay";
pub const CLIENT_FEATURE_INTERNAL_INCALL: &str = "internal-incall";
pub const CLIENT_FEATURE_START_DIALOUT: &str = "start-dialout";

/// Features added after the reference version, in upstream's order; each is
/// listed only once it works here (Talk refuses servers that claim more).
const LATER_FEATURES: &[&str] = &[
    FEATURE_WELCOME,
    FEATURE_HELLO_V2,
    FEATURE_SWITCHTO,
    FEATURE_DIALOUT,
    FEATURE_FEDERATION,
    FEATURE_RECIPIENT_CALL,
    FEATURE_JOIN_FEATURES,
    FEATURE_CHAT_RELAY,
    FEATURE_CHANGED_USERS,
];

/// Features announced only while an MCU is configured (`offer-codecs`:
/// codec preferences with offers, upstream 2.0.2).
pub const MCU_FEATURES: &[&str] = &[
    FEATURE_MCU,
    FEATURE_SIMULCAST,
    FEATURE_UPDATE_SDP,
    FEATURE_OFFER_CODECS,
];

/// Features every normal client is told about.
pub const DEFAULT_FEATURES: &[&str] = &[
    FEATURE_AUDIO_VIDEO_PERMISSIONS,
    FEATURE_TRANSIENT_DATA,
    FEATURE_INCALL_ALL,
    LATER_FEATURES[0],
    LATER_FEATURES[1],
    LATER_FEATURES[2],
    LATER_FEATURES[3],
    LATER_FEATURES[4],
    LATER_FEATURES[5],
    LATER_FEATURES[6],
    LATER_FEATURES[7],
    LATER_FEATURES[8],
];
/// Features internal clients are told about.
pub const DEFAULT_FEATURES_INTERNAL: &[&str] = &[
    FEATURE_VIRTUAL_SESSIONS,
    FEATURE_TRANSIENT_DATA,
    FEATURE_INCALL_ALL,
    LATER_FEATURES[0],
    LATER_FEATURES[1],
    LATER_FEATURES[2],
    LATER_FEATURES[3],
    LATER_FEATURES[4],
    LATER_FEATURES[5],
    LATER_FEATURES[6],
    LATER_FEATURES[7],
    LATER_FEATURES[8],
];
