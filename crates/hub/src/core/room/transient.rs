//! Room messages from the backend and the room's transient data
//! (`transient` messages: set, remove, expire).

use super::*;

impl Room {
    pub(crate) fn publish_room_message(&self, hub: &dyn Host, data: Option<Raw>) {
        let Some(data) = data else { return };
        let mut event = EventServerMessage::new("room", "message");
        event.message = Some(RoomEventMessage {
            roomid: self.id.clone(),
            data: Some(data),
        });
        self.announce(hub, ServerMessage::event(event));
    }

    /// Set (or with `None`, remove) a transient value; members are told via
    /// the room subject. With a `ttl` the entry is removed after that time
    /// (housekeeping checks every second).
    pub(crate) fn set_transient(
        &self,
        hub: &dyn Host,
        key: &str,
        value: Option<Value>,
        ttl: Option<Duration>,
    ) {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            self.remove_transient(hub, key);
            return;
        };
        let mut st = self.state.lock();
        match ttl {
            Some(ttl) => {
                st.transient_expiry
                    .insert(key.to_owned(), Instant::now() + ttl);
            }
            None => {
                st.transient_expiry.remove(key);
            }
        }
        let old = st.transient.get(key).cloned();
        if old.as_ref() == Some(&value) {
            return;
        }
        st.transient.insert(key.to_owned(), value.clone());
        drop(st);
        self.publish(
            hub,
            ServerMessage::transient(TransientDataServerMessage {
                kind: "set".into(),
                key: key.to_owned(),
                oldvalue: old,
                value: Some(value),
                data: None,
            }),
        );
    }

    /// Remove transient entries whose TTL ran out.
    pub(crate) fn expire_transient(&self, hub: &dyn Host, now: Instant) {
        let expired: Vec<String> = {
            let st = self.state.lock();
            if st.transient_expiry.is_empty() {
                return;
            }
            st.transient_expiry
                .iter()
                .filter(|(_, t)| **t <= now)
                .map(|(k, _)| k.clone())
                .collect()
        };
        for key in expired {
            self.remove_transient(hub, &key);
        }
    }

    pub(crate) fn remove_transient(&self, hub: &dyn Host, key: &str) {
        let old = {
            let mut st = self.state.lock();
            st.transient_expiry.remove(key);
            st.transient.remove(key)
        };
        let Some(old) = old else { return };
        self.publish(
            hub,
            ServerMessage::transient(TransientDataServerMessage {
                kind: "remove".into(),
                key: key.to_owned(),
                oldvalue: Some(old),
                ..Default::default()
            }),
        );
    }
}
