//! Virtual sessions (a phone participant of a SIP bridge, owned by an
//! internal client) and [`AnySession`], a member of a room of either sort.

use super::*;

/// A session an internal client created for someone without a socket of
/// their own (a phone participant).
pub struct VirtualSession {
    pub owner: Weak<ClientSession>,
    pub owner_public_id: Arc<str>,
    /// The owner's session subject: messages for this session go there.
    pub owner_subject: Arc<str>,
    pub sid: u64,
    pub public_id: Arc<str>,
    pub private_id: String,
    /// The id the internal client chose.
    pub session_id: String,
    pub user_id: String,
    pub user_data: Option<Arc<RawValue>>,
    pub options: Option<proto::client::AddSessionOptions>,
    pub backend: Arc<Backend>,
    pub backend_url: Url,
    flags: AtomicU32,
    incall: AtomicI64,
    room: Mutex<Option<Arc<Room>>>,
    /// Its own session subject, for messages from other servers of a
    /// cluster (they cannot tell a virtual session from a client one).
    subscription: Mutex<Option<Subscription>>,
}

impl std::fmt::Debug for VirtualSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualSession")
            .field("public_id", &self.public_id)
            .finish()
    }
}

impl VirtualSession {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        owner: &Arc<ClientSession>,
        sid: u64,
        public_id: Arc<str>,
        private_id: String,
        msg: &proto::client::AddSessionInternal,
    ) -> Arc<VirtualSession> {
        Arc::new(VirtualSession {
            owner: Arc::downgrade(owner),
            owner_public_id: owner.public_id.clone(),
            owner_subject: owner.subject.clone(),
            sid,
            public_id,
            private_id,
            session_id: msg.sessionid.clone(),
            user_id: msg.userid.clone(),
            user_data: msg.user.as_ref().map(|u| Arc::from(u.to_owned())),
            options: msg.options.clone(),
            backend: owner.backend.clone(),
            backend_url: owner.backend_url.clone(),
            flags: AtomicU32::new(msg.flags),
            // Owners with `internal-incall` manage the flags themselves.
            incall: AtomicI64::new(msg.incall.unwrap_or(
                if owner.has_feature(proto::client::CLIENT_FEATURE_INTERNAL_INCALL) {
                    0
                } else {
                    crate::core::room::FLAG_IN_CALL | crate::core::room::FLAG_WITH_PHONE
                },
            )),
            room: Mutex::new(None),
            subscription: Mutex::new(None),
        })
    }

    /// Listen on the session's own subject: what other servers send to it
    /// reaches its owner as a local sender's message would.
    pub(crate) fn subscribe(self: &Arc<Self>, hub: &dyn Host) -> Result<(), crate::bus::BusError> {
        let me: Arc<dyn BusHandler> = self.clone();
        let subject = proto::cluster::session_subject(&self.public_id);
        let sub = hub.bus().subscribe(&subject, Arc::downgrade(&me))?;
        *self.subscription.lock() = Some(sub);
        Ok(())
    }

    pub(crate) fn unsubscribe(&self) {
        self.subscription.lock().take();
    }

    pub fn flags(&self) -> u32 {
        self.flags.load(Ordering::Relaxed)
    }

    /// True if the flags changed.
    pub fn set_flags(&self, flags: u32) -> bool {
        self.flags.swap(flags, Ordering::Relaxed) != flags
    }

    pub fn incall(&self) -> i64 {
        self.incall.load(Ordering::Relaxed)
    }

    /// True if the in-call flags changed.
    pub fn set_incall(&self, flags: i64) -> bool {
        self.incall.swap(flags.max(0), Ordering::Relaxed) != flags.max(0)
    }

    pub fn room(&self) -> Option<Arc<Room>> {
        self.room.lock().clone()
    }

    pub(crate) fn set_room(&self, room: Option<Arc<Room>>) {
        *self.room.lock() = room;
    }
}

impl BusHandler for VirtualSession {
    /// A `message` or `control` from another server: passed to the owner
    /// with this session named as recipient (by the id its owner chose).
    fn on_bus_message(&self, subject: &str, msg: &BusMessage) {
        let BusPayload::Message(out) = &msg.payload else {
            return;
        };
        let Some(owner) = self.owner.upgrade() else {
            return;
        };
        let m = &out.msg;
        let body = match m.kind.as_str() {
            "message" => m.message.as_ref(),
            "control" => m.control.as_ref(),
            _ => None,
        };
        let Some(body) = body else { return };
        let body = proto::client::MessageServerMessage {
            sender: body.sender.clone(),
            recipient: Some(proto::client::Recipient {
                kind: proto::client::RECIPIENT_SESSION.into(),
                sessionid: self.session_id.clone(),
                userid: String::new(),
            }),
            data: body.data.clone(),
        };
        let m = if m.kind == "control" {
            ServerMessage {
                kind: "control".into(),
                control: Some(body),
                ..Default::default()
            }
        } else {
            ServerMessage {
                kind: "message".into(),
                message: Some(body),
                ..Default::default()
            }
        };
        let forwarded = BusMessage {
            send_time: msg.send_time,
            payload: BusPayload::Message(OutMsg::new(m)),
        };
        owner.on_bus_message(subject, &forwarded);
    }
}

/// Key of a virtual session in the hub: owner public id and the client's id.
pub fn virtual_session_key(owner: &str, session_id: &str) -> String {
    format!("{owner}|{session_id}")
}

/// Any session that can be a room member or a message recipient.
#[derive(Clone, Debug)]
pub enum AnySession {
    Client(Arc<ClientSession>),
    Virtual(Arc<VirtualSession>),
}

impl AnySession {
    pub fn public_id(&self) -> &Arc<str> {
        match self {
            AnySession::Client(s) => &s.public_id,
            AnySession::Virtual(s) => &s.public_id,
        }
    }
    pub fn client_type(&self) -> &'static str {
        match self {
            AnySession::Client(s) => s.client_type.as_str(),
            AnySession::Virtual(_) => CLIENT_TYPE_VIRTUAL,
        }
    }
    pub fn backend(&self) -> &Arc<Backend> {
        match self {
            AnySession::Client(s) => &s.backend,
            AnySession::Virtual(s) => &s.backend,
        }
    }
    pub fn user_id(&self) -> String {
        match self {
            AnySession::Client(s) => s.user_id(),
            AnySession::Virtual(s) => s.user_id.clone(),
        }
    }
    pub fn user_data(&self) -> Option<Arc<RawValue>> {
        match self {
            AnySession::Client(s) => s.user_data.clone(),
            AnySession::Virtual(s) => s.user_data.clone(),
        }
    }
    pub fn room(&self) -> Option<Arc<Room>> {
        match self {
            AnySession::Client(s) => s.room(),
            AnySession::Virtual(s) => s.room(),
        }
    }
    pub fn is_internal(&self) -> bool {
        matches!(self, AnySession::Client(s) if s.is_internal())
    }
    /// Hello features, listed in join events (`join-features`).
    pub fn features(&self) -> Vec<String> {
        match self {
            AnySession::Client(s) => s.features.clone(),
            AnySession::Virtual(_) => Vec::new(),
        }
    }
}
