//! The frame header decoder, which both roles use, on any bytes.
//!
//! Invariants: a decoded header re-encodes to exactly the bytes it was decoded from (the
//! decoder accepts only minimal length forms, so the encoding is unique); every shorter prefix
//! of a valid header asks for more bytes; bytes after the header change nothing; an answer
//! ("need more", a header, or an error) never changes as more bytes arrive, except that "need
//! more" may become anything; "need more" is only ever said of fewer than 14 bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use roost_proto::frame::{FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let decoded = FrameHeader::decode(data);
    match &decoded {
        Ok(Some((header, len))) => {
            let len = *len;
            assert!((2..=MAX_HEADER_LEN).contains(&len) && len <= data.len());
            let mut encoded = [0u8; MAX_HEADER_LEN];
            let encoded_len = header.encode(&mut encoded);
            assert_eq!(&encoded[..encoded_len], &data[..len], "{header:?}");
            if header.opcode.is_control() {
                assert!(header.fin && header.payload_len <= MAX_CONTROL_PAYLOAD as u64);
            }
            assert!(header.payload_len < 1 << 63);
            for cut in 0..len {
                assert_eq!(
                    FrameHeader::decode(&data[..cut]),
                    Ok(None),
                    "prefix of {cut}"
                );
            }
            assert_eq!(FrameHeader::decode(&data[..len]), decoded);
        }
        Ok(None) => assert!(data.len() < MAX_HEADER_LEN),
        Err(_) => {
            // The error is decided by the bytes seen: more bytes do not change it.
            let mut longer = data.to_vec();
            longer.extend_from_slice(&[0xFF; MAX_HEADER_LEN]);
            assert_eq!(FrameHeader::decode(&longer).err(), decoded.clone().err());
        }
    }
    // Every prefix's answer is consistent with the whole input's.
    for cut in 0..data.len().min(MAX_HEADER_LEN + 1) {
        match FrameHeader::decode(&data[..cut]) {
            Ok(None) => {}
            other => assert_eq!(other, decoded, "prefix of {cut} decided differently"),
        }
    }
});
