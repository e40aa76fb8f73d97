//! Incremental UTF-8 validation across frames and partial reads.
//!
//! A text message arrives in pieces; each piece is checked as soon as it arrives, so an invalid
//! byte fails the connection at once, even in the middle of a frame (the Autobahn 6.4 cases).
//! Only a code point cut by a piece boundary (at most 3 bytes) is carried over.

/// Validates a UTF-8 stream fed in arbitrary pieces.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    /// The start of a code point cut by the end of the last piece.
    tail: [u8; 4],
    tail_len: usize,
}

/// The bytes fed so far cannot be the start of valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    /// A validator at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next piece. Fails on the first byte that no continuation could make valid.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), InvalidUtf8> {
        if self.tail_len > 0 {
            // Complete the cut code point one byte at a time, up to its 4-byte maximum.
            while self.tail_len < 4 {
                let Some((&byte, rest)) = input.split_first() else {
                    return Ok(());
                };
                self.tail[self.tail_len] = byte;
                self.tail_len += 1;
                input = rest;
                match std::str::from_utf8(&self.tail[..self.tail_len]) {
                    Ok(_) => break,
                    Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                    Err(_) => {}
                }
            }
            self.tail_len = 0;
        }
        match simdutf8::compat::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                let rest = &input[e.valid_up_to()..];
                self.tail[..rest.len()].copy_from_slice(rest);
                self.tail_len = rest.len();
                Ok(())
            }
        }
    }

    /// Ends the stream: fails if it stopped in the middle of a code point.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let cut = self.tail_len != 0;
        self.tail_len = 0;
        if cut { Err(InvalidUtf8) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn validate_in_pieces(bytes: &[u8], cuts: &[usize]) -> bool {
        let mut validator = Utf8Validator::new();
        let mut start = 0;
        for &cut in cuts {
            let cut = cut.clamp(start, bytes.len());
            if validator.feed(&bytes[start..cut]).is_err() {
                return false;
            }
            start = cut;
        }
        validator.feed(&bytes[start..]).is_ok() && validator.finish().is_ok()
    }

    #[test]
    fn fails_fast_on_the_first_impossible_byte() {
        let mut validator = Utf8Validator::new();
        // "κόσμε" then 0xED 0xA0 0x80 (a surrogate): invalid as soon as 0xA0 arrives.
        assert!(validator.feed("κόσμε".as_bytes()).is_ok());
        assert!(validator.feed(&[0xED]).is_ok());
        assert_eq!(validator.feed(&[0xA0]), Err(InvalidUtf8));
        let mut validator = Utf8Validator::new();
        assert_eq!(validator.feed(&[0xF4, 0x90]), Err(InvalidUtf8));
    }

    #[test]
    fn a_cut_code_point_is_only_an_error_at_the_end() {
        let mut validator = Utf8Validator::new();
        assert!(validator.feed(&[0xE2, 0x82]).is_ok());
        assert_eq!(validator.finish(), Err(InvalidUtf8));
    }

    proptest! {
        #[test]
        fn agrees_with_std_for_any_bytes_and_cuts(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            cuts in proptest::collection::vec(0usize..64, 0..6),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            prop_assert_eq!(validate_in_pieces(&bytes, &cuts), std::str::from_utf8(&bytes).is_ok());
        }

        #[test]
        fn accepts_any_string_cut_anywhere(
            text in "\\PC{0,40}",
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            prop_assert!(validate_in_pieces(text.as_bytes(), &cuts));
        }
    }
}
