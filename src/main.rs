use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use switchyard::config::LoadedConfig;
use switchyard::control::server::Proxy;
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
    /// Ask a running proxy to reload its config file, through its admin listener.
    Reload {
        /// The running proxy's config file: its `[admin] bind` is the address to call.
        #[arg(long, short, required_unless_present = "admin")]
        config: Option<PathBuf>,
        /// The admin listener's address, instead of reading it from the config.
        #[arg(long, conflicts_with = "config")]
        admin: Option<std::net::SocketAddr>,
    },
    /// Run the bundled reference MCP server.
    Backend(switchyard::tools::backend::BackendArgs),
    /// Start 2 blue + 2 green reference backends and the proxy in front of them, on loopback.
    Demo(switchyard::tools::demo::DemoArgs),
    /// Translate an nginx configuration into a switchyard.toml (printed on stdout; directives
    /// that could not be translated are listed on stderr and in the file's header).
    Import(switchyard::tools::import::ImportArgs),
    /// Generate load for benchmarks (see benches/compare.sh); prints one JSON line.
    Loadgen(switchyard::tools::loadgen::LoadgenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Check { config } => {
            init_logging(cli.log_format, DEFAULT_LOG_LEVEL);
            check(&config)
        }
        Command::Run { config } => {
            runtime().and_then(|rt| rt.block_on(run(&config, cli.log_format)))
        }
        Command::Reload { config, admin } => {
            init_logging(cli.log_format, DEFAULT_LOG_LEVEL);
            runtime().and_then(|rt| rt.block_on(reload(config.as_deref(), admin)))
        }
        Command::Backend(args) => runtime().and_then(|rt| {
            init_logging(cli.log_format, DEFAULT_LOG_LEVEL);
            rt.block_on(switchyard::tools::backend::run_cli(args))
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from)
        }),
        Command::Import(args) => Ok(import(&args)),
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(demo(args))),
        Command::Loadgen(args) => switchyard::tools::loadgen::run_cli(args)
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

const DEFAULT_LOG_LEVEL: &str = "info";

/// `RUST_LOG`, when set, overrides the level from the config (`[log] level`).
fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Validates the config and loads its files, as a start would, without serving.
fn check(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    match LoadedConfig::load(path) {
        Ok(ready) => {
            print!("{}", ready.summary());
            println!("{}: configuration is valid", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("{error}");
            Ok(ExitCode::from(2))
        }
    }
}

/// `switchyard import`: exit 0 with the TOML on stdout, 2 when the file cannot be imported.
fn import(args: &switchyard::tools::import::ImportArgs) -> ExitCode {
    match switchyard::tools::import::import(&args.file) {
        Ok(imported) => {
            print!("{}", imported.toml);
            if !imported.untranslated.is_empty() {
                eprintln!(
                    "switchyard import: {} directive(s) not translated:",
                    imported.untranslated.len()
                );
                for entry in &imported.untranslated {
                    eprintln!("  {entry}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(2)
        }
    }
}

/// `switchyard reload`: prints the admin listener's answer; exit 0 only if the reload took.
async fn reload(
    config: Option<&std::path::Path>,
    admin: Option<std::net::SocketAddr>,
) -> anyhow::Result<ExitCode> {
    let (address, token) = match (admin, config) {
        (Some(address), _) => (address, None),
        (None, Some(path)) => {
            let ready = match LoadedConfig::load(path) {
                Ok(ready) => ready,
                Err(error) => {
                    eprintln!("{error}");
                    return Ok(ExitCode::from(2));
                }
            };
            let admin = ready
                .config
                .admin
                .with_context(|| format!("{} has no [admin] listener to call", path.display()))?;
            let token = ready.loaded.admin_token.map(|t| t.authorization());
            (admin.bind, token)
        }
        (None, None) => anyhow::bail!("give --config FILE or --admin ADDRESS"),
    };
    let (status, body) =
        switchyard::control::reload::request_reload(address, token.as_deref()).await?;
    println!("{body}");
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn run(path: &std::path::Path, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    // The config names the log level, so logging starts once it is read.
    let ready = match LoadedConfig::load(path) {
        Ok(ready) => ready,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::from(2));
        }
    };
    init_logging(log_format, &ready.config.log.level);
    let shutdown = CancellationToken::new();
    let proxy = Proxy::start_loaded(ready, shutdown.clone()).await?;
    spawn_signal_handlers(Some(Arc::clone(proxy.state())), shutdown)?;
    proxy.wait().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn demo(args: switchyard::tools::demo::DemoArgs) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    spawn_signal_handlers(None, shutdown.clone())?;
    switchyard::tools::demo::run(args, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM/SIGINT start a graceful drain, a second one exits at once; SIGHUP reloads the config
/// of `reloadable` (the demo has none: it writes its config for the admin API to reload).
fn spawn_signal_handlers(
    reloadable: Option<Arc<switchyard::state::State>>,
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
                    if let Some(state) = &reloadable {
                        let _ = switchyard::control::reload::reload_from_file(state);
                    }
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
