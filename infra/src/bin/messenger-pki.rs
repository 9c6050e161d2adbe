//! `messenger-pki`: writes the dev stack's local CA and service certificates.
//!
//! ```text
//! messenger-pki --out .dev/pki                      # CA + every default name
//! messenger-pki --out .dev/pki --name gateway       # CA + just this one
//! messenger-pki --out .dev/pki --force              # start over with a new CA
//! ```
//!
//! Existing files are kept unless `--force`; see [`infra::pki`].

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use infra::pki::{self, Existing};

/// Generate the local CA and the certificates of Messenger's dev stack.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Directory to write into; created if missing.
    #[arg(long, env = "MESSENGER_PKI_DIR")]
    out: PathBuf,
    /// Issue a certificate for this name (repeatable). Default: every service
    /// and `client`.
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// Replace existing files, the CA included, instead of keeping them.
    #[arg(long)]
    force: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let names: Vec<&str> = if args.names.is_empty() {
        pki::DEFAULT_NAMES.to_vec()
    } else {
        args.names.iter().map(String::as_str).collect()
    };
    let existing = if args.force {
        Existing::Replace
    } else {
        Existing::Keep
    };
    let written = pki::generate_with(&args.out, &names, existing)?;

    // The command's output is its report, so it goes to stdout (not a log).
    let mut out = std::io::stdout().lock();
    if written.is_empty() {
        writeln!(out, "{}: up to date", args.out.display())?;
    }
    for path in written {
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(())
}
