//! The `wshub` binary: the server (`wshub serve`, also what a bare `wshub` runs)
//! and the CLI tools (`wshub connect`, `wshub publish`, `wshub token`,
//! `wshub config check`, `wshub bench`).
//!
//! Errors from the libraries arrive here as typed errors and are printed with
//! their whole chain; `main` returns an exit code instead of panicking.

mod bench;
mod config_cmd;
mod connect;
mod publish;
mod serve;
mod settings;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// wshub: a WebSocket server toolkit and real-time gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default command).
    Serve(serve::ServeArgs),
    /// Interactive WebSocket client: send lines, print messages and close codes.
    Connect(connect::ConnectArgs),
    /// Publish to a channel through the hub's HTTP API.
    Publish(publish::PublishArgs),
    /// Mint a JWT connection token for testing (with the configured key).
    Token(token::TokenArgs),
    /// Check a configuration file.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Load-test a WebSocket server.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve::run(serve::ServeArgs::default()),
        Some(Command::Serve(args)) => serve::run(args),
        Some(Command::Connect(args)) => connect::run(args),
        Some(Command::Publish(args)) => publish::run(args),
        Some(Command::Token(args)) => token::run(args),
        Some(Command::Config(cmd)) => config_cmd::run(cmd),
        Some(Command::Bench(cmd)) => bench::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wshub: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
