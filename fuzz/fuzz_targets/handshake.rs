//! Fuzz target for the HTTP upgrade handshake of `wshub_proto::handshake`.
//!
//! The input is fed to both parsers with the default limits. Beyond "never panic",
//! it checks the invariants the server and client rely on: a parsed head never
//! claims more bytes than it was given or than `max_header_bytes`, the 101 response
//! written for a valid request is accepted by the client parser with the same key,
//! and every error response the server writes reads back as that status.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wshub_proto::handshake::{
    parse_request, parse_response, select_protocol, write_accept_response, HandshakeError,
};
use wshub_proto::Limits;

const SUPPORTED: &[&str] = &["chat", "superchat", "v1.wshub"];
const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The error response must read back, on the client side, as its own status.
fn check_error_response(err: &HandshakeError, limits: &Limits) {
    let mut out = Vec::new();
    err.write_response(&mut out);
    assert_eq!(
        parse_response(&out, limits, RFC_KEY, &[]),
        Err(HandshakeError::Status(err.status()))
    );
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();

    match parse_request(data, &limits) {
        Ok(Some(req)) => {
            assert!(req.len <= data.len() && req.len <= limits.max_header_bytes);
            let _ = (req.path(), req.query(), req.header("host"));
            match req.validate_upgrade() {
                Ok(up) => {
                    let protocol = select_protocol(&up.protocols, SUPPORTED);
                    let mut out = Vec::new();
                    write_accept_response(
                        &mut out,
                        &up.key,
                        protocol,
                        None,
                        &[("Server", "wshub")],
                    );
                    let resp = match parse_response(&out, &limits, &up.key, SUPPORTED) {
                        Ok(Some(resp)) => resp,
                        other => panic!("own 101 response rejected: {other:?}"),
                    };
                    assert_eq!(resp.len, out.len());
                    assert_eq!(resp.protocol.as_deref(), protocol);
                }
                Err(e) => check_error_response(&e, &limits),
            }
        }
        Ok(None) => assert!(data.len() < limits.max_header_bytes),
        Err(e) => check_error_response(&e, &limits),
    }

    if let Ok(Some(resp)) = parse_response(data, &limits, RFC_KEY, SUPPORTED) {
        assert_eq!(resp.status, 101);
        assert!(resp.len <= data.len() && resp.len <= limits.max_header_bytes);
        if let Some(p) = &resp.protocol {
            assert!(SUPPORTED.contains(&p.as_str()));
        }
    }
});
