//! The `syncfs` binary: parses the command line, sets up logging, runs the command.

use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = syncfs::cli::run(syncfs::cli::Cli::parse()) {
        eprintln!("syncfs: error: {e:#}");
        std::process::exit(1);
    }
}
