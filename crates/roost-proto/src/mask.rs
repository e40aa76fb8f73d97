//! Masking and unmasking (RFC 6455 §5.3).
//!
//! XOR with a 4-byte key, sixteen bytes at a time in safe code. `offset` lets a payload that
//! arrives in pieces be unmasked piece by piece.

/// XORs `buf` in place with `key`, as if `buf` started `offset` bytes into the payload.
///
/// Masking and unmasking are the same operation.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let mut key = key;
    if !offset.is_multiple_of(4) {
        key.rotate_left(offset % 4);
    }
    let block = repeat(key);
    let mut chunks = buf.chunks_exact_mut(16);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u128::from_ne_bytes(bytes) ^ block).to_ne_bytes());
    }
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

/// Writes `src` XORed with `key` into `dst` (of the same length): masking while copying, in
/// one pass over the payload instead of a copy and then [`apply_mask`] over the copy.
pub fn copy_masked(dst: &mut [u8], src: &[u8], key: [u8; 4]) {
    assert_eq!(dst.len(), src.len(), "copy_masked needs equal lengths");
    let block = repeat(key);
    let mut to = dst.chunks_exact_mut(16);
    let mut from = src.chunks_exact(16);
    for (to, from) in (&mut to).zip(&mut from) {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(from);
        to.copy_from_slice(&(u128::from_ne_bytes(bytes) ^ block).to_ne_bytes());
    }
    let tail = to.into_remainder().iter_mut().zip(from.remainder());
    for ((to, from), k) in tail.zip(key.iter().cycle()) {
        *to = from ^ k;
    }
}

/// The key four times over, as one 16-byte word in memory order.
fn repeat(key: [u8; 4]) -> u128 {
    // Each 4-byte lane of the word holds the key's bytes in memory order, whatever the
    // byte order of the machine.
    let lane = u128::from(u32::from_ne_bytes(key));
    lane | lane << 32 | lane << 64 | lane << 96
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte ^= key[(offset + i) % 4];
        }
    }

    #[test]
    fn rfc_6455_section_5_7_masked_hello() {
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }

    proptest! {
        #[test]
        fn matches_the_bytewise_definition(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            key in any::<[u8; 4]>(),
            offset in 0usize..7,
        ) {
            let mut fast = data.clone();
            let mut slow = data;
            apply_mask(&mut fast, key, offset);
            reference(&mut slow, key, offset);
            prop_assert_eq!(fast, slow);
        }

        #[test]
        fn copy_masked_equals_copy_then_mask(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            key in any::<[u8; 4]>(),
        ) {
            let mut copied = vec![0u8; data.len()];
            copy_masked(&mut copied, &data, key);
            let mut masked = data;
            apply_mask(&mut masked, key, 0);
            prop_assert_eq!(copied, masked);
        }

        #[test]
        fn piecewise_equals_whole(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            key in any::<[u8; 4]>(),
            cut in 0usize..300,
        ) {
            let cut = cut.min(data.len());
            let mut whole = data.clone();
            apply_mask(&mut whole, key, 0);
            let mut pieces = data;
            let (a, b) = pieces.split_at_mut(cut);
            apply_mask(a, key, 0);
            apply_mask(b, key, cut);
            prop_assert_eq!(whole, pieces);
        }
    }
}
