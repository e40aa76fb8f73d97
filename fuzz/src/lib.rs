//! Shared harness code for roost's fuzz targets.
//!
//! The targets live in `fuzz_targets/`, one file each; what they share is here:
//! - [`settings`]: arbitrary but always valid configurations and negotiated extensions;
//! - [`http_check`]: reading back the responses the handshake writes;
//! - [`wire`]: building frames and messages as a peer would put them on the wire, including
//!   deliberately broken ones, and cutting byte streams into arbitrary chunks;
//! - [`single`]: the driver behind `connection_server` and `connection_client`, which runs one
//!   connection against hostile input and checks its invariants with a second, trusted
//!   connection that reads everything the first one writes.
//!
//! Nothing here is used outside fuzzing. Assertions are the point: a failed `assert!` is a
//! finding, and its message says which invariant broke.

#![forbid(unsafe_code)]

pub mod http_check;
pub mod settings;
pub mod single;
pub mod wire;

use arbitrary::{Arbitrary, Unstructured};

/// Bytes taken from the input as one contiguous run.
///
/// `Vec<u8>` is generated element by element, each behind a "one more?" flag byte, so a
/// frame header inside it would be interleaved with flags the fuzzer must keep intact.
/// `Blob` takes a length and then the bytes as they are, which keeps byte-level mutations
/// (and hand-written seeds) meaningful.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl<'a> Arbitrary<'a> for Blob {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let bytes: &[u8] = u.arbitrary()?;
        Ok(Blob(bytes.to_vec()))
    }

    fn arbitrary_take_rest(u: Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Blob(u.take_rest().to_vec()))
    }

    fn size_hint(_depth: usize) -> (usize, Option<usize>) {
        (0, None)
    }
}

impl std::ops::Deref for Blob {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

/// Splits a raw input into a fixed-size settings prefix (zero-padded when the input is
/// shorter) and the rest, for targets whose input is mostly text: the seeds stay readable.
pub fn settings_and_rest<const N: usize>(data: &[u8]) -> ([u8; N], &[u8]) {
    let mut settings = [0u8; N];
    let n = data.len().min(N);
    settings[..n].copy_from_slice(&data[..n]);
    (settings, &data[n..])
}
