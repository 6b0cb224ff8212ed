use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use switchyard::config::{AdminToken, ConfigError, LoadedConfig};
use switchyard::control::notify;
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
    /// Log output format; with `json`, fatal errors (a refused config too) are JSON lines as well.
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
        /// The config file (TOML); see config/switchyard.toml for every setting.
        #[arg(long, short)]
        config: PathBuf,
        /// Write the process id to FILE once listening, remove it on exit (like nginx's `pid`).
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
        /// Take over the listening sockets of the Switchyard running with this config (found
        /// through its upgrade socket); it drains and exits once this one accepts.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a configuration file, like `nginx -t`.
    Check {
        /// The config file to check, and the files it names.
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
        /// File holding the admin token, for `--admin` against a token-protected admin listener.
        #[arg(long, value_name = "FILE", requires = "admin")]
        token_file: Option<PathBuf>,
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
    /// Print a shell completion script, e.g. `switchyard completions bash > /etc/bash_completion.d/switchyard`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `switchyard man | man -l -`; `switchyard man run` for one command's.
    Man {
        /// A command whose own page to print (`run`, `check`, `reload`, …).
        command: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    let outcome = match cli.command {
        Command::Check { config } => {
            init_logging(format, DEFAULT_LOG_LEVEL);
            Ok(check(&config, format))
        }
        Command::Run {
            config,
            pid_file,
            upgrade,
        } => {
            // Before the runtime's threads exist: it reads and clears LISTEN_FDS.
            let activated = switchyard::control::upgrade::systemd_sockets();
            let start = Start {
                pid_file,
                upgrade,
                activated,
            };
            runtime().and_then(|rt| rt.block_on(run(&config, start, format)))
        }
        Command::Reload {
            config,
            admin,
            token_file,
        } => {
            init_logging(format, DEFAULT_LOG_LEVEL);
            let target = match (admin, config) {
                (Some(address), _) => AdminTarget::Address(address, token_file),
                (None, Some(path)) => AdminTarget::Config(path),
                (None, None) => AdminTarget::Missing,
            };
            runtime().and_then(|rt| rt.block_on(reload(target, format)))
        }
        Command::Backend(args) => runtime().and_then(|rt| {
            init_logging(format, DEFAULT_LOG_LEVEL);
            rt.block_on(switchyard::tools::backend::run_cli(args))
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from)
        }),
        Command::Import(args) => Ok(import(&args)),
        Command::Demo(args) => runtime().and_then(|rt| {
            init_logging(format, DEFAULT_LOG_LEVEL);
            rt.block_on(demo(args))
        }),
        Command::Loadgen(args) => switchyard::tools::loadgen::run_cli(args)
            .map(|line| {
                println!("{line}");
                ExitCode::SUCCESS
            })
            .map_err(anyhow::Error::from),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "switchyard",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { command } => man(command.as_deref()),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            report_error(format, &describe(&error), None);
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

/// An error chain as one line. Our error types put their cause in their own message, so a cause
/// already said is not repeated.
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.is_empty() {
            text = cause;
        } else if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

/// Writes a fatal error to stderr: `switchyard: MESSAGE` as text, or with `--log-format json` a
/// JSON line shaped like every log line (so a log shipper sees why the process stopped), with
/// the config file's place as fields when there is one.
fn report_error(format: LogFormat, message: &str, config: Option<&ConfigError>) {
    match format {
        LogFormat::Text if config.is_some() => eprintln!("{message}"),
        LogFormat::Text => eprintln!("switchyard: {message}"),
        LogFormat::Json => {
            let subscriber = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_ansi(false)
                .with_writer(std::io::stderr)
                .finish();
            tracing::subscriber::with_default(subscriber, || match config {
                Some(ConfigError::Invalid {
                    file, line, column, ..
                }) => tracing::error!(
                    target: "config",
                    file = %file.display(),
                    line,
                    column,
                    "{message}"
                ),
                Some(ConfigError::Read { file, .. }) => {
                    tracing::error!(target: "config", file = %file.display(), "{message}");
                }
                None => tracing::error!("{message}"),
            });
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

/// A config that does not load: reported as a config error, exit code 2.
fn refuse_config(format: LogFormat, error: &ConfigError) -> ExitCode {
    report_error(format, &error.to_string(), Some(error));
    ExitCode::from(2)
}

/// Validates the config and loads its files, as a start would, without serving.
fn check(path: &Path, format: LogFormat) -> ExitCode {
    match LoadedConfig::load(path) {
        Ok(ready) => {
            print!("{}", ready.summary());
            let upgrade = switchyard::control::upgrade::socket_path(&ready.config);
            println!(
                "upgrade   {} (run --upgrade finds this process here)",
                upgrade.display()
            );
            println!("{}: configuration is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(error) => refuse_config(format, &error),
    }
}

/// Where `switchyard reload` finds the admin listener.
enum AdminTarget {
    Address(std::net::SocketAddr, Option<PathBuf>),
    Config(PathBuf),
    Missing,
}

/// `switchyard reload`: prints the admin listener's answer; exit 0 only if the reload took.
async fn reload(target: AdminTarget, format: LogFormat) -> anyhow::Result<ExitCode> {
    let (address, token) = match target {
        AdminTarget::Address(address, None) => (address, None),
        AdminTarget::Address(address, Some(file)) => {
            let token = AdminToken::from_file(&file).map_err(anyhow::Error::msg)?;
            (address, Some(token))
        }
        AdminTarget::Config(path) => {
            let ready = match LoadedConfig::load(&path) {
                Ok(ready) => ready,
                Err(error) => return Ok(refuse_config(format, &error)),
            };
            let admin = ready
                .config
                .admin
                .with_context(|| format!("{} has no [admin] listener to call", path.display()))?;
            (admin.bind, ready.loaded.admin_token)
        }
        AdminTarget::Missing => anyhow::bail!("give --config FILE or --admin ADDRESS"),
    };
    let authorization = token.map(|t| t.authorization());
    let (status, body) =
        switchyard::control::reload::request_reload(address, authorization.as_deref()).await?;
    println!("{body}");
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// How `run` starts, besides its config: a pid file to write, whether to take over a running
/// Switchyard's sockets, and the sockets systemd passed.
struct Start {
    pid_file: Option<PathBuf>,
    upgrade: bool,
    activated: Result<Vec<Inherited>, UpgradeError>,
}

async fn run(path: &Path, start: Start, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    // The config names the log level, so logging starts once it is read.
    let ready = match LoadedConfig::load(path) {
        Ok(ready) => ready,
        Err(error) => return Ok(refuse_config(log_format, &error)),
    };
    init_logging(log_format, &ready.config.log.level);
    let signals = Signals::watch()?;
    let mut inherited = start.activated?;
    let socket = upgrade::socket_path(&ready.config);
    let explicit_socket = ready.config.lifecycle.upgrade_socket.is_some();
    let predecessor = if start.upgrade {
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
    // Written once the listeners are bound, so a script that waits for the file can reach them.
    let pid_file = start.pid_file.map(PidFile::create).transpose()?;
    let exit_cleanup = pid_file.as_ref().map(|f| f.path.clone());
    signals.spawn(
        Some(Arc::clone(proxy.state())),
        shutdown.clone(),
        exit_cleanup,
    );
    match predecessor {
        Some(takeover) => {
            if let Err(error) = confirm(takeover, &shutdown).await {
                tracing::error!(%error, "the old process keeps its sockets; this one stops");
                shutdown.cancel();
                proxy.wait().await;
                return Ok(ExitCode::from(1));
            }
            // systemd follows this process from now on (the unit's NotifyAccess=all).
            notify::ready_as_main();
        }
        None => notify::ready(),
    }
    let offered = prepared.and_then(|prepared| offer_upgrades(prepared, &mut proxy));
    proxy.wait().await;
    if let Some(offered) = offered {
        offered.remove();
    }
    drop(pid_file);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The `--pid-file`: holds this process's id while it runs, removed when it stops.
struct PidFile {
    path: PathBuf,
}

impl PidFile {
    fn create(path: PathBuf) -> anyhow::Result<PidFile> {
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write the pid file {}", path.display()))?;
        Ok(PidFile { path })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        remove_pid_file(&self.path);
    }
}

/// Removes the pid file only while it still names this process: during a zero-gap restart the
/// new process has written its own id there, and the old one must not delete it on its way out.
fn remove_pid_file(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .is_ok_and(|text| text.trim() == std::process::id().to_string());
    if ours && let Err(error) = std::fs::remove_file(path) {
        tracing::warn!(%error, path = %path.display(), "cannot remove the pid file");
    }
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
    Signals::watch()?.spawn(None, shutdown.clone(), None);
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

    /// SIGTERM/SIGINT start a graceful drain, a second one exits at once (removing `pid_file`
    /// first); SIGHUP reloads the config of `reloadable` (the demo has none: it writes its
    /// config for the admin API to reload).
    fn spawn(
        mut self,
        reloadable: Option<Arc<switchyard::state::State>>,
        shutdown: CancellationToken,
        pid_file: Option<PathBuf>,
    ) {
        tokio::spawn(async move {
            let mut stopping = false;
            loop {
                tokio::select! {
                    _ = self.terminate.recv() => {}
                    _ = self.interrupt.recv() => {}
                    _ = self.hangup.recv() => {
                        if let Some(state) = &reloadable {
                            let state = Arc::clone(state);
                            let _ = switchyard::control::reload::reload_off_runtime(state).await;
                        }
                        continue;
                    }
                }
                if stopping {
                    tracing::warn!("second signal: exiting now");
                    if let Some(path) = &pid_file {
                        remove_pid_file(path);
                    }
                    std::process::exit(1);
                }
                stopping = true;
                notify::stopping();
                tracing::info!("signal received: draining (send it again to exit at once)");
                shutdown.cancel();
            }
        });
    }
}

/// `switchyard man [COMMAND]`: the page of the whole program, or of one command
/// (`switchyard-run(1)`, …).
fn man(command: Option<&str>) -> anyhow::Result<ExitCode> {
    let program = Cli::command();
    let page = match command {
        None => program,
        Some(name) => {
            let names: Vec<String> = program
                .get_subcommands()
                .map(|c| c.get_name().to_string())
                .collect();
            program
                .find_subcommand(name)
                .cloned()
                .map(|c| c.name(format!("switchyard-{name}")))
                .with_context(|| format!("no command `{name}`: one of {}", names.join(", ")))?
        }
    };
    clap_mangen::Man::new(page)
        .render(&mut std::io::stdout())
        .context("cannot write the man page")?;
    Ok(ExitCode::SUCCESS)
}
