//! `wshub token`: mint a JWT connection token for testing, signed with an HMAC
//! secret (HS256) or a private key (RS256/ES256), with the claims the hub reads.
//! The key comes from the flags, else from the hub's configuration (the same
//! file and `WSHUB_*` variables `wshub serve` reads: `auth.hmac_secret`,
//! `auth.hmac_secret_file`, `auth.rsa_private_key_file`,
//! `auth.ec_private_key_file`), so tokens match the running hub.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use clap::Args;
use wshub::hub::auth::{ClaimsBuilder, Minter};

use crate::settings::ConfigArgs;

/// Options of `wshub token`.
#[derive(Args, Debug)]
pub(crate) struct TokenArgs {
    /// User id (`sub`).
    #[arg(long)]
    user: String,
    /// HS256 secret (at least 32 bytes); default: the configured one.
    #[arg(long, hide_env_values = true)]
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
    /// Connection tag `key=value` for targeted publications (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
    #[command(flatten)]
    config: ConfigArgs,
}

pub(crate) fn run(args: TokenArgs) -> anyhow::Result<()> {
    let read =
        |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let flagged = args.hmac_secret.is_some() || args.rsa_key.is_some() || args.ec_key.is_some();
    let loaded = if flagged {
        None
    } else {
        Some(args.config.load()?)
    };
    let minter = if let Some(secret) = &args.hmac_secret {
        Minter::hs256(secret.as_bytes())?
    } else if let Some(path) = &args.rsa_key {
        Minter::rs256_pem(&read(path)?)?
    } else if let Some(path) = &args.ec_key {
        Minter::es256_pem(&read(path)?)?
    } else if let Some(l) = &loaded {
        let auth = &l.config.auth;
        let secret = match (&auth.hmac_secret, &auth.hmac_secret_file) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(path)) => {
                let bytes = read(&l.base_dir.join(path))?;
                let text =
                    String::from_utf8(bytes).context("auth.hmac_secret_file is not UTF-8")?;
                Some(text.trim_end_matches(['\r', '\n']).to_owned())
            }
            (None, None) => None,
        };
        if let Some(secret) = secret {
            Minter::hs256(secret.as_bytes())?
        } else if let Some(path) = &auth.rsa_private_key_file {
            Minter::rs256_pem(&read(&l.base_dir.join(path))?)?
        } else if let Some(path) = &auth.ec_private_key_file {
            Minter::es256_pem(&read(&l.base_dir.join(path))?)?
        } else {
            bail!(
                "give a signing key: --hmac-secret, --rsa-key or --ec-key, or configure auth.hmac_secret (WSHUB_AUTH_HMAC_SECRET) or a private key file"
            );
        }
    } else {
        bail!("give a signing key");
    };
    let mut claims = ClaimsBuilder::new(&args.user).ttl(Some(Duration::from_secs(args.ttl)));
    if let Some(l) = &loaded {
        if let Some(aud) = &l.config.auth.audience {
            claims = claims.audience(aud);
        }
        if let Some(iss) = &l.config.auth.issuer {
            claims = claims.issuer(iss);
        }
    }
    for t in &args.tags {
        let Some((k, v)) = t.split_once('=') else {
            bail!("--tag {t:?} is not KEY=VALUE");
        };
        claims = claims.tag(k, v);
    }
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
