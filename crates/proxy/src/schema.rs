//! The sections and keys `proxy.conf` may hold: ours and the Go proxy's.
//! Anything else is reported with its line at start-up and by `proxy check`
//! (see [`runtime::schema`]).

use runtime::schema::Schema;

/// `proxy.conf`.
pub const SCHEMA: Schema = Schema {
    sections: &[
        (
            "app",
            &[
                "debug",
                "country",
                "hostname",
                "loglevel",
                "skipverify",
                "token_id",
                "token_key",
                "tokentype",
            ],
        ),
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
        ("bandwidth", &["incoming", "outgoing"]),
        (
            "mcu",
            &[
                "type",
                "url",
                "maxstreambitrate",
                "maxscreenbitrate",
                "timeout",
            ],
        ),
        ("stats", &["allowed_ips"]),
        // Token ids -> public key files, plus the etcd settings.
        ("tokens", &["*"]),
    ],
    listed: None,
    upstream_only: &["grpc", "etcd"],
    secrets: &[],
    listed_secret: None,
};
