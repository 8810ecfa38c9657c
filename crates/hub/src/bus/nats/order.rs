//! Delivery of what NATS brought: decode each envelope and put every
//! sender's messages back in its publish order across subjects.

use std::collections::HashMap;
use tracing::warn;

use super::batch::{split_batch, BATCH_SUBJECT};
use super::peers::Peers;
use super::NatsBus;
use crate::bus::decode_envelope_ordered;
use async_nats::Subject;

/// Decode what arrived for local handlers (a wildcard also brings what is
/// for sessions and users elsewhere: dropped undecoded; a batch is taken
/// apart into its messages first), put each sender's messages back in its
/// publish order, and hand them to the local handlers. The senders heard
/// are noted in `peers`.
pub(super) fn dispatch(bus: &NatsBus, batch: &mut Vec<async_nats::Message>, peers: &Peers) {
    let mut decoded = Vec::with_capacity(batch.len());
    let mut decode = |subject: Subject, payload: &[u8]| {
        if !bus.listens(subject.as_str()) {
            return;
        }
        let decoded_msg = match super::fast::decode_our_message(payload) {
            Some(ours) => Ok(ours),
            None => decode_envelope_ordered(payload),
        };
        match decoded_msg {
            Ok((msg, order)) => decoded.push((subject, msg, order)),
            Err(e) => warn!(subject = %subject, error = %e, "ignoring NATS message"),
        }
    };
    for m in batch.drain(..) {
        if m.subject.as_str() != BATCH_SUBJECT {
            decode(m.subject, &m.payload);
            continue;
        }
        let (items, err) = split_batch(&m.payload);
        if let Some(e) = err {
            warn!(error = %e, "ignoring the rest of a NATS batch");
        }
        for (subject, envelope) in items {
            match Subject::from_utf8(subject) {
                Ok(subject) => decode(subject, &envelope),
                Err(_) => warn!("ignoring a batched message with a subject that is not UTF-8"),
            }
        }
    }
    // A batch has few senders: note each once.
    let mut senders: Vec<Option<&str>> = Vec::new();
    for (_, _, order) in &decoded {
        let from = order.as_ref().map(|(f, _)| f.as_str());
        if !senders.contains(&from) {
            senders.push(from);
        }
    }
    peers.heard(senders.into_iter(), std::time::Instant::now());
    if decoded.len() > 1 {
        decoded = in_sender_order(decoded, |(_, _, o)| {
            o.as_ref().map(|(f, s)| (f.as_str(), *s))
        });
    }
    for (subject, msg, _) in decoded {
        bus.deliver(&subject, &msg);
    }
}

/// Reorder `items` so that each sender's items (same `key().0`) are in
/// `key().1` order, each sender keeping the positions its items had; items
/// without a key stay where they are.
pub(super) fn in_sender_order<T>(items: Vec<T>, key: impl Fn(&T) -> Option<(&str, u64)>) -> Vec<T> {
    // Nearly always already in order (a batch has few senders): check that
    // without allocating first.
    let mut last: Vec<(&str, u64)> = Vec::new();
    let mut sorted = true;
    for (from, seq) in items.iter().filter_map(&key) {
        match last.iter_mut().find(|(f, _)| *f == from) {
            Some((_, s)) if *s > seq => {
                sorted = false;
                break;
            }
            Some((_, s)) => *s = seq,
            None => last.push((from, seq)),
        }
    }
    drop(last);
    if sorted {
        return items;
    }
    let mut groups: HashMap<String, Vec<(u64, usize)>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if let Some((from, seq)) = key(item) {
            groups.entry(from.to_owned()).or_default().push((seq, i));
        }
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    for group in groups.values() {
        if group.len() < 2 {
            continue;
        }
        let mut by_seq = group.clone();
        by_seq.sort_unstable();
        for ((_, pos), (_, item)) in group.iter().zip(by_seq) {
            order[*pos] = item;
        }
    }
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}
