//! `ms1-ingestor`: ingests invoice e-mails through durable Redis Streams into the MS4
//! Persistence API. The production binary: the daemon (`run`, `check-config`) and the operator
//! verbs that talk to it; the simulators, the demo and synthetic load are `ms1-sim`. See
//! `ms1-ingestor --help`.

use clap::{Parser, Subcommand};
use ms1_ingestor::{cli, config, daemon, telemetry};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ms1-ingestor",
    version,
    about = "Ingests invoice e-mails through durable Redis Streams into the MS4 Persistence API",
    long_about = "Ingests invoice e-mails through durable Redis Streams into the MS4 Persistence API.\n\n\
Settings come from the built-in defaults (config/default.toml), then --config FILE, then \
MS1__SECTION__KEY environment variables (e.g. MS1__MS4__API_KEY).\n\n\
Secrets (ms4.api_key, control.token, graph.client_secret, webhook.client_state, IMAP password, \
client_secret, refresh_token) are the value, env:NAME, file:/path or credential:NAME (a systemd \
credential, $CREDENTIALS_DIRECTORY/NAME); they are never printed."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM/SIGINT (then drain and exit).
    Run {
        /// TOML file with the settings to change from the defaults.
        #[arg(long, short, env = "MS1_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Load and validate the settings (resolving env:, file: and credential: secrets), print
    /// them with every secret as <redacted> and URL passwords as ****, exit 0 if usable.
    CheckConfig {
        /// TOML file with the settings to change from the defaults.
        #[arg(long, short, env = "MS1_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Show the session, its counters and the queue (--watch: live, with rates).
    Status {
        #[command(flatten)]
        target: cli::Target,
        /// Redraw every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Start or stop the ingestion session.
    Session {
        #[command(subcommand)]
        action: SessionCommand,
    },
    /// List, show, replay or purge dead letters.
    Dlq {
        #[command(subcommand)]
        action: DlqCommand,
    },
}

#[derive(Subcommand)]
enum SessionCommand {
    /// Start a session (409 if one is running).
    Start {
        #[command(flatten)]
        target: cli::Target,
        /// `scheduled` (poll every --interval) or `manual` (only `polling trigger`).
        #[arg(long, default_value = "scheduled", value_parser = ["scheduled", "manual"])]
        mode: String,
        /// Seconds between polls (default: graph.poll_interval_s).
        #[arg(long)]
        interval: Option<u64>,
        /// Subscribe to Graph change notifications (default: webhook.enabled).
        #[arg(long)]
        webhook: Option<bool>,
    },
    /// Stop the session: close the intake, let the queue drain.
    Stop {
        #[command(flatten)]
        target: cli::Target,
        /// Why (kept in the session history).
        #[arg(long, default_value = "user_requested")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        target: cli::Target,
        #[arg(long, default_value_t = 50)]
        count: usize,
        /// Only this stage: process, deliver or after_delivery.
        #[arg(long)]
        stage: Option<String>,
    },
    /// Show one dead letter with its payload and MS4's answer.
    Show {
        #[command(flatten)]
        target: cli::Target,
        id: String,
    },
    /// Put dead letters back where they failed (by id, by --stage, or --all).
    Replay(cli::Which),
    /// Delete dead letters (by id, by --stage, or --all).
    Purge(cli::Which),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match operator(cli.command) {
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ms1-ingestor: {e}");
            return ExitCode::from(e.exit_code());
        }
        Ok(Some(other)) => other,
    };
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ms1-ingestor: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The verbs that talk to a running daemon; hands any other verb back.
fn operator(command: Command) -> Result<Option<Command>, cli::CliError> {
    match command {
        Command::Status { target, watch } => cli::status(
            &cli::Client::new(&target)?,
            watch,
            std::time::Duration::from_secs(1),
        )?,
        Command::Session {
            action:
                SessionCommand::Start {
                    target,
                    mode,
                    interval,
                    webhook,
                },
        } => cli::session_start(&cli::Client::new(&target)?, &mode, interval, webhook)?,
        Command::Session {
            action: SessionCommand::Stop { target, reason },
        } => cli::session_stop(&cli::Client::new(&target)?, &reason)?,
        Command::Dlq { action } => match action {
            DlqCommand::List {
                target,
                count,
                stage,
            } => cli::dlq_list(&cli::Client::new(&target)?, count, stage.as_deref())?,
            DlqCommand::Show { target, id } => cli::dlq_show(&cli::Client::new(&target)?, &id)?,
            DlqCommand::Replay(which) => cli::dlq_apply("replay", &which)?,
            DlqCommand::Purge(which) => cli::dlq_apply("purge", &which)?,
        },
        other => return Ok(Some(other)),
    }
    Ok(None)
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config: file } => {
            let settings = config::load(file.as_deref())?;
            telemetry::init(&settings.log)?;
            daemon::run(settings)
        }
        Command::CheckConfig { config: file } => {
            let settings = config::load(file.as_deref())?;
            print!("{}", config::redacted(&settings));
            eprintln!("configuration is valid");
            let bound = ms1_actors::memory::MemoryBound::of(&settings);
            eprintln!(
                "memory bound: {bound}; keep the unit's MemoryMax= above it (docs/OPERATIONS.md, Memory)"
            );
            Ok(())
        }
        Command::Status { .. } | Command::Session { .. } | Command::Dlq { .. } => {
            unreachable!("operator verbs are handled before")
        }
    }
}
