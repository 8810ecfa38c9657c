//! Backend room requests (`/api/v1/room` and its cluster forwarding)
//! applied to one room: Talk session ids translated to ours, participant
//! updates, disinvites, switchto, deletion.

use super::*;

impl Room {
    /// Apply one backend room request to this room.
    ///
    /// Long because it is one flat `match` over the request kinds (as the
    /// backend API names them); the larger arms call out to the functions
    /// below.
    pub(super) fn process_backend_request(&self, hub: &dyn Host, req: &BackendServerRoomRequest) {
        // A request older than the last one of its kind is outdated, when
        // it replaces what the other said. Changes of single sessions
        // (`changed` without a whole list) are ordered per session instead.
        let deltas = match req.kind.as_str() {
            "incall" => req
                .incall
                .as_ref()
                .is_some_and(|i| !i.all && i.users.is_none()),
            "participants" => req.participants.as_ref().is_some_and(|p| p.users.is_none()),
            _ => false,
        };
        if !deltas {
            let mut st = self.state.lock();
            if st
                .last_requests
                .get(&req.kind)
                .is_some_and(|last| *last > req.received)
            {
                debug!(room = %self.id, kind = %req.kind, "ignoring outdated backend request");
                return;
            }
            st.last_requests.insert(req.kind.clone(), req.received);
        }
        match req.kind.as_str() {
            "update" => {
                let update = req.update.as_ref();
                let props = update.and_then(|u| u.properties.clone());
                self.update_properties(hub, props.clone());
                if update.is_none_or(|u| u.userids.is_none()) {
                    // `changed-users`: Talk no longer names the users.
                    self.announce_roomlist_update(hub, props);
                }
            }
            "invite" => {
                if let Some(inv) = req.invite.as_ref().filter(|i| i.alluserids.is_none()) {
                    self.announce_roomlist_update(hub, inv.properties.clone());
                }
            }
            "disinvite" => {
                let Some(d) = &req.disinvite else { return };
                if d.alluserids.is_none() {
                    self.announce_roomlist_update(hub, d.properties.clone());
                }
                self.disinvite_local_sessions(hub, &d.sessionids);
            }
            "delete" => {
                // Old Talk versions name the users to tell (they are told
                // on their user subjects); without a list, the members are.
                let listed = req.delete.as_ref().is_some_and(|d| d.userids.is_some());
                self.notify_internal_deleted();
                hub.room_deleted(self, !listed);
            }
            "incall" => {
                let Some(incall) = &req.incall else { return };
                if incall.all {
                    let flags = match incall
                        .incall
                        .as_ref()
                        .map(|r| serde_json::from_str::<Value>(r.get()))
                    {
                        Some(Ok(Value::Number(n))) => n.as_i64().unwrap_or(0),
                        Some(Ok(Value::Bool(true))) => FLAG_IN_CALL,
                        Some(Ok(Value::Bool(false))) => 0,
                        _ => {
                            warn!(room = %self.id, "unsupported incall flags, ignoring");
                            return;
                        }
                    };
                    self.publish_users_in_call_changed_all(hub, flags, req.received);
                } else {
                    let (changed, users) =
                        self.translated(hub, &incall.changed, incall.users.as_deref());
                    if changed.is_empty() && users.as_ref().is_none_or(Vec::is_empty) {
                        return;
                    }
                    self.publish_users_in_call_changed(hub, changed, users, req.received);
                }
            }
            "participants" => {
                if let Some(p) = &req.participants {
                    let (changed, users) = self.translated(hub, &p.changed, p.users.as_deref());
                    if changed.is_empty() && users.as_ref().is_none_or(Vec::is_empty) {
                        return;
                    }
                    self.apply_local_permissions(hub, &changed);
                    self.publish_users_changed(hub, changed, users);
                }
            }
            "message" => {
                let data = req.message.as_ref().and_then(|m| m.data.clone());
                self.publish_room_message(hub, data);
            }
            "switchto" => {
                let Some(sw) = &req.switchto else { return };
                let Ok(targets) = switchto_targets(sw) else {
                    return;
                };
                for (room_session, details) in targets {
                    let Some(public) = hub.session_for_room_session(&room_session) else {
                        continue;
                    };
                    let Some(AnySession::Client(c)) = hub.session_by_public_id(&public) else {
                        continue;
                    };
                    let mut event = EventServerMessage::new("room", "switchto");
                    event.switchto = Some(proto::client::SwitchToEvent {
                        roomid: sw.roomid.clone(),
                        details,
                    });
                    c.send_message(ServerMessage::event(event));
                }
            }
            other => debug!(room = %self.id, kind = %other, "unsupported backend room request"),
        }
    }
}

