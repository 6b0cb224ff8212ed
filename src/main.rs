use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "switchyard", version, about = "An MCP-aware streaming reverse proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bundled reference MCP server.
    Backend(switchyard::backend::BackendArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Backend(args) => runtime.block_on(switchyard::backend::run_cli(args)),
    }
}
