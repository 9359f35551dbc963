//! The `sitesync` binary: parse the command line, set up logging, run, map errors to exit codes.

use clap::Parser;

fn main() {
    let cli = sitesync::cli::Cli::parse();
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "warn".to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("sitesync: ignoring bad log filter {filter:?}: {e}");
        tracing_subscriber::EnvFilter::new("warn")
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    let code = match sitesync::cli::run(cli) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("sitesync: {}", failure.error);
            failure.code
        }
    };
    std::process::exit(code);
}
