//! Micro-benchmarks of the hot paths: unmasking, frame parsing, UTF-8 validation, deflate and
//! inflate, and a server connection parsing a stream of small masked frames.
//!
//! `cargo bench -p roost-proto --bench codec` prints throughput (GiB/s or MiB/s) per case.

#![allow(missing_docs, clippy::unwrap_used)]

use std::{hint::black_box, time::Instant};

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use roost_proto::{
    Config, Connection, DeflateConfig, DeflateParams, Negotiated, OpCode,
    deflate::DeflateCodec,
    frame::{FrameHeader, encode_frame},
    mask::apply_mask,
    utf8::Utf8Validator,
};

fn mask(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    for size in [64usize, 4 << 10, 1 << 20] {
        let mut data = vec![0x5a; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| apply_mask(black_box(&mut data), [1, 2, 3, 4], 0));
        });
    }
    group.finish();
}

/// A client's framing: each frame's payload masked while it is copied into the output.
fn encode_masked(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_masked");
    for size in [64usize, 16 << 10] {
        let payload = vec![0x5a; size];
        let mut out = BytesMut::with_capacity(size + 14);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                out.clear();
                encode_frame(
                    &mut out,
                    OpCode::Binary,
                    true,
                    false,
                    Some([1, 2, 3, 4]),
                    black_box(&payload),
                );
                black_box(out.len())
            });
        });
    }
    group.finish();
}

fn frame_header(c: &mut Criterion) {
    let headers: [&[u8]; 3] = [
        &[0x81, 0x85, 1, 2, 3, 4],
        &[0x82, 0xfe, 0x01, 0x00, 1, 2, 3, 4],
        &[0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4],
    ];
    c.bench_function("frame_header_decode", |b| {
        b.iter(|| {
            for header in headers {
                black_box(FrameHeader::decode(black_box(header)).unwrap());
            }
        });
    });
}

fn utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8");
    let text = "Ünïcödé text with ascii mostly, and some κόσμε. ".repeat(20_000);
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("roost_incremental_4k_pieces", |b| {
        b.iter(|| {
            let mut validator = Utf8Validator::new();
            for piece in text.as_bytes().chunks(4096) {
                validator.feed(black_box(piece)).unwrap();
            }
            validator.finish().unwrap();
        });
    });
    group.bench_function("std_from_utf8_whole", |b| {
        b.iter(|| std::str::from_utf8(black_box(text.as_bytes())).unwrap());
    });
    group.finish();
}

fn deflate(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate");
    let json = r#"{"id":12345,"user":"alice","text":"hello world","tags":["a","b"],"ok":true}"#;
    let payload = json.repeat(14);
    let params = DeflateParams::default();
    let config = DeflateConfig::default();
    group.throughput(Throughput::Bytes(payload.len() as u64));
    let mut server = DeflateCodec::new(true, params, &config);
    let mut out = Vec::new();
    group.bench_function("compress_1k_json", |b| {
        b.iter(|| server.compress(black_box(payload.as_bytes()), &mut out));
    });
    // Compressed messages made by a client, inflated by a server, in order (context takeover).
    let mut client = DeflateCodec::new(false, params, &config);
    let messages: Vec<Vec<u8>> = (0..10_000)
        .map(|_| {
            let mut out = Vec::new();
            client.compress(payload.as_bytes(), &mut out);
            out
        })
        .collect();
    group.bench_function("inflate_1k_json", |b| {
        b.iter_custom(|iterations| {
            let mut inflater = DeflateCodec::new(true, params, &config);
            let mut out = BytesMut::new();
            let start = Instant::now();
            for i in 0..iterations as usize {
                if i > 0 && i % messages.len() == 0 {
                    inflater = DeflateCodec::new(true, params, &config);
                }
                out.clear();
                inflater
                    .decompress(&messages[i % messages.len()], true, &mut out, 1 << 20)
                    .unwrap();
            }
            start.elapsed()
        });
    });
    group.finish();
}

fn connection_receive(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_receive");
    let mut client = Connection::client(Config::default(), Negotiated::default(), || [9, 8, 7, 6]);
    for _ in 0..1000 {
        client.send_binary(&[0x42; 64]).unwrap();
    }
    let wire: Vec<u8> = client.take_output().flatten().collect();
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000_masked_64b_frames", |b| {
        b.iter(|| {
            let mut server = Connection::server(Config::default(), Negotiated::default());
            server.receive(black_box(&wire), Instant::now());
            let mut count = 0;
            while server.next_event().is_some() {
                count += 1;
            }
            assert_eq!(count, 1000);
        });
    });
    group.finish();
}

criterion_group!(
    benches,
    mask,
    encode_masked,
    frame_header,
    utf8,
    deflate,
    connection_receive
);
criterion_main!(benches);
