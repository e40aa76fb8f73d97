//! permessage-deflate's codec: inflating hostile data under a size limit, and round trips.
//!
//! Invariants:
//! - inflating arbitrary data never panics and never yields more than the limit plus one
//!   byte; an `Ok` message is within the limit; splitting a frame's data in two gives the
//!   same output and the same verdict as inflating it whole (DEFLATE is a stream);
//! - compressing any sequence of messages (with or without context takeover, any window
//!   and level) and inflating them, each cut into two frames anywhere, gives back every
//!   message exactly; a message fails with `MessageTooLarge` if and only if it is larger than
//!   the limit.

#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use roost_fuzz::Blob;
use roost_fuzz::settings::FuzzDeflate;
use roost_proto::ProtocolError;
use roost_proto::deflate::DeflateCodec;

#[derive(Arbitrary, Debug)]
struct Input {
    deflate: FuzzDeflate,
    /// Which end inflates (the other one compresses).
    server_inflates: bool,
    limit: u32,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Hostile frame data for the inflater of hostile data.
    Raw { data: Blob, cut: u16, fin: bool },
    /// A message for the round trip.
    RoundTrip { payload: Blob, cut: u16 },
}

fuzz_target!(|input: Input| {
    let params = input.deflate.params();
    let config = input.deflate.config();
    let limit = input.limit as usize % (256 << 10);
    let inflater = |server| DeflateCodec::new(server, params, &config);
    // Two inflaters for hostile data (whole and split), one pair for the round trip.
    let (mut whole, mut split) = (
        inflater(input.server_inflates),
        inflater(input.server_inflates),
    );
    let mut raw_output = (BytesMut::new(), BytesMut::new());
    let mut raw_live = true;
    let mut sender = DeflateCodec::new(!input.server_inflates, params, &config);
    let mut receiver = inflater(input.server_inflates);
    let mut round_trip_live = true;

    for op in input.ops {
        match op {
            Op::Raw { data, cut, fin } if raw_live => {
                let cut = usize::from(cut) % (data.len() + 1);
                let a = whole.decompress(&data, fin, &mut raw_output.0, limit);
                let b = split
                    .decompress(&data[..cut], false, &mut raw_output.1, limit)
                    .and_then(|()| split.decompress(&data[cut..], fin, &mut raw_output.1, limit));
                assert!(raw_output.0.len() <= limit + 1, "inflated past the limit");
                assert!(raw_output.1.len() <= limit + 1, "inflated past the limit");
                match (&a, &b) {
                    (Ok(()), Ok(())) => assert_eq!(raw_output.0, raw_output.1),
                    (Err(ProtocolError::MessageTooLarge { .. }), Err(e))
                    | (Err(e), Err(ProtocolError::MessageTooLarge { .. })) => {
                        // The same data overflows the same limit, unless the other copy
                        // stopped at corrupt data first.
                        assert!(matches!(
                            e,
                            ProtocolError::MessageTooLarge { .. }
                                | ProtocolError::CorruptDeflate(_)
                        ));
                    }
                    (
                        Err(ProtocolError::CorruptDeflate(_)),
                        Err(ProtocolError::CorruptDeflate(_)),
                    ) => {}
                    _ => panic!("whole: {a:?}, split at {cut}: {b:?}"),
                }
                if a.is_err() || b.is_err() {
                    raw_live = false;
                } else {
                    assert!(raw_output.0.len() <= limit);
                    if fin {
                        raw_output.0.clear();
                        raw_output.1.clear();
                    }
                }
            }
            Op::Raw { .. } => {}
            Op::RoundTrip { payload, cut } if round_trip_live => {
                let mut compressed = Vec::new();
                sender.compress(&payload, &mut compressed);
                let cut = usize::from(cut) % (compressed.len() + 1);
                let mut out = BytesMut::new();
                let result = receiver
                    .decompress(&compressed[..cut], false, &mut out, limit)
                    .and_then(|()| receiver.decompress(&compressed[cut..], true, &mut out, limit));
                assert!(out.len() <= limit + 1, "inflated past the limit");
                if payload.len() > limit {
                    assert_eq!(result, Err(ProtocolError::MessageTooLarge { max: limit }));
                    round_trip_live = false;
                } else {
                    assert_eq!(result, Ok(()), "a message of {} bytes", payload.len());
                    assert!(out[..] == payload[..], "the round trip changed the message");
                }
            }
            Op::RoundTrip { .. } => {}
        }
    }
});
