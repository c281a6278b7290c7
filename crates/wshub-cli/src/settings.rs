//! Where the binary's commands get the hub configuration: `--config FILE`,
//! else `$WSHUB_CONFIG`, else `./wshub.toml` when it exists, else the built-in
//! defaults; then `WSHUB_*` environment variables and `--set key=value` flags
//! on top (see `docs/configuration.md`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use wshub::hub::config::HubConfig;

/// The file looked for in the working directory when no config is named.
pub(crate) const DEFAULT_FILE: &str = "wshub.toml";

/// Options shared by the commands that read the hub configuration.
#[derive(Args, Debug, Default, Clone)]
pub(crate) struct ConfigArgs {
    /// Configuration file (TOML). Default: $WSHUB_CONFIG, else ./wshub.toml if
    /// present, else built-in defaults.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Override one setting, e.g. `--set limits.max_message_size=1024`
    /// (repeatable; applied after the file and the environment).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(crate) set: Vec<String>,
}

/// A loaded configuration and the directory its relative paths resolve
/// against.
pub(crate) struct Loaded {
    pub(crate) config: HubConfig,
    pub(crate) base_dir: PathBuf,
    pub(crate) file: Option<PathBuf>,
}

impl ConfigArgs {
    /// The config file to read, if any.
    pub(crate) fn file(&self) -> Option<PathBuf> {
        if let Some(p) = &self.config {
            return Some(p.clone());
        }
        if let Some(p) = std::env::var_os("WSHUB_CONFIG").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        let local = Path::new(DEFAULT_FILE);
        local.is_file().then(|| local.to_path_buf())
    }

    /// Loads file ← environment ← `--set`.
    pub(crate) fn load(&self) -> anyhow::Result<Loaded> {
        let file = self.file();
        let config = HubConfig::load(file.as_deref(), std::env::vars(), &self.set)
            .context("invalid configuration")?;
        let base_dir = file
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Loaded {
            config,
            base_dir,
            file,
        })
    }
}
