//! Messages of a signaling server's connection: `hello` (new or resumed
//! proxy session), then commands (see `commands`) and payloads (SDP and
//! candidates for a hosted publisher or subscriber).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use mcu::{McuError, McuMessage};
use proto::client::HelloServerInfo;
use proto::proxy::{
    ByeProxyServerMessage, EventProxyServerMessage, HelloProxyServerMessage,
    PayloadProxyClientMessage, PayloadProxyServerMessage, ProxyClientMessage, ProxyServerMessage,
    HELLO_VERSION,
};
use serde_json::{Map, Value};
use tracing::{debug, info};

use crate::conn::ConnState;
use crate::session::{Outgoing, ProxySession};
use crate::{
    err_hello_expected, err_internal, err_invalid_format, err_no_such_session, err_unknown_client,
    err_unsupported_message, err_unsupported_payload, random_id, ProxyServer, VERSION,
};

impl ProxyServer {
    pub(crate) fn reply(&self, conn: &ConnState, msg: ProxyServerMessage) {
        match &conn.session {
            Some(s) => s.send(&msg),
            None => {
                if let Ok(text) = serde_json::to_string(&msg) {
                    let _ = conn.tx.try_send(Outgoing::Text(text));
                }
            }
        }
    }

    /// One text message of a connection.
    pub(crate) async fn process(&self, conn: &mut ConnState, text: &str) {
        let msg: ProxyClientMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "could not decode proxy message");
                self.reply(conn, ProxyServerMessage::error("", err_invalid_format()));
                return;
            }
        };
        if let Err(e) = msg.check_valid() {
            debug!(error = %e, "invalid proxy message");
            self.reply(
                conn,
                ProxyServerMessage::error(&msg.id, err_invalid_format()),
            );
            return;
        }
        let Some(session) = conn.session.clone() else {
            if msg.kind != "hello" {
                self.reply(
                    conn,
                    ProxyServerMessage::error(&msg.id, err_hello_expected()),
                );
                return;
            }
            self.process_hello(conn, msg).await;
            return;
        };
        match msg.kind.as_str() {
            "command" => self.process_command(&session, msg),
            "payload" => self.process_payload(&session, msg).await,
            "bye" => {
                info!(session = %session.id, "signaling server said bye");
                let bye = ProxyServerMessage {
                    id: msg.id.clone(),
                    kind: "bye".into(),
                    bye: Some(ByeProxyServerMessage {
                        reason: "bye".into(),
                    }),
                    ..Default::default()
                };
                if let Ok(text) = serde_json::to_string(&bye) {
                    let _ = conn.tx.try_send(Outgoing::Last(text));
                }
                conn.session = None;
                session.detach(&conn.tx);
                self.delete_session(&session.id);
            }
            _ => session.send(&ProxyServerMessage::error(
                &msg.id,
                err_unsupported_message(),
            )),
        }
    }

    pub(crate) async fn process_hello(&self, conn: &mut ConnState, msg: ProxyClientMessage) {
        let Some(hello) = msg.hello else { return };
        let session = if !hello.resumeid.is_empty() {
            let found = self.reg.lock().sessions.get(&hello.resumeid).cloned();
            let Some(session) = found else {
                self.reply(
                    conn,
                    ProxyServerMessage::error(&msg.id, err_no_such_session()),
                );
                return;
            };
            self.metrics.sessions_resumed.inc();
            info!(session = %session.id, "proxy session resumed");
            session
        } else {
            let tokens = self.tokens.read().clone();
            let issuer = match tokens.verify(&hello.token).await {
                Ok(iss) => iss,
                Err(e) => {
                    info!(reason = e.reason, "proxy hello refused");
                    self.metrics.token_errors.inc(&[e.reason]);
                    self.reply(conn, ProxyServerMessage::error(&msg.id, e.to_error()));
                    return;
                }
            };
            let sid = self.next_sid.fetch_add(1, Ordering::Relaxed) + 1;
            let session = ProxySession::new(format!("{}{sid:x}", random_id(24)));
            self.reg
                .lock()
                .sessions
                .insert(session.id.clone(), session.clone());
            self.metrics.sessions.inc();
            self.metrics.sessions_total.inc();
            info!(session = %session.id, token = %issuer, "proxy session created");
            session
        };
        let reply = ProxyServerMessage {
            id: msg.id.clone(),
            kind: "hello".into(),
            hello: Some(HelloProxyServerMessage {
                version: HELLO_VERSION.into(),
                sessionid: session.id.clone(),
                server: Some(HelloServerInfo {
                    version: VERSION.into(),
                    features: self.features(),
                    country: self.country.clone(),
                }),
            }),
            ..Default::default()
        };
        // The hello reply goes out before anything kept for the session.
        if let Ok(text) = serde_json::to_string(&reply) {
            let _ = conn.tx.try_send(Outgoing::Text(text));
        }
        if let Some(prev) = session.attach(conn.tx.clone()) {
            let bye = ProxyServerMessage {
                kind: "bye".into(),
                bye: Some(ByeProxyServerMessage {
                    reason: "session_resumed".into(),
                }),
                ..Default::default()
            };
            if let Ok(text) = serde_json::to_string(&bye) {
                let _ = prev.try_send(Outgoing::Last(text));
            }
        }
        conn.session = Some(session.clone());
        if self.is_draining() {
            session.send(&ProxyServerMessage::event(EventProxyServerMessage {
                kind: "shutdown-scheduled".into(),
                ..Default::default()
            }));
        } else {
            session.send(&self.load_event());
        }
    }

    pub(crate) async fn process_payload(
        &self,
        session: &Arc<ProxySession>,
        msg: ProxyClientMessage,
    ) {
        let Some(p) = msg.payload else { return };
        let client = {
            let reg = self.reg.lock();
            reg.clients
                .get(&p.client_id)
                .filter(|c| c.session == session.id)
                .map(|c| c.client.clone())
        };
        let Some(client) = client else {
            session.send(&ProxyServerMessage::error(&msg.id, err_unknown_client()));
            return;
        };
        self.metrics.payloads.inc(&[&p.kind]);
        let PayloadProxyClientMessage {
            kind,
            client_id,
            sid,
            payload,
        } = p;
        let payload: Map<String, Value> = match kind.as_str() {
            "offer" | "answer" | "selectStream" | "candidate" => payload.unwrap_or_default(),
            "requestoffer" | "sendoffer" => Map::new(),
            "endOfCandidates" => {
                session.send(&payload_reply(&msg.id, kind, client_id, None));
                return;
            }
            _ => {
                session.send(&ProxyServerMessage::error(
                    &msg.id,
                    err_unsupported_payload(),
                ));
                return;
            }
        };
        let weak = Arc::downgrade(session);
        let id = msg.id;
        let reply_kind = kind.clone();
        let reply = Box::new(move |res: Result<Option<Value>, McuError>| {
            let Some(session) = weak.upgrade() else {
                return;
            };
            match res {
                Ok(v) => session.send(&payload_reply(&id, reply_kind, client_id, v)),
                Err(e) => session.send(&ProxyServerMessage::error(&id, err_internal(e))),
            }
        });
        client
            .send_message(McuMessage { kind, sid, payload }, reply)
            .await;
    }
}

pub(crate) fn payload_reply(
    id: &str,
    kind: String,
    client_id: String,
    payload: Option<Value>,
) -> ProxyServerMessage {
    ProxyServerMessage {
        id: id.to_owned(),
        kind: "payload".into(),
        payload: Some(PayloadProxyServerMessage {
            kind,
            client_id,
            payload,
        }),
        ..Default::default()
    }
}
