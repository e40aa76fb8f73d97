//! The incremental UTF-8 validator against the standard library, under arbitrary cuts.
//!
//! Invariants: fed any bytes in any pieces, the validator fails at the first piece after
//! which the bytes so far can no longer be the start of valid UTF-8 (not earlier, not later),
//! and at the end accepts exactly what `std::str::from_utf8` accepts.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use roost_fuzz::Blob;
use roost_proto::utf8::Utf8Validator;

#[derive(Arbitrary, Debug)]
struct Input {
    cuts: Vec<u16>,
    bytes: Blob,
}

fuzz_target!(|input: Input| {
    let bytes = &input.bytes;
    let mut cuts: Vec<usize> = input
        .cuts
        .iter()
        .map(|&cut| usize::from(cut) % (bytes.len() + 1))
        .collect();
    cuts.sort_unstable();
    cuts.push(bytes.len());

    let mut validator = Utf8Validator::new();
    let mut start = 0;
    for end in cuts {
        let fed = validator.feed(&bytes[start..end]);
        // Hopeless: the first error std finds is a bad byte, not a sequence cut short.
        let hopeless = std::str::from_utf8(&bytes[..end]).is_err_and(|e| e.error_len().is_some());
        assert_eq!(
            fed.is_err(),
            hopeless,
            "after {end} of {} bytes",
            bytes.len()
        );
        if fed.is_err() {
            assert!(std::str::from_utf8(bytes).is_err());
            return;
        }
        start = end;
    }
    assert_eq!(
        validator.finish().is_ok(),
        std::str::from_utf8(bytes).is_ok(),
        "at the end"
    );
});
