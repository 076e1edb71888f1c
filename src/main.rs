//! The `paymux` binary: command-line parsing and process setup only (`anyhow` lives here).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "paymux",
    version,
    about = "Payment routing proxy: one normalised API, YAML routing policy, safe failover"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate a config directory; print every error as FILE:LINE:COL: message.
    Check {
        /// Config directory.
        dir: PathBuf,
        /// Also read secrets, load keys and resolve provider hosts, as `serve` does.
        #[arg(long)]
        online: bool,
    },
    /// API key helpers.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Print the SHA-256 of a key read from standard input, for `api_keys[].sha256`.
    Hash,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { dir, online } => check(&dir, online),
        Cmd::Key { cmd: KeyCmd::Hash } => {
            let mut s = String::new();
            if std::io::stdin().read_line(&mut s).is_err() {
                eprintln!("error: cannot read the key from standard input");
                return ExitCode::FAILURE;
            }
            println!("{}", paymux::crypto::sha256_hex(s.trim_end_matches(['\n', '\r']).as_bytes()));
            ExitCode::SUCCESS
        }
    }
}

fn check(dir: &std::path::Path, online: bool) -> ExitCode {
    let result = if online {
        paymux::config::load_dir(dir, &Default::default()).map(|p| {
            format!(
                "ok (version {}, {} channels, {} rules; secrets and hosts resolved)",
                p.version,
                p.channels.len(),
                p.router.rules().len()
            )
        })
    } else {
        paymux::config::check_dir(dir).map(|()| "ok".to_string())
    };
    match result {
        Ok(summary) => {
            println!("{}: {summary}", dir.display());
            ExitCode::SUCCESS
        }
        Err(diags) => {
            print!("{}", paymux::config::diag::render(&diags));
            ExitCode::FAILURE
        }
    }
}
