//! Fuzz target for `wshub_proto::deflate`: the decompressor and the
//! `Sec-WebSocket-Extensions` parser and negotiation.
//!
//! The first input byte picks the settings (window bits, context takeover, number
//! of fragments); the rest is split into fragments and inflated as one message
//! with a 1 MiB cap, then inflated again as a second message to exercise context
//! takeover. Beyond "never panic" it checks that the output never exceeds the cap,
//! that the same bytes compressed and inflated come back unchanged, and, when the
//! input is UTF-8, that any response written by `server_negotiate` parses back as
//! exactly one permessage-deflate extension.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wshub_proto::deflate::{
    client_accept, parse_extensions, server_negotiate, DeflateConfig, DeflateError, Deflater,
    Inflater, EXTENSION_NAME,
};

const CAP: usize = 1 << 20;

/// Inflates `payload` as one message split into `fragments` pieces.
fn inflate(
    inflater: &mut Inflater,
    payload: &[u8],
    fragments: usize,
) -> Result<Vec<u8>, DeflateError> {
    let mut out = Vec::new();
    let size = payload.len().div_ceil(fragments).max(1);
    let chunks: Vec<&[u8]> = payload.chunks(size).collect();
    if chunks.is_empty() {
        inflater.decompress(&[], true, &mut out, CAP)?;
    }
    for (i, chunk) in chunks.iter().enumerate() {
        let result = inflater.decompress(chunk, i + 1 == chunks.len(), &mut out, CAP);
        assert!(out.len() <= CAP, "output {} over the cap", out.len());
        result?;
    }
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, payload)) = data.split_first() else {
        return;
    };
    let window_bits = 9 + (control & 0x07).min(6);
    let no_context_takeover = control & 0x08 != 0;
    let fragments = 1 + usize::from(control >> 4);

    // Arbitrary bytes as a compressed message (twice: the second message sees
    // the first one's window unless there is no context takeover).
    if let Ok(mut inflater) = Inflater::new(window_bits, no_context_takeover) {
        if inflate(&mut inflater, payload, fragments).is_ok() {
            let _ = inflate(&mut inflater, payload, 1);
        }
    }

    // Round trip of the payload as plain data (it fits the cap).
    if let (true, Ok(mut deflater), Ok(mut inflater)) = (
        payload.len() <= CAP,
        Deflater::new(window_bits, u32::from(control % 10), no_context_takeover),
        Inflater::new(window_bits, no_context_takeover),
    ) {
        for _ in 0..2 {
            let mut compressed = Vec::new();
            deflater.compress(payload, &mut compressed).unwrap();
            let back = inflate(&mut inflater, &compressed, fragments).unwrap();
            assert_eq!(back, payload);
        }
    }

    // Header parsing and negotiation.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_extensions(text);
        let config = DeflateConfig::default();
        if let Some((_params, response)) = server_negotiate(&[text], &config) {
            let parsed = parse_extensions(&response).unwrap();
            assert_eq!(parsed.len(), 1);
            assert_eq!(parsed[0].name, EXTENSION_NAME);
        }
        let _ = client_accept(&[text], &config);
        let _ = server_negotiate(&text.split('\n').collect::<Vec<_>>(), &config);
    }
});
