//! `ms1-ingestor`: ingests invoice e-mails through durable Redis Streams into the MS4
//! Persistence API. See `ms1-ingestor --help`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use ms1_ingestor::{config, daemon, sim, synthetic, telemetry};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ms1-ingestor",
    version,
    about = "Ingests invoice e-mails through durable Redis Streams into the MS4 Persistence API",
    long_about = "Ingests invoice e-mails through durable Redis Streams into the MS4 Persistence API.\n\n\
Settings come from the built-in defaults (config/default.toml), then --config FILE, then \
MS1__SECTION__KEY environment variables (e.g. MS1__MS4__API_KEY)."
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
    /// Load and validate the settings, print them (secrets redacted), exit 0 if usable.
    CheckConfig {
        /// TOML file with the settings to change from the defaults.
        #[arg(long, short, env = "MS1_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Put synthetic invoice e-mails (Graph messages) into the inbound stream.
    Load {
        /// TOML file naming the Redis (redis.url must be set, here or as MS1__REDIS__URL).
        #[arg(long, short, env = "MS1_CONFIG")]
        config: Option<PathBuf>,
        /// How many messages.
        #[arg(long, default_value_t = 1_000)]
        count: u64,
        /// Spread over this many mailboxes (invoices-N@contoso.example).
        #[arg(long, default_value_t = 3)]
        mailboxes: u64,
        /// Number of the first message (so several loads do not repeat keys).
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// How many of them MS4 will refuse (sender not an e-mail address).
        #[arg(long, default_value_t = 0)]
        invalid: u64,
        /// How many extra entries are malformed (not a Graph message at all).
        #[arg(long, default_value_t = 0)]
        malformed: u64,
    },
    /// Run a simulator of an outside service.
    Sim {
        #[command(subcommand)]
        which: SimCommand,
    },
}

#[derive(Subcommand)]
enum SimCommand {
    /// The MS4 Persistence API (POST /batch-metadata), with fault injection and statistics.
    Ms4(sim::ms4::Ms4SimOptions),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ms1-ingestor: {e:#}");
            ExitCode::from(1)
        }
    }
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
            Ok(())
        }
        Command::Load {
            config: file,
            count,
            mailboxes,
            start,
            invalid,
            malformed,
        } => {
            let settings = config::load(file.as_deref())?;
            anyhow::ensure!(
                !settings.redis.url.is_empty(),
                "redis.url is empty: say which Redis to load into (MS1__REDIS__URL=redis://…)"
            );
            load(
                &settings,
                count,
                mailboxes.max(1),
                start,
                invalid,
                malformed,
            )
        }
        Command::Sim {
            which: SimCommand::Ms4(opts),
        } => actix_rt::System::new().block_on(sim::ms4::serve(opts)),
    }
}

fn load(
    settings: &ms1_actors::Settings,
    count: u64,
    mailboxes: u64,
    start: u64,
    invalid: u64,
    malformed: u64,
) -> anyhow::Result<()> {
    use ms1_actors::processor::inbound_fields as f;
    // Spread the invalid ones evenly over the run: every `every`-th message, `invalid` times.
    let every = (count / invalid.max(1)).max(1);
    let mut entries: Vec<Vec<(&str, String)>> = (start..start + count)
        .map(|n| {
            let mailbox = format!("invoices-{}@contoso.example", n % mailboxes);
            let i = n - start;
            let valid = !(i.is_multiple_of(every) && i / every < invalid);
            synthetic::inbound_entry(n, &mailbox, valid)
        })
        .collect();
    for i in 0..malformed {
        entries.push(vec![
            (f::SOURCE, "graph".into()),
            (f::MAILBOX, "invoices-0@contoso.example".into()),
            (f::PAYLOAD, format!("{{\"id\": \"broken-{i}\", truncated")),
        ]);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = ms1_actors::Store::open(&settings.redis.url, &settings.redis.prefix)?;
        let inbound = store.keys().inbound();
        store.add_entries(&inbound, &entries).await?;
        anyhow::Ok(())
    })
    .context("loading the inbound stream")?;
    eprintln!(
        "loaded {} entries into {}stream:inbound",
        entries.len(),
        settings.redis.prefix
    );
    Ok(())
}
