use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use switchyard::config::Config;
use switchyard::server::Proxy;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "An MCP-aware streaming reverse proxy and load balancer"
)]
struct Cli {
    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file, like `nginx -t`.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the bundled reference MCP server.
    Backend(switchyard::backend::BackendArgs),
    /// Generate load for benchmarks (see benches/compare.sh); prints one JSON line.
    Loadgen(switchyard::loadgen::LoadgenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let outcome = match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => runtime().and_then(|rt| rt.block_on(run(&config))),
        Command::Backend(args) => runtime().and_then(|rt| {
            rt.block_on(switchyard::backend::run_cli(args))
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from)
        }),
        Command::Loadgen(args) => switchyard::loadgen::run_cli(args)
            .map(|line| {
                println!("{line}");
                ExitCode::SUCCESS
            })
            .map_err(anyhow::Error::from),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("switchyard: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    match Config::load(path) {
        Ok(config) => {
            print!("{}", config.summary());
            println!("{}: configuration is valid", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("{error}");
            Ok(ExitCode::from(2))
        }
    }
}

async fn run(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::from(2));
        }
    };
    let shutdown = CancellationToken::new();
    let proxy = Proxy::start(config, shutdown.clone()).await?;
    spawn_signal_handlers(Arc::clone(proxy.state()), shutdown)?;
    proxy.wait().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM/SIGINT start a graceful drain, a second one exits at once; SIGHUP reloads the config.
fn spawn_signal_handlers(
    state: Arc<switchyard::state::State>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    tokio::spawn(async move {
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
                _ = hangup.recv() => {
                    let _ = switchyard::reload::reload_from_file(&state);
                    continue;
                }
            }
            if stopping {
                tracing::warn!("second signal: exiting now");
                std::process::exit(1);
            }
            stopping = true;
            tracing::info!("signal received: draining (send it again to exit at once)");
            shutdown.cancel();
        }
    });
    Ok(())
}
