//! `ms1-sim`: the dev tools of ms1-ingestor — simulators of the services the daemon talks to,
//! the demo, and synthetic load. Not part of the production binary. See `ms1-sim --help`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use ms1_ingestor::config;
use ms1_sim::{demo, fetch_loop, graph, graph_fetch, imap, ms4, synthetic};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ms1-sim",
    version,
    about = "Dev tools of ms1-ingestor: simulators of MS4, Microsoft Graph and IMAP, the demo, synthetic load",
    long_about = "Dev tools of ms1-ingestor: simulators of the services the daemon talks to (MS4, \
Microsoft Graph, a real Dovecot for IMAP), the whole-system demo, and synthetic load for a Redis. \
For the tests, the demo and the benchmarks; the daemon itself is the `ms1-ingestor` binary.\n\n\
The simulators listen on loopback only and print where as their first line on stdout \
(e.g. `ms4 simulator listening on http://127.0.0.1:PORT`), so that a script can start `ms4` \
and `graph` with --port 0 (a free port) and read the address."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The MS4 Persistence API (POST /batch-metadata), with fault injection and statistics.
    Ms4(ms4::Ms4SimOptions),
    /// Microsoft Graph: token endpoint, messages, delta, $batch, subscriptions with the
    /// validation handshake, notifications, throttling; with statistics.
    Graph(Box<graph::GraphSimOptions>),
    /// A real Dovecot IMAP server on a loopback port, with accounts and synthetic invoice
    /// mail (needs dovecot-imapd; run as root, as Dovecot drops privileges itself).
    Imap(imap::ImapSimOptions),
    /// Run the whole path on this machine: private redis-server, MS4 and Graph simulators,
    /// a Dovecot, the daemon (`ms1-ingestor`, beside this binary), synthetic mail; prints a
    /// summary and exits 0 when nothing was lost.
    Demo(demo::DemoOptions),
    /// Put synthetic invoice e-mails (Graph messages) into the daemon's inbound stream.
    Load(LoadOptions),
    /// The benchmark's yardstick: a plain IMAP fetch loop (LOGIN, SELECT INBOX, UID FETCH
    /// (BODY.PEEK[]) in chunks, discarding) against a plain-text server on loopback; prints
    /// messages/s from the TCP connect, and the FETCHes' time alone.
    ImapFetch(ImapFetchOptions),
    /// The benchmark's yardstick for Graph: a plain delta reader (one token, then each
    /// mailbox's delta pages followed to the deltaLink, the mailboxes side by side, the
    /// messages discarded) against the Graph simulator; prints messages/s.
    GraphFetch(GraphFetchOptions),
}

#[derive(clap::Args)]
struct GraphFetchOptions {
    /// The simulator's root URL (`http://127.0.0.1:PORT`, as `ms1-sim graph` prints it).
    #[arg(long)]
    url: String,
    /// Mailboxes to read, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    mailboxes: Vec<String>,
    /// `Prefer: odata.maxpagesize`.
    #[arg(long, default_value_t = 1000)]
    page_size: u32,
    #[arg(long, default_value = "contoso")]
    tenant: String,
    #[arg(long, default_value = "ms1-app")]
    client_id: String,
    #[arg(long, default_value = "sim-secret")]
    client_secret: String,
}

#[derive(clap::Args)]
struct ImapFetchOptions {
    /// host:port of the server (plain text).
    #[arg(long)]
    addr: String,
    #[arg(long)]
    user: String,
    #[arg(long)]
    password: String,
    /// UIDs per UID FETCH.
    #[arg(long, default_value_t = 500)]
    chunk: u32,
}

#[derive(clap::Args)]
struct LoadOptions {
    /// The daemon's TOML settings naming the Redis (redis.url must be set, here or as
    /// MS1__REDIS__URL; redis.prefix and redis.cluster are read too).
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
    /// Offer them at this many per second instead of all at once.
    #[arg(long)]
    rate: Option<u64>,
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ms1-sim: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Ms4(opts) => actix_rt::System::new().block_on(ms4::serve(opts)),
        Command::Graph(opts) => actix_rt::System::new().block_on(graph::serve(*opts)),
        Command::Imap(opts) => imap::serve(opts),
        Command::Demo(opts) => demo::run(opts),
        Command::Load(opts) => load(opts),
        Command::ImapFetch(o) => {
            let f = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(fetch_loop::run(&o.addr, &o.user, &o.password, o.chunk))?;
            println!(
                "{:.0} messages/s ({} messages, {} bytes in {:.3} s from the connect; the FETCHes alone {:.3} s, {:.0}/s)",
                f.messages as f64 / f.seconds.max(1e-9),
                f.messages,
                f.bytes,
                f.seconds,
                f.fetch_seconds,
                f.messages as f64 / f.fetch_seconds.max(1e-9)
            );
            Ok(())
        }
        Command::GraphFetch(o) => {
            let target = graph_fetch::Target {
                root: o.url.trim_end_matches('/'),
                tenant: &o.tenant,
                client_id: &o.client_id,
                client_secret: &o.client_secret,
            };
            let f = actix_rt::System::new().block_on(graph_fetch::run(
                &target,
                &o.mailboxes,
                o.page_size,
            ))?;
            println!(
                "{:.0} messages/s ({} messages, {} pages, {} bytes in {:.3} s)",
                f.messages as f64 / f.seconds.max(1e-9),
                f.messages,
                f.pages,
                f.bytes,
                f.seconds
            );
            Ok(())
        }
    }
}

/// `load`: XADDs the planned entries to the inbound stream of the Redis the settings name.
fn load(opts: LoadOptions) -> anyhow::Result<()> {
    let settings = config::load(opts.config.as_deref())?;
    anyhow::ensure!(
        !settings.redis.url.is_empty(),
        "redis.url is empty: say which Redis to load into (MS1__REDIS__URL=redis://…)"
    );
    let plan = synthetic::LoadPlan {
        count: opts.count,
        mailboxes: opts.mailboxes.max(1),
        start: opts.start,
        invalid: opts.invalid,
        malformed: opts.malformed,
        rate_per_s: opts.rate,
    };
    // rediss:// takes the same (ring) crypto provider as the daemon.
    ms1_ingestor::daemon::install_tls_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let loaded = rt
        .block_on(async {
            let store = ms1_actors::Store::connect(&settings.redis)?;
            synthetic::load(&store, &plan).await
        })
        .context("loading the inbound stream")?;
    eprintln!(
        "loaded {loaded} entries into {}stream:inbound",
        settings.redis.prefix
    );
    Ok(())
}
