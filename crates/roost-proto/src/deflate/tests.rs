use bytes::BytesMut;

use super::*;

/// A client codec with context takeover both ways and default windows: it inflates what a
/// server sends, as the RFC 7692 §7.2.3 examples do.
fn client(params: DeflateParams) -> DeflateCodec {
    DeflateCodec::new(false, params, &DeflateConfig::default())
}

fn server(params: DeflateParams) -> DeflateCodec {
    DeflateCodec::new(true, params, &DeflateConfig::default())
}

/// Inflates one message given as its frames' payloads; the last frame has FIN set.
fn inflate(codec: &mut DeflateCodec, frames: &[&[u8]]) -> Result<Vec<u8>, ProtocolError> {
    let mut out = BytesMut::new();
    for (index, frame) in frames.iter().enumerate() {
        codec.decompress(frame, index + 1 == frames.len(), &mut out, 1 << 20)?;
    }
    Ok(out.to_vec())
}

fn compress(codec: &mut DeflateCodec, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    codec.compress(payload, &mut out);
    out
}

/// Deterministic text-like data with repeats near and far, so windows and context matter.
fn sample(len: usize, seed: u32) -> Vec<u8> {
    let words: [&[u8]; 8] = [
        b"roost ",
        b"frame ",
        b"deflate ",
        b"window ",
        b"bits ",
        b"hello ",
        b"zlib ",
        b"\n",
    ];
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut data = Vec::with_capacity(len + 16);
    while data.len() < len {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let pick = (state >> 16) as usize;
        data.extend_from_slice(words[pick % words.len()]);
        if pick.is_multiple_of(5) {
            data.push((pick >> 8) as u8);
        }
    }
    data.truncate(len);
    data
}

/// Bytes that do not compress, from a small xorshift generator.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[test]
fn rfc7692_7_2_3_1_one_compressed_block() {
    // RFC 7692 §7.2.3.1: "Hello" in one compressed DEFLATE block.
    let payload = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    assert_eq!(
        inflate(&mut client(DeflateParams::default()), &[&payload]).unwrap(),
        b"Hello"
    );
}

#[test]
fn rfc7692_7_2_3_1_fragmented() {
    // RFC 7692 §7.2.3.1: the same payload sent in two frames.
    let frames: [&[u8]; 2] = [&[0xf2, 0x48, 0xcd], &[0xc9, 0xc9, 0x07, 0x00]];
    assert_eq!(
        inflate(&mut client(DeflateParams::default()), &frames).unwrap(),
        b"Hello"
    );
}

#[test]
fn rfc7692_7_2_3_2_sharing_lz77_window() {
    // RFC 7692 §7.2.3.2: the second "Hello" refers back into the first message.
    let mut codec = client(DeflateParams::default());
    let first = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    assert_eq!(inflate(&mut codec, &[&first]).unwrap(), b"Hello");
    assert_eq!(
        inflate(&mut codec, &[&[0xf2, 0x00, 0x11, 0x00, 0x00]]).unwrap(),
        b"Hello"
    );
}

#[test]
fn rfc7692_7_2_3_2_needs_the_window_the_peer_reset() {
    // With server_no_context_takeover the client resets its inflater after each message,
    // so the back-reference of RFC 7692 §7.2.3.2 no longer resolves.
    let params = DeflateParams {
        server_no_context_takeover: true,
        ..DeflateParams::default()
    };
    let mut codec = client(params);
    inflate(&mut codec, &[&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]]).unwrap();
    let err = inflate(&mut codec, &[&[0xf2, 0x00, 0x11, 0x00, 0x00]]).unwrap_err();
    assert!(matches!(err, ProtocolError::CorruptDeflate(_)), "{err:?}");
}

#[test]
fn rfc7692_7_2_3_3_block_with_no_compression() {
    // RFC 7692 §7.2.3.3: "Hello" in a stored block.
    let payload = [
        0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
    ];
    assert_eq!(
        inflate(&mut client(DeflateParams::default()), &[&payload]).unwrap(),
        b"Hello"
    );
}

