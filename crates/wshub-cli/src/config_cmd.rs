//! `wshub config check FILE`: validates a configuration file the way
//! `wshub serve` would load it — syntax, every key and value, the auth keys
//! and TLS files it names — and says which key is wrong and why.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use wshub::hub::auth::Verifier;
use wshub::hub::config::HubConfig;

/// `wshub config …`
#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCommand {
    /// Validate a configuration file (exit status 1 and the reason if invalid).
    Check(CheckArgs),
}

/// Options of `wshub config check`.
#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    /// The TOML file to check.
    file: PathBuf,
    /// Also print the effective configuration (secrets redacted).
    #[arg(long)]
    print: bool,
}

pub(crate) fn run(cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Check(args) => check(&args),
    }
}

fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let config = HubConfig::from_toml_str(&text, Some(&args.file))?;
    let base = args
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let a = &config.auth;
    let keyless = a.hmac_secret.is_none()
        && a.hmac_secret_file.is_none()
        && a.rsa_public_key_file.is_none()
        && a.ec_public_key_file.is_none()
        && !a.allow_anonymous;
    // A file without a key is fine when the environment supplies one
    // (WSHUB_AUTH_HMAC_SECRET); say so instead of failing.
    let algorithms = if keyless {
        eprintln!(
            "warning: no token key in this file; `wshub serve` needs one from the environment \
             (WSHUB_AUTH_HMAC_SECRET, …) or it refuses to start"
        );
        Vec::new()
    } else {
        let auth = config.auth.to_auth_config(base)?;
        Verifier::new(&auth).context("[auth]")?.algorithms()
    };
    if let Some(tls) = &config.tls {
        wshub::tls::load_server_config(&base.join(&tls.cert), &base.join(&tls.key))
            .context("[tls]")?;
    }
    println!("{}: OK", args.file.display());
    println!(
        "  listen      {}{}",
        config.server.listen, config.server.ws_path
    );
    println!(
        "  tls         {}",
        if config.tls.is_some() { "on" } else { "off" }
    );
    let algs = algorithms;
    println!(
        "  auth        {}{}",
        if algs.is_empty() {
            "no keys".to_owned()
        } else {
            algs.join(", ")
        },
        if config.auth.allow_anonymous {
            " + anonymous"
        } else {
            ""
        }
    );
    println!(
        "  http api    {}",
        if config.api.key.is_some() {
            "on"
        } else {
            "off"
        }
    );
    let mut names: Vec<&str> = config.namespaces.keys().map(String::as_str).collect();
    names.insert(0, "(default)");
    println!("  namespaces  {}", names.join(", "));
    if args.print {
        println!();
        print!("{}", config.to_toml());
    }
    Ok(())
}
