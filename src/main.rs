//! Entry point: flags to [`Config`], bind, print the `Listening on` line, serve until SIGINT or
//! SIGTERM. Exit status 0 after a clean shutdown, 1 when the server cannot start, 2 for a bad
//! setting.

use std::io::Write;
use std::process::ExitCode;

use microservice2::config::{ConfigError, LogFormat};
use microservice2::{Config, Server};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = match Config::from_args(std::env::args_os()) {
        Ok(config) => config,
        Err(ConfigError::Info(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(ConfigError::Invalid(message)) => {
            eprintln!("microservice2: {message}");
            return ExitCode::from(2);
        }
    };
    init_logs(config.log_format);
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (stdout carries only the `Listening on` line), filtered by RUST_LOG.
fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(false).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Handlers go in before the Listening line, so a signal sent by whoever reads that
        // line is always caught.
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let summary = format!("{config:?}");
        let behaviour = config.behaviour.clone().unwrap_or_default();
        let server = Server::bind(config)?;
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            address = %server.local_addr(),
            admin = ?server.admin_addr(),
            workers = server.workers(),
            behaviour = %behaviour,
            "microservice2 started"
        );
        tracing::debug!(config = %summary, "configuration");
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", server.listening_line())?;
        stdout.flush()?;
        drop(stdout);
        server
            .serve(async move {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            })
            .await?;
        Ok(())
    })
}
