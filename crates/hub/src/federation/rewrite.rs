//! What passes between a local client and the remote server of its
//! federated room, rewritten on the way: session and room ids, actor ids
//! in chat messages, the remote server's events.

use super::*;

impl Task {
    pub(super) fn rewrite_outgoing(&self, text: String) -> String {
        let (Some(remote), Ok(mut v)) = (&self.remote_id, serde_json::from_str::<Value>(&text))
        else {
            return text;
        };
        if v["type"] == "message" {
            let r = &mut v["message"]["recipient"];
            if r["type"] == "session" && r["sessionid"] == self.local_id.as_str() {
                r["sessionid"] = json!(remote);
                return v.to_string();
            }
        }
        text
    }

    /// Rewrite a message of the remote session for the local client and
    /// deliver it.
    ///
    /// Long because it is one flat `match` over the remote server's message
    /// types, each arm a few lines of id rewriting.
    pub(super) fn process_message(&mut self, mut v: Value) -> Step {
        let remote = self.remote_id.clone().unwrap_or_default();
        let local = self.local_id.clone();
        let change_room = self.room_id != self.remote_room_id;
        let (room_id, remote_room_id) = (self.room_id.clone(), self.remote_room_id.clone());
        let fix_room = |x: &mut Value| {
            if change_room && x.as_str() == Some(remote_room_id.as_str()) {
                *x = json!(room_id);
            }
        };
        let fix_session = |x: &mut Value| {
            if !remote.is_empty() && x.as_str() == Some(remote.as_str()) {
                *x = json!(local);
            }
        };
        let mut close = false;
        let kind = v["type"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "message" | "control" => {
                let body = &mut v[kind.as_str()];
                for who in ["recipient", "sender"] {
                    if body[who]["type"] == "session" {
                        fix_session(&mut body[who]["sessionid"]);
                    }
                }
                if let Some(Value::Object(data)) = body.get_mut("data") {
                    let offer = matches!(
                        data.get("type").and_then(Value::as_str),
                        Some("offer" | "answer")
                    );
                    if kind == "message" && offer {
                        data.get_mut("from").map(fix_session);
                        data.get_mut("to").map(fix_session);
                    }
                    if kind == "control"
                        && data.get("action").and_then(Value::as_str) == Some("forceMute")
                    {
                        data.get_mut("peerId").map(fix_session);
                    }
                }
            }
            "event" => {
                let target = v["event"]["target"].as_str().unwrap_or_default().to_owned();
                let ev_kind = v["event"]["type"].as_str().unwrap_or_default().to_owned();
                let ev = &mut v["event"];
                match (target.as_str(), ev_kind.as_str()) {
                    ("participants", "update") => {
                        fix_room(&mut ev["update"]["roomid"]);
                        let mut found = false;
                        for list in ["changed", "users"] {
                            if let Some(Value::Array(users)) = ev["update"].get_mut(list) {
                                for u in users.iter_mut().filter_map(Value::as_object_mut) {
                                    self.update_actor(u, "actorId", "actorType");
                                    for key in ["sessionId", "sessionid"] {
                                        if !found
                                            && u.get(key).and_then(Value::as_str)
                                                == Some(remote.as_str())
                                        {
                                            u.insert(key.into(), json!(local));
                                            found = true;
                                        }
                                    }
                                }
                            }
                            found = false;
                        }
                    }
                    ("participants", "flags") => {
                        fix_room(&mut ev["flags"]["roomid"]);
                        fix_session(&mut ev["flags"]["sessionid"]);
                    }
                    ("participants", "message") | ("room", "message") => {
                        fix_room(&mut ev["message"]["roomid"]);
                        if target == "room" {
                            self.update_chat(&mut ev["message"]["data"]);
                        }
                    }
                    ("room", "join") => {
                        if let Some(Value::Array(list)) = ev.get_mut("join") {
                            if let Some(e) =
                                list.iter_mut().find(|e| e["sessionid"] == remote.as_str())
                            {
                                e["sessionid"] = json!(local);
                            }
                        }
                    }
                    ("room", "leave") => {
                        if let Some(Value::Array(list)) = ev.get_mut("leave") {
                            if let Some(e) = list
                                .iter_mut()
                                .find(|e| e.as_str() == Some(remote.as_str()))
                            {
                                *e = json!(local);
                                close = self.close_on_leave;
                            }
                        }
                    }
                    ("roomlist", k @ ("invite" | "disinvite" | "update")) => {
                        fix_room(&mut ev[k]["roomid"]);
                    }
                    _ => {}
                }
            }
            "error" if v["error"]["code"] == "already_joined" => {
                fix_room(&mut v["error"]["details"]["room"]["roomid"]);
            }
            "room" => {
                if self.join_id.is_some() && v["id"].as_str() == self.join_id.as_deref() {
                    self.join_id = None;
                }
                if v["room"]["roomid"] == "" && self.close_on_leave {
                    close = true;
                } else {
                    fix_room(&mut v["room"]["roomid"]);
                }
            }
            _ => {}
        }
        let Some(session) = self.session.upgrade() else {
            return Step::Close;
        };
        match serde_json::from_value::<ServerMessage>(v.clone()) {
            Ok(msg) => session.send(&OutMsg::with_frame(msg, v.to_string().into())),
            Err(e) => {
                debug!(session = %self.local_id, error = %e, "unexpected message from federated server")
            }
        }
        if close {
            Step::Close
        } else {
            Step::Continue
        }
    }

    /// Users of the remote Nextcloud become federated users here, federated
    /// users of ours become local users again.
    pub(super) fn update_actor(
        &self,
        u: &mut Map<String, Value>,
        id_key: &str,
        type_key: &str,
    ) -> bool {
        let (Some(Value::String(kind)), Some(Value::String(id))) = (u.get(type_key), u.get(id_key))
        else {
            return false;
        };
        let local = format!("@{}", self.local_cloud);
        let (new_id, new_kind) = match kind.as_str() {
            "federated_users" if id.ends_with(&local) => {
                (id[..id.len() - local.len()].to_owned(), "users")
            }
            "users" => (format!("{id}@{}", self.remote_cloud), "federated_users"),
            _ => return false,
        };
        u.insert(id_key.into(), json!(new_id));
        u.insert(type_key.into(), json!(new_kind));
        true
    }

    pub(super) fn update_chat(&self, data: &mut Value) {
        if data["type"] != "chat" {
            return;
        }
        let fix = |c: &mut Value| {
            let Some(c) = c.as_object_mut() else { return };
            self.update_actor(c, "actorId", "actorType");
            self.update_actor(c, "lastEditActorId", "lastEditActorType");
            if self.room_id != self.remote_room_id
                && c.get("token").and_then(Value::as_str) == Some(self.remote_room_id.as_str())
            {
                c.insert("token".into(), json!(self.room_id));
            }
            if let Some(p) = c.get_mut("parent").and_then(Value::as_object_mut) {
                self.update_actor(p, "actorId", "actorType");
                self.update_actor(p, "lastEditActorId", "lastEditActorType");
            }
        };
        if let Some(c) = data["chat"].get_mut("comment") {
            fix(c);
        }
        if let Some(Value::Array(list)) = data["chat"].get_mut("comments") {
            list.iter_mut().for_each(fix);
        }
    }
}
