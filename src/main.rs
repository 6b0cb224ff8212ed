use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use switchyard::config::LoadedConfig;
use switchyard::control::server::Proxy;
use switchyard::control::upgrade::{self, UpgradeError};
use switchyard::proxy::listener::Inherited;
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
        /// Take over the listening sockets of the Switchyard running with this config (found
        /// through its upgrade socket); it drains and exits once this one accepts.
        #[arg(long)]
        upgrade: bool,
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
        Command::Run { config, upgrade } => {
            // Before the runtime's threads exist: it reads and clears LISTEN_FDS.
            let activated = switchyard::control::upgrade::systemd_sockets();
            runtime().and_then(|rt| rt.block_on(run(&config, upgrade, activated, cli.log_format)))
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
            let upgrade = switchyard::control::upgrade::socket_path(&ready.config);
            println!(
                "upgrade   {} (run --upgrade finds this process here)",
                upgrade.display()
            );
            println!("{}: configuration is valid", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("{error}");
            Ok(ExitCode::from(2))
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

async fn run(
    path: &std::path::Path,
    upgrade: bool,
    activated: Result<Vec<Inherited>, UpgradeError>,
    log_format: LogFormat,
) -> anyhow::Result<ExitCode> {
    // The config names the log level, so logging starts once it is read.
    let ready = match LoadedConfig::load(path) {
        Ok(ready) => ready,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::from(2));
        }
    };
    init_logging(log_format, &ready.config.log.level);
    let signals = Signals::watch()?;
    let mut inherited = activated?;
    let socket = upgrade::socket_path(&ready.config);
    let explicit_socket = ready.config.lifecycle.upgrade_socket.is_some();
    let predecessor = if upgrade {
        let mut takeover = upgrade::take_over(&socket).await?;
        inherited.extend(takeover.take_sockets());
        Some(takeover)
    } else {
        upgrade::ensure_not_running(&socket).await?;
        None
    };
    let prepared = prepare_upgrade_socket(&socket, explicit_socket)?;
    let shutdown = CancellationToken::new();
    // A failed start drops `predecessor`: the old process sees the hand-over end and keeps
    // serving.
    let mut proxy = Proxy::start_with(ready, shutdown.clone(), inherited).await?;
    signals.spawn(Some(Arc::clone(proxy.state())), shutdown.clone());
    if let Some(takeover) = predecessor
        && let Err(error) = confirm(takeover, &shutdown).await
    {
        tracing::error!(%error, "the old process keeps its sockets; this one stops");
        shutdown.cancel();
        proxy.wait().await;
        return Ok(ExitCode::from(1));
    }
    let offered = prepared.and_then(|prepared| offer_upgrades(prepared, &mut proxy));
    proxy.wait().await;
    if let Some(offered) = offered {
        offered.remove();
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Binds the upgrade socket before anything is confirmed, so a configured path that cannot be
/// created fails the start while the old process still serves. The default path may fail (a
/// read-only `/tmp`): then this process runs without one.
fn prepare_upgrade_socket(
    socket: &std::path::Path,
    explicit: bool,
) -> Result<Option<upgrade::Prepared>, UpgradeError> {
    match upgrade::prepare(socket) {
        Ok(prepared) => Ok(Some(prepared)),
        Err(error) if !explicit => {
            tracing::warn!(%error, "no upgrade socket: `run --upgrade` cannot take over from this process");
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// Makes the upgrade socket reachable. Past the hand-over a failure here only costs the next
/// upgrade, so it is a warning.
fn offer_upgrades(
    prepared: upgrade::Prepared,
    proxy: &mut Proxy,
) -> Option<upgrade::UpgradeSocket> {
    match prepared.offer(proxy.handover()) {
        Ok(offered) => {
            tracing::info!(path = %offered.path().display(), "upgrade socket ready");
            Some(offered)
        }
        Err(error) => {
            tracing::warn!(%error, "no upgrade socket: `run --upgrade` cannot take over from this process");
            None
        }
    }
}

/// Tells the old process this one accepts, unless a signal already stopped this one during its
/// start: then the old one is left serving.
async fn confirm(
    takeover: upgrade::TakeOver,
    shutdown: &CancellationToken,
) -> Result<(), UpgradeError> {
    if shutdown.is_cancelled() {
        return Err(UpgradeError::Protocol(
            "stopped by a signal while starting".into(),
        ));
    }
    let old = takeover.confirm().await?;
    tracing::info!(old, "took over the listening sockets");
    Ok(())
}

async fn demo(args: switchyard::tools::demo::DemoArgs) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    Signals::watch()?.spawn(None, shutdown.clone());
    switchyard::tools::demo::run(args, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// The signals the proxy answers, watched from the moment this is created: one that arrives
/// while the proxy starts is acted on once [`Signals::spawn`] runs, instead of killing it.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn watch() -> anyhow::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            hangup: signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
        })
    }

    /// SIGTERM/SIGINT start a graceful drain, a second one exits at once; SIGHUP reloads the
    /// config of `reloadable` (the demo has none: it writes its config for the admin API to
    /// reload).
    fn spawn(
        mut self,
        reloadable: Option<Arc<switchyard::state::State>>,
        shutdown: CancellationToken,
    ) {
        tokio::spawn(async move {
            let mut stopping = false;
            loop {
                tokio::select! {
                    _ = self.terminate.recv() => {}
                    _ = self.interrupt.recv() => {}
                    _ = self.hangup.recv() => {
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
    }
}
