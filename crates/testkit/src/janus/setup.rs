//! Preparing a Janus run: finding the binary and its plugins, a temp
//! directory, free ports, the generated configuration and the
//! `getifaddrs` shim (see the parent module's documentation).

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::JanusOptions;

const GETIFADDRS_SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <string.h>

/* Present "lo" as an ordinary interface so Janus gathers 127.0.0.1. */
int getifaddrs(struct ifaddrs **ifap) {
    int (*real)(struct ifaddrs **) = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
    if (real == NULL)
        return -1;
    int rc = real(ifap);
    if (rc != 0)
        return rc;
    for (struct ifaddrs *i = *ifap; i != NULL; i = i->ifa_next) {
        if (i->ifa_name != NULL && strcmp(i->ifa_name, "lo") == 0) {
            i->ifa_flags &= ~IFF_LOOPBACK;
            i->ifa_flags |= IFF_UP | IFF_RUNNING;
        }
    }
    return 0;
}
"#;

pub(super) fn find_janus() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("JANUS_BIN") {
        return Ok(PathBuf::from(p));
    }
    [
        "/usr/bin/janus",
        "/usr/local/bin/janus",
        "/opt/janus/bin/janus",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "janus not found (apt-get install janus, or set JANUS_BIN)",
        )
    })
}

/// Where the Debian package keeps plugins and transports
/// (`/usr/lib/<triplet>/janus`); `JANUS_LIB_DIR` overrides.
pub(super) fn janus_lib_dir() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("JANUS_LIB_DIR") {
        return Ok(PathBuf::from(p));
    }
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/janus",
        "/usr/lib/aarch64-linux-gnu/janus",
        "/usr/lib/janus",
        "/opt/janus/lib/janus",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("plugins/libjanus_videoroom.so").is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "Janus plugin directory not found (set JANUS_LIB_DIR)",
            )
        })
}

pub(super) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

pub(super) fn temp_dir() -> io::Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("janus-test-{}-{n}-{nanos:x}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// An RTP port range of its own for every Janus of this machine's test runs
/// (below the kernel's ephemeral range 32768-60999).
pub(super) fn rtp_port_range() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let slot = (std::process::id().wrapping_mul(7).wrapping_add(n)) % 48;
    let start = 20000 + slot * 250;
    format!("{start}-{}", start + 249)
}

/// Secret of the admin API (loopback only, tests only).
pub(super) const ADMIN_SECRET: &str = "testkit-admin";

/// One flat configuration text per file; kept together so it reads like the
/// files it writes.
pub(super) fn write_config(
    dir: &Path,
    lib: &Path,
    port: u16,
    admin_port: u16,
    options: &JanusOptions,
) -> io::Result<()> {
    let conf = dir.join("conf");
    std::fs::create_dir_all(&conf)?;
    let disabled_plugins = [
        "libjanus_audiobridge.so",
        "libjanus_duktape.so",
        "libjanus_echotest.so",
        "libjanus_lua.so",
        "libjanus_nosip.so",
        "libjanus_recordplay.so",
        "libjanus_sip.so",
        "libjanus_streaming.so",
        "libjanus_textroom.so",
        "libjanus_videocall.so",
        "libjanus_voicemail.so",
    ]
    .join(",");
    let disabled_transports = [
        "libjanus_http.so",
        "libjanus_mqtt.so",
        "libjanus_nanomsg.so",
        "libjanus_pfunix.so",
        "libjanus_rabbitmq.so",
    ]
    .join(",");
    let lib = lib.display();
    std::fs::write(
        conf.join("janus.jcfg"),
        format!(
            r#"general: {{
	configs_folder = "{conf}"
	plugins_folder = "{lib}/plugins"
	transports_folder = "{lib}/transports"
	events_folder = "{lib}/events"
	loggers_folder = "{lib}/loggers"
	debug_level = 4
	debug_timestamps = true
	debug_colors = false
	interface = "127.0.0.1"
	session_timeout = {timeout}
	admin_secret = "{ADMIN_SECRET}"
	hide_dependencies = true
}}
certificates: {{
}}
media: {{
	ipv6 = false
	rtp_port_range = "{rtp}"
}}
nat: {{
	full_trickle = true
	ignore_mdns = true
	ice_enforce_list = "lo"
}}
plugins: {{
	disable = "{disabled_plugins}"
}}
transports: {{
	disable = "{disabled_transports}"
}}
loggers: {{
	disable = "libjanus_jsonlog.so"
}}
events: {{
	broadcast = false
}}
"#,
            conf = conf.display(),
            timeout = options.session_timeout,
            rtp = rtp_port_range(),
        ),
    )?;
    std::fs::write(
        conf.join("janus.transport.websockets.jcfg"),
        format!(
            r#"general: {{
	json = "plain"
	ws = true
	ws_port = {port}
	ws_ip = "127.0.0.1"
	wss = false
}}
admin: {{
	admin_ws = true
	admin_ws_port = {admin_port}
	admin_ws_ip = "127.0.0.1"
	admin_wss = false
}}
"#
        ),
    )?;
    // No static rooms: every test creates what it needs.
    std::fs::write(conf.join("janus.plugin.videoroom.jcfg"), "general: {\n}\n")?;
    Ok(())
}

pub(super) fn build_shim(dir: &Path) -> io::Result<PathBuf> {
    let src = dir.join("getifaddrs_shim.c");
    let lib = dir.join("getifaddrs_shim.so");
    std::fs::write(&src, GETIFADDRS_SHIM)?;
    let output = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run gcc: {e}")))?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "gcc failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(lib)
}
