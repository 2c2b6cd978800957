//! The `berth` command line.

use berth_server::config::Config;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod cli_client;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "A container image registry for Windows and Linux images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides config and BERTH_LISTEN).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory (overrides config and BERTH_DATA_DIR).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Show which manifest a host would pull for a reference, and why.
    Resolve {
        /// `repository:tag` or `repository@digest`.
        reference: String,
        /// Host platform: `os/arch[/variant][:os.version]`, e.g. `windows/amd64:10.0.20348.2340`.
        #[arg(long)]
        platform: String,
        /// `process` or `hyperv` (Windows hosts).
        #[arg(long, default_value = "process")]
        isolation: String,
        /// Whose rules: `containerd` or `moby`.
        #[arg(long, default_value = "containerd")]
        rule: String,
        /// Registry URL.
        #[arg(long, env = "BERTH_URL", default_value = "http://127.0.0.1:5000")]
        registry: String,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Show a tag's variant table: platform, os.version, size, layers, config, findings.
    Inspect {
        /// `repository:tag` or `repository@digest`.
        reference: String,
        /// Registry URL.
        #[arg(long, env = "BERTH_URL", default_value = "http://127.0.0.1:5000")]
        registry: String,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Validate a configuration file and exit.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Resolve {
            reference,
            platform,
            isolation,
            rule,
            registry,
            json,
        } => cli_client::run(cli_client::resolve(
            &registry, &reference, &platform, &isolation, &rule, json,
        )),
        Command::Inspect {
            reference,
            registry,
            json,
        } => cli_client::run(cli_client::inspect(&registry, &reference, json)),
        Command::CheckConfig { file } => match Config::load(Some(&file), false) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e:#}", file.display());
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            config,
            listen,
            data_dir,
        } => {
            let mut cfg = match Config::load(config.as_deref(), true) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("berth: {e:#}");
                    return ExitCode::from(2);
                }
            };
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let Err(e) = cfg.validate() {
                eprintln!("berth: {e:#}");
                return ExitCode::from(2);
            }
            berth_server::init_logging(&cfg);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("berth: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(berth_server::serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "berth failed");
                    eprintln!("berth: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
