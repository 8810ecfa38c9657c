//! The sections and keys `server.conf` may hold: ours and the Go server's.
//! Anything else is reported with its line at start-up, on SIGHUP and by
//! `signaling check` (see [`runtime::schema`]).

use runtime::schema::{ListedSections, Schema};

/// Keys of a backend section (one per id in `[backend] backends`).
pub const BACKEND_KEYS: &[&str] = &[
    "url",
    "secret",
    "sessionlimit",
    "maxstreambitrate",
    "maxscreenbitrate",
];

/// `server.conf`.
pub const SCHEMA: Schema = Schema {
    sections: &[
        ("http", &["listen", "readtimeout", "writetimeout"]),
        (
            "https",
            &[
                "listen",
                "readtimeout",
                "writetimeout",
                "certificate",
                "key",
            ],
        ),
        (
            "app",
            &[
                "debug",
                "allowsubscribeany",
                "draintimeout",
                "loglevel",
                "trustedproxies",
            ],
        ),
        ("sessions", &["hashkey", "blockkey", "resumewindow"]),
        ("clients", &["internalsecret"]),
        (
            "backend",
            &[
                "allowall",
                "allowed",
                "allowhttp",
                "backends",
                "connectionsperhost",
                "maxscreenbitrate",
                "maxstreambitrate",
                "secret",
                "sessionlimit",
                "skipverify",
                "timeout",
            ],
        ),
        ("nats", &["url", "presenceinterval"]),
        (
            "mcu",
            &[
                "type",
                "url",
                "urltype",
                "allowedcandidates",
                "blockedcandidates",
                "cacert",
                "clientcert",
                "clientkey",
                "discoveryservice",
                "discoverysrv",
                "dnsdiscovery",
                "endpoints",
                "keyprefix",
                "maxscreenbitrate",
                "maxstreambitrate",
                "proxytimeout",
                "skipverify",
                "timeout",
                "token_id",
                "token_key",
            ],
        ),
        ("turn", &["apikey", "secret", "servers"]),
        ("geoip", &["license", "url"]),
        ("geoip-overrides", &["*"]),
        ("continent-overrides", &["*"]),
        ("stats", &["allowed_ips"]),
    ],
    listed: Some(ListedSections {
        section: "backend",
        key: "backends",
        keys: BACKEND_KEYS,
    }),
    upstream_only: &["grpc", "etcd", "federation"],
    secrets: &[
        ("sessions", "hashkey"),
        ("sessions", "blockkey"),
        ("clients", "internalsecret"),
        ("backend", "secret"),
        ("turn", "apikey"),
        ("turn", "secret"),
    ],
    listed_secret: Some("secret"),
};
