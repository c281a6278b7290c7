//! Per-thread reuse of deflate state, so idle connections hold none.
//!
//! zlib's compressor state for a 15-bit window is about 256 KiB and the
//! decompressor's about 40 KiB. With no context takeover that state is only needed
//! while one message is being (de)compressed, so instead of one per connection we
//! keep a few per worker thread: a connection borrows one for the duration of a
//! message and gives it back. Broadcast compression ([`PreparedMessage`]) uses the
//! same shared compressors.
//!
//! [`PreparedMessage`]: crate::message::PreparedMessage

use std::cell::RefCell;

use crate::deflate::{DeflateError, Deflater, Inflater};

/// Most spare decompressors kept per thread.
const MAX_SPARE_INFLATERS: usize = 8;

thread_local! {
    static DEFLATERS: RefCell<Vec<(u8, u32, Deflater)>> = const { RefCell::new(Vec::new()) };
    // Boxed because connections hold them as `Box<Inflater>`: moving one between
    // a connection and the pool never copies the zlib state.
    #[allow(clippy::vec_box)]
    static INFLATERS: RefCell<Vec<Box<Inflater>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's no-context-takeover compressor for `window_bits` and
/// `level`, creating it on first use.
pub(crate) fn with_shared_deflater<R>(
    window_bits: u8,
    level: u32,
    f: impl FnOnce(&mut Deflater) -> Result<R, DeflateError>,
) -> Result<R, DeflateError> {
    DEFLATERS.with(|cell| {
        // A re-entrant call cannot happen (compress does not call back), but never
        // panic on it: fall back to a private compressor.
        let Ok(mut list) = cell.try_borrow_mut() else {
            return f(&mut Deflater::new(window_bits, level, true)?);
        };
        let idx = match list
            .iter()
            .position(|(b, l, _)| *b == window_bits && *l == level)
        {
            Some(i) => i,
            None => {
                list.push((window_bits, level, Deflater::new(window_bits, level, true)?));
                list.len() - 1
            }
        };
        f(&mut list[idx].2)
    })
}

/// Takes a no-context-takeover decompressor from this thread's spares, or makes one.
pub(crate) fn take_inflater(window_bits: u8) -> Result<Box<Inflater>, DeflateError> {
    let spare = INFLATERS.with(|cell| cell.try_borrow_mut().ok().and_then(|mut v| v.pop()));
    match spare {
        Some(i) => Ok(i),
        None => Ok(Box::new(Inflater::new(window_bits, true)?)),
    }
}

/// Returns a decompressor (reset) to this thread's spares.
pub(crate) fn give_inflater(mut inflater: Box<Inflater>) {
    inflater.reset();
    INFLATERS.with(|cell| {
        if let Ok(mut v) = cell.try_borrow_mut() {
            if v.len() < MAX_SPARE_INFLATERS {
                v.push(inflater);
            }
        }
    });
}
