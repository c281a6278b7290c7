//! `wshub token`: mint a JWT connection token for testing, signed with an HMAC
//! secret (HS256) or a private key (RS256/ES256), with the claims the hub reads.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use clap::Args;
use wshub::hub::auth::{ClaimsBuilder, Minter};

/// Options of `wshub token`.
#[derive(Args, Debug)]
pub(crate) struct TokenArgs {
    /// User id (`sub`).
    #[arg(long)]
    user: String,
    /// HS256 secret (at least 32 bytes).
    #[arg(long, env = "WSHUB_TOKEN_HMAC_SECRET", hide_env_values = true)]
    hmac_secret: Option<String>,
    /// RS256: PEM file with the RSA private key.
    #[arg(long, conflicts_with = "hmac_secret")]
    rsa_key: Option<PathBuf>,
    /// ES256: PEM file with the P-256 private key (PKCS#8).
    #[arg(long, conflicts_with_all = ["hmac_secret", "rsa_key"])]
    ec_key: Option<PathBuf>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Channel (or `ns:*` pattern) the token may subscribe to (repeatable).
    #[arg(long = "channel")]
    channels: Vec<String>,
    /// Channel (or pattern) the token may publish to (repeatable).
    #[arg(long = "publish")]
    publish: Vec<String>,
    /// Audience (`aud`).
    #[arg(long)]
    audience: Option<String>,
    /// Issuer (`iss`).
    #[arg(long)]
    issuer: Option<String>,
    /// JSON attached to the user's presence (`info`).
    #[arg(long)]
    info: Option<String>,
}

pub(crate) fn run(args: TokenArgs) -> anyhow::Result<()> {
    let minter = if let Some(secret) = &args.hmac_secret {
        Minter::hs256(secret.as_bytes())?
    } else if let Some(path) = &args.rsa_key {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Minter::rs256_pem(&pem)?
    } else if let Some(path) = &args.ec_key {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Minter::es256_pem(&pem)?
    } else {
        bail!(
            "give a signing key: --hmac-secret (or WSHUB_TOKEN_HMAC_SECRET), --rsa-key or --ec-key"
        );
    };
    let mut claims = ClaimsBuilder::new(&args.user).ttl(Some(Duration::from_secs(args.ttl)));
    for c in &args.channels {
        claims = claims.channel(c);
    }
    for c in &args.publish {
        claims = claims.publish(c);
    }
    if let Some(aud) = &args.audience {
        claims = claims.audience(aud);
    }
    if let Some(iss) = &args.issuer {
        claims = claims.issuer(iss);
    }
    if let Some(info) = &args.info {
        let value: serde_json::Value =
            serde_json::from_str(info).context("--info is not valid JSON")?;
        claims = claims.info(value);
    }
    println!("{}", minter.mint(&claims, SystemTime::now())?);
    Ok(())
}