#[test]
fn rfc7692_7_2_3_4_block_with_bfinal_set() {
    // RFC 7692 §7.2.3.4: a final block, then one byte that starts the next (empty) block.
    let mut codec = client(DeflateParams::default());
    let payload = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
    assert_eq!(inflate(&mut codec, &[&payload]).unwrap(), b"Hello");
    // The stream after the final block goes on serving later messages.
    let next = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    assert_eq!(inflate(&mut codec, &[&next]).unwrap(), b"Hello");
}

#[test]
fn rfc7692_7_2_3_5_two_blocks_in_one_message() {
    // RFC 7692 §7.2.3.5: "He" flushed in one block, "llo" in the next.
    let payload = [
        0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
    ];
    assert_eq!(
        inflate(&mut client(DeflateParams::default()), &[&payload]).unwrap(),
        b"Hello"
    );
}

#[test]
fn rfc7692_7_2_3_6_empty_fragment() {
    // RFC 7692 §7.2.3.6: a single 0x00 is an empty message.
    let mut codec = client(DeflateParams::default());
    assert_eq!(inflate(&mut codec, &[&[0x00]]).unwrap(), b"");
    // Empty frames before the final one change nothing.
    let frames: [&[u8]; 4] = [&[], &[0xf2, 0x48, 0xcd], &[], &[0xc9, 0xc9, 0x07, 0x00]];
    assert_eq!(inflate(&mut codec, &frames).unwrap(), b"Hello");
}

#[test]
fn empty_message_compresses_to_one_byte_every_time() {
    for params in [
        DeflateParams::default(),
        DeflateParams {
            server_no_context_takeover: true,
            ..DeflateParams::default()
        },
    ] {
        let mut sender = server(params);
        let mut receiver = client(params);
        for _ in 0..3 {
            let payload = compress(&mut sender, b"");
            assert_eq!(payload, [0x00]);
            assert_eq!(inflate(&mut receiver, &[&payload]).unwrap(), b"");
        }
        let payload = compress(&mut sender, b"after empty messages");
        assert_eq!(
            inflate(&mut receiver, &[&payload]).unwrap(),
            b"after empty messages"
        );
    }
}

#[test]
fn compressed_payload_has_no_sync_tail() {
    let mut codec = server(DeflateParams::default());
    let payload = compress(&mut codec, &sample(1000, 1));
    assert!(!payload.ends_with(&TAIL));
    assert!(payload.len() < 1000);
}

