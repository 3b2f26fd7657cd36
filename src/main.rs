//! Entry point: flags to [`Config`], bind, print the `Listening on` line, serve until SIGINT or
//! SIGTERM. Exit status 0 after a clean shutdown, 1 when the server cannot start, 2 for a bad
//! setting.

use std::io::Write;
use std::process::ExitCode;

use microservice2::config::ConfigError;
use microservice2::{Config, Server};
use tokio::signal::unix::{SignalKind, signal};

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
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("microservice2: {err}");
            ExitCode::FAILURE
        }
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
        let server = Server::bind(config)?;
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
