//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! A text message may be split over many frames and each frame over many reads.
//! [`Utf8Validator`] checks every piece as it arrives with `simdutf8` and keeps at
//! most 3 bytes of an unfinished character between pieces, so an invalid sequence
//! is reported on the very piece that contains it (Autobahn 6.4.x "fail fast"),
//! not when the message ends.

/// Streaming UTF-8 validator.
///
/// ```
/// use wshub_proto::utf8::Utf8Validator;
/// let mut v = Utf8Validator::default();
/// let euro = "€".as_bytes(); // e2 82 ac
/// assert!(v.feed(&euro[..1]).is_ok());
/// assert!(v.feed(&euro[1..]).is_ok());
/// assert!(v.finish().is_ok());
/// assert!(v.feed(&[0xff]).is_err()); // fails on the first bad byte
/// ```
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: u8,
}

/// The bytes seen so far are not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    /// Validates the next piece of the text.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), InvalidUtf8> {
        if self.partial_len > 0 {
            // Complete the character left over from the previous piece.
            while self.partial_len < 4 {
                let Some((&b, rest)) = data.split_first() else {
                    return Ok(());
                };
                self.partial[self.partial_len as usize] = b;
                self.partial_len += 1;
                data = rest;
                match simdutf8::compat::from_utf8(&self.partial[..self.partial_len as usize]) {
                    Ok(_) => {
                        self.partial_len = 0;
                        break;
                    }
                    Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                    Err(_) => {}
                }
            }
            if self.partial_len != 0 {
                return Err(InvalidUtf8);
            }
        }
        match simdutf8::compat::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                // A valid prefix of a character cut by the end of this piece.
                let tail = &data[e.valid_up_to()..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.partial_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Validates a whole text in one step (no state kept).
    pub fn validate(data: &[u8]) -> Result<(), InvalidUtf8> {
        simdutf8::basic::from_utf8(data)
            .map(|_| ())
            .map_err(|_| InvalidUtf8)
    }

    /// Ends the text: an unfinished character is an error. Resets the validator.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let incomplete = self.partial_len != 0;
        self.partial_len = 0;
        if incomplete {
            Err(InvalidUtf8)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_split(data: &[u8], splits: &[usize]) -> bool {
        let mut v = Utf8Validator::default();
        let mut start = 0;
        for &s in splits {
            let s = s.min(data.len()).max(start);
            if v.feed(&data[start..s]).is_err() {
                return false;
            }
            start = s;
        }
        v.feed(&data[start..]).is_ok() && v.finish().is_ok()
    }

    #[test]
    fn byte_by_byte_valid() {
        let s = "κόσμε €𝄞 hello".as_bytes();
        let mut v = Utf8Validator::default();
        for b in s {
            v.feed(std::slice::from_ref(b)).unwrap();
        }
        v.finish().unwrap();
    }

    #[test]
    fn fails_fast_on_bad_continuation() {
        // Autobahn 6.4.1: "κόσμε" then f4 90 80 80 (> U+10FFFF) mid-message.
        let mut v = Utf8Validator::default();
        v.feed("κόσμε".as_bytes()).unwrap();
        assert!(v.feed(&[0xf4]).is_ok());
        assert!(v.feed(&[0x90]).is_err());
    }

    #[test]
    fn truncated_at_end_is_error() {
        let mut v = Utf8Validator::default();
        v.feed(&[0xe2, 0x82]).unwrap();
        assert!(v.finish().is_err());
    }

    proptest! {
        #[test]
        fn agrees_with_std(data in proptest::collection::vec(any::<u8>(), 0..64),
                           splits in proptest::collection::vec(0usize..64, 0..6)) {
            let mut splits = splits;
            splits.sort_unstable();
            prop_assert_eq!(check_split(&data, &splits), std::str::from_utf8(&data).is_ok());
        }

        #[test]
        fn valid_strings_any_split(s in "\\PC{0,40}", splits in proptest::collection::vec(0usize..160, 0..6)) {
            let mut splits = splits;
            splits.sort_unstable();
            prop_assert!(check_split(s.as_bytes(), &splits));
        }
    }
}