impl Room {
    /// Backend requests carry Nextcloud's (Talk) session ids: every server
    /// translates them itself, knowing its own sessions and, clustered, the
    /// others' from the room presence. Entries of unknown sessions (and
    /// "0", not in the meeting) are dropped.
    pub(super) fn translated(
        &self,
        hub: &dyn Host,
        changed: &[JsonMap],
        users: Option<&[JsonMap]>,
    ) -> (Vec<JsonMap>, Option<Vec<JsonMap>>) {
        let (remote, local, virtuals) = {
            let st = self.state.lock();
            let remote: HashMap<String, String> = st
                .remote
                .values()
                .filter(|m| !m.entry.roomsessionid.is_empty())
                .map(|m| (m.entry.roomsessionid.clone(), m.entry.sessionid.clone()))
                .collect();
            let local: HashSet<Arc<str>> =
                st.sessions.iter().map(|s| s.public_id().clone()).collect();
            // Talk knows a virtual session (a phone call through the SIP
            // bridge) by its signaling id.
            let virtuals: HashSet<Arc<str>> = st
                .sessions
                .iter()
                .filter(|s| matches!(s, AnySession::Virtual(_)))
                .map(|s| s.public_id().clone())
                .collect();
            (remote, local, virtuals)
        };
        let fix = |list: &[JsonMap]| -> Vec<JsonMap> {
            list.iter()
                .filter_map(|u| {
                    let rs = u.get("sessionId").and_then(Value::as_str)?;
                    if rs == "0" {
                        return None;
                    }
                    // A session of this server counts only while it is a
                    // member of this room.
                    let public = hub
                        .session_for_room_session(rs)
                        .filter(|p| local.contains(p))
                        .map(|p| p.to_string())
                        .or_else(|| remote.get(rs).cloned())
                        .or_else(|| virtuals.contains(rs).then(|| rs.to_owned()))?;
                    let mut u = u.clone();
                    u.insert("sessionId".into(), Value::String(public));
                    Some(u)
                })
                .collect()
        };
        (fix(changed), users.map(fix))
    }

    /// roomlist `update` for the members (Talk with `changed-users` no
    /// longer names the users to tell). Every node tells its own.
    pub(super) fn announce_roomlist_update(&self, hub: &dyn Host, properties: Option<Raw>) {
        let mut event = EventServerMessage::new("roomlist", "update");
        event.update = Some(RoomEvent {
            roomid: self.id.clone(),
            properties,
            ..Default::default()
        });
        self.announce(hub, ServerMessage::event(event));
    }

    /// `disinvite` by Talk session id: this server's sessions among them
    /// (every node handles the request for its own). A virtual session's
    /// phone call is hung up.
    pub(super) fn disinvite_local_sessions(&self, hub: &dyn Host, sessionids: &[String]) {
        if sessionids.is_empty() {
            return;
        }
        let msg = ServerMessage::event(disinvite_event(&self.id, "disinvited"));
        let out = OutMsg::new(msg);
        for rs in sessionids {
            if rs == "0" {
                continue;
            }
            if let Some(public) = hub.session_for_room_session(rs) {
                if let Some(AnySession::Client(c)) = hub.session_by_public_id(&public) {
                    c.send(&out);
                }
            } else if let Some(AnySession::Virtual(v)) = hub.session_by_public_id(rs) {
                hang_up_virtual(&v, &self.id);
            }
        }
    }

    /// Permissions in a participants update, for this server's members.
    pub(super) fn apply_local_permissions(&self, hub: &dyn Host, changed: &[JsonMap]) {
        for (sid, perms) in changed_permissions(changed) {
            if let Some(AnySession::Client(c)) = hub.session_by_public_id(&sid) {
                c.set_permissions(&perms);
            }
        }
    }
}

/// `roomlist`/`disinvite` for room `roomid`.
pub(crate) fn disinvite_event(roomid: &str, reason: &str) -> EventServerMessage {
    let mut event = EventServerMessage::new("roomlist", "disinvite");
    event.disinvite = Some(proto::client::RoomDisinviteEvent {
        roomid: roomid.to_owned(),
        properties: None,
        reason: reason.to_owned(),
    });
    event
}

/// The sessions of a participants update's `changed` entries that carry a
/// `permissions` list, with that list.
pub(crate) fn changed_permissions(changed: &[JsonMap]) -> Vec<(String, Vec<String>)> {
    changed
        .iter()
        .filter_map(|user| {
            let Some(Value::Array(list)) = user.get("permissions") else {
                return None;
            };
            let sid = user.get("sessionId").and_then(Value::as_str)?;
            let perms: Option<Vec<String>> =
                list.iter().map(|p| p.as_str().map(str::to_owned)).collect();
            Some((sid.to_owned(), perms?))
        })
        .collect()
}

/// The Talk sessions a `switchto` names, each with its details: a list of
/// session ids, or a map from session id to details.
pub(crate) fn switchto_targets(
    sw: &proto::backend::RoomSwitchToRequest,
) -> Result<Vec<(String, Option<proto::Raw>)>, serde_json::Error> {
    Ok(match &sw.sessions {
        None => Vec::new(),
        Some(raw) if raw.get().trim_start().starts_with('[') => {
            serde_json::from_str::<Vec<String>>(raw.get())?
                .into_iter()
                .map(|s| (s, None))
                .collect()
        }
        Some(raw) => {
            serde_json::from_str::<std::collections::BTreeMap<String, proto::Raw>>(raw.get())?
                .into_iter()
                .map(|(s, d)| (s, Some(d)))
                .collect()
        }
    })
}

/// A disinvited virtual session (upstream 1.2.2, #610): its internal
/// client is told to hang up the phone call.
fn hang_up_virtual(v: &VirtualSession, roomid: &str) {
    if v.room().is_none_or(|r| r.id != roomid) {
        return;
    }
    let Some(owner) = v.owner.upgrade() else {
        return;
    };
    tracing::info!(session = %v.public_id, room = %roomid, "virtual session disinvited, hanging up");
    let data = serde_json::json!({"type": "hangup", "hangup": {"reason": "disinvited"}});
    owner.send_message(ServerMessage {
        kind: "control".into(),
        control: Some(proto::client::MessageServerMessage {
            sender: None,
            recipient: Some(proto::client::Recipient {
                kind: proto::client::RECIPIENT_SESSION.into(),
                sessionid: v.session_id.clone(),
                userid: v.user_id.clone(),
            }),
            data: Some(proto::to_raw(&data)),
        }),
        ..Default::default()
    });
}
