//! roost-proto's hot paths beside tungstenite's equivalent code paths, on the same bytes.
//!
//! `cargo bench --manifest-path bench/peers/rust/Cargo.toml --bench beside_tungstenite`
//!
//! Each group runs the same work through both stacks, entirely in memory (tungstenite over a
//! stream that reads from a buffer and discards what is written; roost-proto is sans-IO):
//!
//! - `receive_64b`: a server reads 1,000 masked 64 B binary frames as messages (parsing,
//!   unmasking, message assembly).
//! - `receive_1mib`: a server reads one masked 1 MiB binary frame (unmasking dominates).
//! - `receive_text_64k`: a server reads one masked 64 KiB text frame of mixed-width UTF-8
//!   (unmasking and UTF-8 validation).
//! - `frame_header`: parsing three headers (7-bit, 16-bit and 64-bit lengths, masked).
//! - `fanout_64b_1000`: one 64 B message made ready for 1,000 connections. roost encodes the
//!   frame once and shares it; with tungstenite each connection frames and buffers it.
//!
//! permessage-deflate has no counterpart: tungstenite 0.30 does not implement it.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::io::{self, Cursor, Read, Write};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use roost_proto::{Config, Connection, Event, Negotiated, OpCode};
use tungstenite::protocol::frame::FrameHeader as TFrameHeader;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

/// What a socket would deliver: reads come from `input`, writes are dropped.
struct Wire {
    input: Cursor<Bytes>,
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `count` masked client frames of `payload` (binary, or text when `text`), as on the wire.
fn client_frames(payload: &[u8], count: usize, text: bool) -> Bytes {
    let mut client = Connection::client(Config::default(), Negotiated::default(), || [9, 8, 7, 6]);
    for _ in 0..count {
        if text {
            client
                .send_text(std::str::from_utf8(payload).unwrap())
                .unwrap();
        } else {
            client.send_binary(payload).unwrap();
        }
    }
    client.take_output().flatten().collect()
}

fn roost_receive(wire: &Bytes, count: usize) {
    let mut server = Connection::server(Config::default(), Negotiated::default());
    server.receive(black_box(wire), Instant::now());
    let mut messages = 0;
    while let Some(event) = server.next_event() {
        if let Event::Message(message) = event {
            black_box(&message);
            messages += 1;
        }
    }
    assert_eq!(messages, count);
}

fn tungstenite_receive(wire: &Bytes, count: usize) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(16 << 20));
    let stream = Wire {
        input: Cursor::new(wire.clone()),
    };
    let mut ws = WebSocket::from_raw_socket(stream, Role::Server, Some(config));
    for _ in 0..count {
        black_box(ws.read().unwrap());
    }
}

fn receive_group(c: &mut Criterion, name: &str, payload: &[u8], count: usize, text: bool) {
    let wire = client_frames(payload, count, text);
    let mut group = c.benchmark_group(name);
    if count == 1 {
        group.throughput(Throughput::Bytes(payload.len() as u64));
    } else {
        group.throughput(Throughput::Elements(count as u64));
    }
    group.bench_function("roost", |b| b.iter(|| roost_receive(&wire, count)));
    group.bench_function("tungstenite", |b| {
        b.iter(|| tungstenite_receive(&wire, count))
    });
    group.finish();
}

fn receive(c: &mut Criterion) {
    receive_group(c, "receive_64b", &[0x42; 64], 1000, false);
    receive_group(c, "receive_1mib", &vec![0x42; 1 << 20], 1, false);
    let text = "plain ascii, é, ü, ß, €, 日本語, 🦀 ".repeat(2048);
    let text = &text.as_bytes()[..text.floor_char_boundary(64 << 10)];
    receive_group(c, "receive_text_64k", text, 1, true);
}

fn frame_header(c: &mut Criterion) {
    let headers: [&[u8]; 3] = [
        &[0x81, 0x85, 1, 2, 3, 4],
        &[0x82, 0xfe, 0x01, 0x00, 1, 2, 3, 4],
        &[0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4],
    ];
    let mut group = c.benchmark_group("frame_header");
    group.throughput(Throughput::Elements(headers.len() as u64));
    group.bench_function("roost", |b| {
        b.iter(|| {
            for header in headers {
                black_box(roost_proto::frame::FrameHeader::decode(black_box(header)).unwrap());
            }
        })
    });
    group.bench_function("tungstenite", |b| {
        b.iter(|| {
            for header in headers {
                let mut cursor = Cursor::new(black_box(header));
                black_box(TFrameHeader::parse(&mut cursor).unwrap().unwrap());
            }
        })
    });
    group.finish();
}

fn fanout(c: &mut Criterion) {
    const MEMBERS: usize = 1000;
    let payload = Bytes::from_static(&[0x42; 64]);
    let mut group = c.benchmark_group("fanout_64b_1000");
    group.throughput(Throughput::Elements(MEMBERS as u64));
    let mut queues: Vec<Vec<Bytes>> = (0..MEMBERS).map(|_| Vec::with_capacity(1)).collect();
    group.bench_function("roost", |b| {
        b.iter(|| {
            let mut frame = BytesMut::new();
            roost_proto::frame::encode_frame(
                &mut frame,
                OpCode::Binary,
                true,
                false,
                None,
                &payload,
            );
            let frame = frame.freeze();
            for queue in &mut queues {
                queue.clear();
                queue.push(frame.clone());
            }
            black_box(&queues);
        })
    });
    let mut sockets: Vec<_> = (0..MEMBERS)
        .map(|_| {
            let stream = Wire {
                input: Cursor::new(Bytes::new()),
            };
            WebSocket::from_raw_socket(stream, Role::Server, None)
        })
        .collect();
    group.bench_function("tungstenite", |b| {
        b.iter(|| {
            for ws in &mut sockets {
                ws.send(tungstenite::Message::Binary(payload.clone()))
                    .unwrap();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, receive, frame_header, fanout);
criterion_main!(benches);