#[test]
fn round_trips_every_window_and_takeover_combination() {
    let messages: Vec<Vec<u8>> = vec![
        sample(1500, 1),
        sample(1500, 1),
        sample(70, 2),
        noise(300),
        sample(4000, 3),
    ];
    for server_max_window_bits in 8..=15 {
        for client_max_window_bits in 8..=15 {
            for takeover in 0..4 {
                let params = DeflateParams {
                    server_no_context_takeover: takeover & 1 != 0,
                    client_no_context_takeover: takeover & 2 != 0,
                    server_max_window_bits,
                    client_max_window_bits,
                };
                let (mut server, mut client) = (server(params), client(params));
                for message in &messages {
                    let to_client = compress(&mut server, message);
                    assert_eq!(
                        &inflate(&mut client, &[&to_client]).unwrap(),
                        message,
                        "{params:?}"
                    );
                    let to_server = compress(&mut client, message);
                    assert_eq!(
                        &inflate(&mut server, &[&to_server]).unwrap(),
                        message,
                        "{params:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn context_takeover_shrinks_a_repeated_message() {
    let message = sample(2000, 7);
    let mut keeping = server(DeflateParams::default());
    let first = compress(&mut keeping, &message);
    let second = compress(&mut keeping, &message);
    assert!(
        second.len() * 4 < first.len(),
        "{} vs {}",
        second.len(),
        first.len()
    );

    let params = DeflateParams {
        server_no_context_takeover: true,
        ..DeflateParams::default()
    };
    let mut resetting = server(params);
    assert_eq!(
        compress(&mut resetting, &message),
        compress(&mut resetting, &message)
    );
}

#[test]
fn no_context_takeover_messages_inflate_alone() {
    let params = DeflateParams {
        client_no_context_takeover: true,
        ..DeflateParams::default()
    };
    let mut sender = client(params);
    let message = sample(2000, 9);
    compress(&mut sender, &message);
    let second = compress(&mut sender, &message);
    // A fresh inflater, which has not seen the first message, reads the second.
    assert_eq!(inflate(&mut server(params), &[&second]).unwrap(), message);
}

#[test]
fn input_split_across_calls() {
    let message = sample(5000, 11);
    let mut sender = server(DeflateParams::default());
    let mut receiver = client(DeflateParams::default());
    for chunk in [1, 2, 3, 7, 64, 1000] {
        let payload = compress(&mut sender, &message);
        let frames: Vec<&[u8]> = payload.chunks(chunk).collect();
        assert_eq!(
            inflate(&mut receiver, &frames).unwrap(),
            message,
            "chunk {chunk}"
        );
    }
}

#[test]
fn incompressible_message_in_many_frames() {
    let message = noise(1 << 20);
    let mut sender = client(DeflateParams::default());
    let payload = compress(&mut sender, &message);
    let frames: Vec<&[u8]> = payload.chunks(4093).collect();
    assert_eq!(
        inflate(&mut server(DeflateParams::default()), &frames).unwrap(),
        message
    );
}

/// A raw DEFLATE stream of `len` zero bytes in one fixed-Huffman block, ended with a sync
/// flush minus its tail: a literal 0, then matches of length 258 at distance 1. About 13 bits
/// per 258 output bytes, built without running a compressor over `len` bytes.
fn zero_bomb(len: usize) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u32,
        count: u32,
    }
    impl Bits {
        /// Appends `count` bits of `value`, least significant first (RFC 1951 §3.1.1).
        fn put(&mut self, value: u32, count: u32) {
            self.acc |= value << self.count;
            self.count += count;
            while self.count >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.count -= 8;
            }
        }
        /// Huffman codes go most significant bit first.
        fn code(&mut self, code: u32, count: u32) {
            let reversed = code.reverse_bits() >> (32 - count);
            self.put(reversed, count);
        }
    }
    let mut bits = Bits {
        out: Vec::new(),
        acc: 0,
        count: 0,
    };
    bits.put(0, 1); // BFINAL = 0
    bits.put(1, 2); // BTYPE = 01, fixed Huffman
    bits.code(0x30, 8); // literal 0
    let mut written = 1;
    while written + 258 <= len {
        bits.code(0b1100_0101, 8); // length code 285: 258 bytes
        bits.code(0, 5); // distance code 0: distance 1
        written += 258;
    }
    while written < len {
        bits.code(0x30, 8);
        written += 1;
    }
    bits.code(0, 7); // end of block (256)
    bits.put(0, 3); // empty stored block, non-final; the tail follows
    if bits.count > 0 {
        bits.put(0, 8 - bits.count);
    }
    bits.out
}

#[test]
fn zero_bomb_is_valid_deflate() {
    let message = inflate(
        &mut server(DeflateParams::default()),
        &[&zero_bomb(100_000)],
    )
    .unwrap();
    assert_eq!(message.len(), 100_000);
    assert!(message.iter().all(|&byte| byte == 0));
}

#[test]
fn decompression_bomb_stops_at_the_limit() {
    let bomb = zero_bomb(100 << 20); // 100 MiB of zeros in about 640 KiB
    let max = 1 << 20;
    let mut codec = server(DeflateParams::default());
    let mut out = BytesMut::new();
    let mut result = Ok(());
    for frame in bomb.chunks(64 << 10) {
        result = codec.decompress(frame, false, &mut out, max);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(ProtocolError::MessageTooLarge { max }));
    assert!(out.len() <= max + 1, "{}", out.len());
    assert!(out.capacity() <= 4 * max, "{}", out.capacity());
    // Only the input needed to pass the limit was read: about 1/256 of the bomb.
    let read = codec.decompressor.as_ref().map_or(0, |d| d.total_in()) as usize;
    assert!(read < bomb.len() / 50, "read {read} of {}", bomb.len());
}

#[test]
fn message_limit_is_exact() {
    let message = sample(10_000, 5);
    let mut sender = server(DeflateParams::default());
    let payload = compress(&mut sender, &message);

    let mut fits = client(DeflateParams::default());
    let mut out = BytesMut::new();
    fits.decompress(&payload, true, &mut out, message.len())
        .unwrap();
    assert_eq!(out, message);

    let mut codec = client(DeflateParams::default());
    let mut out = BytesMut::new();
    let err = codec
        .decompress(&payload, true, &mut out, message.len() - 1)
        .unwrap_err();
    assert_eq!(
        err,
        ProtocolError::MessageTooLarge {
            max: message.len() - 1
        }
    );
}

#[test]
fn message_limit_counts_earlier_fragments() {
    let mut codec = client(DeflateParams::default());
    let mut out = BytesMut::from(&[1u8; 10][..]);
    let err = codec
        .decompress(
            &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
            true,
            &mut out,
            12,
        )
        .unwrap_err();
    assert_eq!(err, ProtocolError::MessageTooLarge { max: 12 });
}

#[test]
fn corrupt_data_is_rejected() {
    // BTYPE 11 is reserved (RFC 1951 §3.2.3).
    let err = inflate(
        &mut client(DeflateParams::default()),
        &[&[0xff, 0xff, 0xff]],
    )
    .unwrap_err();
    assert!(matches!(err, ProtocolError::CorruptDeflate(_)), "{err:?}");
    // A stored block whose length check fails.
    let err = inflate(
        &mut client(DeflateParams::default()),
        &[&[0x00, 0x05, 0x00, 0x00, 0x00, 0x48]],
    )
    .unwrap_err();
    assert!(matches!(err, ProtocolError::CorruptDeflate(_)), "{err:?}");
    // A distance before the start of the stream.
    let err = inflate(
        &mut client(DeflateParams::default()),
        &[&[0xf2, 0x00, 0x11, 0x00, 0x00]],
    )
    .unwrap_err();
    assert!(matches!(err, ProtocolError::CorruptDeflate(_)), "{err:?}");
}

#[test]
fn should_compress_uses_the_threshold() {
    let config = DeflateConfig {
        compression_threshold: 64,
        ..DeflateConfig::default()
    };
    let codec = DeflateCodec::new(true, DeflateParams::default(), &config);
    assert!(!codec.should_compress(63));
    assert!(codec.should_compress(64));
    let config = DeflateConfig {
        compression_threshold: 0,
        ..DeflateConfig::default()
    };
    assert!(DeflateCodec::new(true, DeflateParams::default(), &config).should_compress(0));
}

#[test]
fn window_bits_follow_the_role() {
    let params = DeflateParams {
        server_max_window_bits: 10,
        client_max_window_bits: 8,
        server_no_context_takeover: true,
        ..DeflateParams::default()
    };
    let server = server(params);
    assert_eq!(
        (server.compress_window_bits, server.decompress_window_bits),
        (10, 9)
    );
    assert!(server.reset_compressor && !server.reset_decompressor);
    let client = client(params);
    assert_eq!(
        (client.compress_window_bits, client.decompress_window_bits),
        (9, 10)
    );
    assert!(!client.reset_compressor && client.reset_decompressor);
}

#[test]
fn every_level_round_trips() {
    let message = sample(20_000, 13);
    for level in 0..=9 {
        let config = DeflateConfig {
            level,
            ..DeflateConfig::default()
        };
        let mut sender = DeflateCodec::new(true, DeflateParams::default(), &config);
        let mut receiver = DeflateCodec::new(false, DeflateParams::default(), &config);
        for _ in 0..2 {
            let payload = compress(&mut sender, &message);
            assert_eq!(
                inflate(&mut receiver, &[&payload]).unwrap(),
                message,
                "level {level}"
            );
        }
    }
}
