//! The `syncfs` binary: parses the command line, sets up logging, runs the command.

use clap::Parser;

fn main() {
    let cli = syncfs::cli::Cli::parse();
    // RUST_LOG wins; else the store's `log_level` (for `mount`); else info
    let default = syncfs::cli::log_level(&cli).unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = syncfs::cli::run(cli) {
        eprintln!("syncfs: error: {e:#}");
        std::process::exit(1);
    }
}
