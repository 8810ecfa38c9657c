//! Hot-path micro-benchmarks (`cargo bench -p hub`): guards against
//! regressions in the per-message work that end-to-end load tests measure
//! only in aggregate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hub::bus::{Bus, BusHandler, BusMessage, BusPayload, LoopbackBus};
use hub::core::conn::{Frame, OutMsg};
use parking_lot::Mutex;
use proto::client::{parse_client_message, MessageServerMessage, Sender, ServerMessage};
use proto::sessionid::{SessionIdCodec, SessionIdData};
use std::hint::black_box;
use std::sync::{Arc, Weak};

const SESSION_ID: &str = "Zm-MqC7FTFewttFH6vpLRdlLzKOo5-PR-NoFOvpeuI98cFJQSmVKb0VON0RNOEFuQmR5NWR2S0hmaE9SRWMtTXpTcGo4RUpmVENpZXBLSXZMaVd3MFhLWFVCWk9icGNpYXhlelZNQ1J0UHo2Q3RKNzJvaWdGNG5PV1N6RHFQLUI";

fn client_text() -> String {
    format!(
        r#"{{"type":"message","message":{{"recipient":{{"type":"session","sessionid":"{SESSION_ID}"}},"data":{{"type":"offer","to":"x","payload":{{"sdp":"v=0 o=- 1 2 IN IP4 127.0.0.1"}}}}}}}}"#
    )
}

/// Parse and validate a client message, build the delivered message, serialise it.
fn parse_route_serialize(c: &mut Criterion) {
    let text = client_text();
    c.bench_function("parse_route_serialize", |b| {
        b.iter(|| {
            let mut m = parse_client_message(black_box(&text)).unwrap();
            m.check_valid().unwrap();
            let body = m.message.unwrap();
            let out = ServerMessage {
                kind: "message".into(),
                message: Some(MessageServerMessage {
                    sender: Some(Sender {
                        kind: body.recipient.kind,
                        sessionid: SESSION_ID.into(),
                        userid: "alice".into(),
                    }),
                    recipient: None,
                    data: body.data,
                }),
                ..Default::default()
            };
            black_box(OutMsg::new(out).frame())
        })
    });
}

struct Sink(Mutex<Vec<Frame>>);
impl BusHandler for Sink {
    fn on_bus_message(&self, _subject: &str, msg: &BusMessage) {
        if let BusPayload::Message(m) = &msg.payload {
            let mut q = self.0.lock();
            q.push(m.frame());
            if q.len() > 1024 {
                q.clear();
            }
        }
    }
}

/// One room message delivered to N members through the in-process bus
/// (serialised once, shared by all).
fn room_fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("room_fanout");
    for n in [10usize, 100, 1000] {
        let bus = LoopbackBus::new();
        let sinks: Vec<Arc<Sink>> = (0..n)
            .map(|_| Arc::new(Sink(Mutex::new(Vec::new()))))
            .collect();
        let _subs: Vec<_> = sinks
            .iter()
            .map(|s| {
                let w: Weak<dyn BusHandler> = Arc::downgrade(&(s.clone() as Arc<dyn BusHandler>));
                bus.subscribe("room.cm9vbTE=", w).unwrap()
            })
            .collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let msg = ServerMessage::bye("x");
                bus.publish(
                    "room.cm9vbTE=",
                    BusMessage::new(BusPayload::Message(OutMsg::new(msg))),
                )
                .unwrap();
            })
        });
    }
    group.finish();
}

fn session_ids(c: &mut Criterion) {
    let codec = SessionIdCodec::with_cache_capacity(
        b"0123456789abcdef0123456789abcdef",
        b"fedcba9876543210",
        0,
    )
    .unwrap();
    let data = SessionIdData {
        sid: 42,
        created_unix_nanos: 1_700_000_000_000_000_000,
        backend_id: "backend1".into(),
    };
    let public = codec.encode_public(&data);
    c.bench_function("session_id_encode_public", |b| {
        b.iter(|| black_box(codec.encode_public(black_box(&data))))
    });
    c.bench_function("session_id_decode_public", |b| {
        b.iter(|| black_box(codec.decode_public(black_box(&public)).unwrap()))
    });
}

fn checksum(c: &mut Criterion) {
    let body = vec![b'x'; 1024];
    let random = proto::backend::random_hex(64);
    let sum = proto::backend::checksum(&random, &body, b"secret");
    c.bench_function("checksum_validate_1k", |b| {
        b.iter(|| {
            black_box(proto::backend::validate_checksum(
                &sum,
                &random,
                black_box(&body),
                b"secret",
            ))
        })
    });
}

criterion_group!(
    benches,
    parse_route_serialize,
    room_fanout,
    session_ids,
    checksum
);
criterion_main!(benches);
