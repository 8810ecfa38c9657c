//! Who sent what to whom, and what arrived.
//!
//! Every message carries its sender's index, a sequence number that is
//! unique per sender and its addressee (a session's index or a room's), so an
//! arrival at the wrong client is told apart from a repeated one. The sender records, per message, the set of clients
//! that must receive it (one for a session message, the other room members
//! for a room message). A delivery removes the receiver from that set; an
//! arrival that matches no open entry is a duplicate (or, for a sequence
//! number never issued, `unknown`). Whatever is still open when the run has
//! drained was lost.
//!
//! Only messages in flight are remembered, so memory follows the window (or
//! the rate times the latency) plus the losses, not the length of the run
//! or the number of sender/receiver pairs.

use std::collections::HashMap;

/// Who must receive one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipients {
    One(u32),
    Many(Vec<u32>),
}

impl Recipients {
    pub fn len(&self) -> usize {
        match self {
            Recipients::One(_) => 1,
            Recipients::Many(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
struct Open {
    sent_ns: u64,
    /// Number of recipients when sent.
    total: usize,
    waiting: Recipients,
}

#[derive(Debug, Default)]
struct SenderBook {
    next_seq: u64,
    open: HashMap<u64, Open>,
}

/// Counters of the whole run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Messages handed to the server.
    pub sent: u64,
    /// Deliveries those messages should cause (sent x recipients).
    pub expected: u64,
    /// Deliveries that arrived, each counted once.
    pub delivered: u64,
    /// Arrivals of a message at a receiver that already had it.
    pub duplicated: u64,
    /// Arrivals naming a sender or sequence number this run never issued.
    pub unknown: u64,
    /// Arrivals at a client the message was not addressed to.
    pub misdelivered: u64,
}

impl Totals {
    /// Deliveries still owed: in flight during the run, lost after draining.
    pub fn outstanding(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }
}

/// What one arrival meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// First arrival at this receiver; `sender_open` messages of the sender
    /// are still waiting for some receiver.
    Delivered {
        sender_open: usize,
    },
    Duplicate,
    Unknown,
    /// The receiver is not the message's addressee (nor in its room).
    Misdelivered,
}

/// Sequence accounting for `clients` clients (indices `0..clients`).
#[derive(Debug)]
pub struct Ledger {
    books: Vec<SenderBook>,
    totals: Totals,
}

impl Ledger {
    pub fn new(clients: usize) -> Self {
        Ledger {
            books: (0..clients).map(|_| SenderBook::default()).collect(),
            totals: Totals::default(),
        }
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Records a message about to be sent and returns its sequence number.
    /// A message without recipients is counted as sent but owes nothing.
    pub fn send(&mut self, sender: u32, to: Recipients, now_ns: u64) -> u64 {
        let book = &mut self.books[sender as usize];
        let seq = book.next_seq;
        book.next_seq += 1;
        self.totals.sent += 1;
        self.totals.expected += to.len() as u64;
        if !to.is_empty() {
            book.open.insert(
                seq,
                Open {
                    sent_ns: now_ns,
                    total: to.len(),
                    waiting: to,
                },
            );
        }
        seq
    }

    /// Takes back a message whose write failed before the server could have
    /// seen all of it (its connection broke). Receivers that already got it
    /// keep their delivery; only what is still owed is forgiven.
    pub fn unsend(&mut self, sender: u32, seq: u64) {
        let Some(book) = self.books.get_mut(sender as usize) else {
            return;
        };
        if let Some(open) = book.open.remove(&seq) {
            // A message some receiver already got did reach the server.
            if open.waiting.len() == open.total {
                self.totals.sent -= 1;
            }
            self.totals.expected -= open.waiting.len() as u64;
        }
    }

    /// Records that `receiver` got message `seq` of `sender`.
    pub fn deliver(&mut self, receiver: u32, sender: u32, seq: u64) -> Arrival {
        let Some(book) = self.books.get_mut(sender as usize) else {
            self.totals.unknown += 1;
            return Arrival::Unknown;
        };
        if seq >= book.next_seq {
            self.totals.unknown += 1;
            return Arrival::Unknown;
        }
        let Some(open) = book.open.get_mut(&seq) else {
            self.totals.duplicated += 1;
            return Arrival::Duplicate;
        };
        let done = match &mut open.waiting {
            Recipients::One(r) if *r == receiver => true,
            Recipients::One(_) => return self.misdelivered(),
            Recipients::Many(list) => match list.iter().position(|r| *r == receiver) {
                Some(pos) => {
                    list.swap_remove(pos);
                    list.is_empty()
                }
                None => {
                    self.totals.duplicated += 1;
                    return Arrival::Duplicate;
                }
            },
        };
        if done {
            book.open.remove(&seq);
        }
        self.totals.delivered += 1;
        Arrival::Delivered {
            sender_open: book.open.len(),
        }
    }

    /// Counts an arrival at a client the message was not addressed to (the
    /// reader knows from the addressee in the payload).
    pub fn misdelivered(&mut self) -> Arrival {
        self.totals.misdelivered += 1;
        Arrival::Misdelivered
    }

    /// Messages of `sender` still waiting for some receiver.
    pub fn open_of(&self, sender: u32) -> usize {
        self.books.get(sender as usize).map_or(0, |b| b.open.len())
    }

    /// Messages of `sender` sent before `cutoff_ns` and still waiting.
    pub fn open_older_than(&self, sender: u32, cutoff_ns: u64) -> usize {
        self.books.get(sender as usize).map_or(0, |b| {
            b.open.values().filter(|o| o.sent_ns < cutoff_ns).count()
        })
    }

    /// Send time of the oldest message still waiting anywhere.
    pub fn oldest_open_ns(&self) -> Option<u64> {
        self.books
            .iter()
            .flat_map(|b| b.open.values().map(|o| o.sent_ns))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_messages_delivered_once() {
        let mut l = Ledger::new(3);
        let a = l.send(0, Recipients::One(1), 10);
        let b = l.send(0, Recipients::One(2), 11);
        assert_eq!((a, b), (0, 1));
        assert_eq!(l.open_of(0), 2);
        assert_eq!(l.deliver(1, 0, a), Arrival::Delivered { sender_open: 1 });
        assert_eq!(l.deliver(2, 0, b), Arrival::Delivered { sender_open: 0 });
        let t = l.totals();
        assert_eq!((t.sent, t.expected, t.delivered), (2, 2, 2));
        assert_eq!((t.duplicated, t.unknown, t.outstanding()), (0, 0, 0));
    }

    #[test]
    fn duplicates_and_unknowns_are_counted() {
        let mut l = Ledger::new(2);
        let s = l.send(0, Recipients::One(1), 0);
        assert!(matches!(l.deliver(1, 0, s), Arrival::Delivered { .. }));
        assert_eq!(l.deliver(1, 0, s), Arrival::Duplicate);
        // Never issued: sequence number too high, or sender out of range.
        assert_eq!(l.deliver(1, 0, 99), Arrival::Unknown);
        assert_eq!(l.deliver(1, 7, 0), Arrival::Unknown);
        let t = l.totals();
        assert_eq!((t.delivered, t.duplicated, t.unknown), (1, 1, 2));
    }

    #[test]
    fn wrong_receiver_is_not_a_delivery() {
        let mut l = Ledger::new(3);
        let s = l.send(0, Recipients::One(1), 0);
        assert_eq!(l.deliver(2, 0, s), Arrival::Misdelivered);
        assert_eq!(l.totals().outstanding(), 1);
        assert_eq!(l.misdelivered(), Arrival::Misdelivered);
        let t = l.totals();
        assert_eq!((t.misdelivered, t.duplicated, t.delivered), (2, 0, 0));
    }

    #[test]
    fn losses_remain_outstanding() {
        let mut l = Ledger::new(2);
        for _ in 0..5 {
            l.send(0, Recipients::One(1), 0);
        }
        l.deliver(1, 0, 0);
        l.deliver(1, 0, 2);
        l.deliver(1, 0, 4);
        let t = l.totals();
        assert_eq!((t.sent, t.delivered, t.outstanding()), (5, 3, 2));
        assert_eq!(l.open_of(0), 2);
        // Out-of-order arrival of a missing one still counts.
        assert!(matches!(l.deliver(1, 0, 1), Arrival::Delivered { .. }));
        assert_eq!(l.totals().outstanding(), 1);
    }

    #[test]
    fn room_fan_out() {
        let mut l = Ledger::new(4);
        let s = l.send(0, Recipients::Many(vec![1, 2, 3]), 0);
        let t = l.totals();
        assert_eq!((t.sent, t.expected), (1, 3));
        assert_eq!(l.deliver(2, 0, s), Arrival::Delivered { sender_open: 1 });
        assert_eq!(l.deliver(2, 0, s), Arrival::Duplicate);
        assert_eq!(
            l.deliver(0, 0, s),
            Arrival::Duplicate,
            "sender is no recipient"
        );
        assert_eq!(l.deliver(1, 0, s), Arrival::Delivered { sender_open: 1 });
        assert_eq!(l.deliver(3, 0, s), Arrival::Delivered { sender_open: 0 });
        assert_eq!(l.deliver(3, 0, s), Arrival::Duplicate);
        let t = l.totals();
        assert_eq!((t.delivered, t.duplicated, t.outstanding()), (3, 3, 0));
    }

    #[test]
    fn empty_room_owes_nothing() {
        let mut l = Ledger::new(1);
        l.send(0, Recipients::Many(vec![]), 0);
        let t = l.totals();
        assert_eq!((t.sent, t.expected, t.outstanding()), (1, 0, 0));
        assert_eq!(l.open_of(0), 0);
    }

    #[test]
    fn unsend_forgives_only_what_is_owed() {
        let mut l = Ledger::new(3);
        let s = l.send(0, Recipients::Many(vec![1, 2]), 0);
        l.deliver(1, 0, s);
        l.unsend(0, s);
        let t = l.totals();
        assert_eq!(
            (t.sent, t.expected, t.delivered, t.outstanding()),
            (1, 1, 1, 0)
        );
        let s1 = l.send(0, Recipients::Many(vec![1, 2]), 0);
        l.unsend(0, s1);
        let t = l.totals();
        assert_eq!((t.sent, t.expected, t.outstanding()), (1, 1, 0));
        // Taking back a message that is already complete changes nothing.
        let s2 = l.send(0, Recipients::One(1), 0);
        l.deliver(1, 0, s2);
        l.unsend(0, s2);
        assert_eq!(l.totals().sent, 2);
    }

    #[test]
    fn age_of_open_messages() {
        let mut l = Ledger::new(2);
        l.send(0, Recipients::One(1), 100);
        l.send(0, Recipients::One(1), 200);
        l.send(1, Recipients::One(0), 50);
        assert_eq!(l.open_older_than(0, 150), 1);
        assert_eq!(l.open_older_than(0, 1000), 2);
        assert_eq!(l.oldest_open_ns(), Some(50));
    }
}
