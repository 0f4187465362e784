//! `ms1-sim imap`: a throwaway Dovecot (the real IMAP server, not a simulation) with
//! accounts and synthetic invoice mail, for the demo and the benchmarks. It prints
//! `dovecot listening on 127.0.0.1:PORT`, optionally delivers new mail at a steady rate (so
//! IDLE push can be watched), and stops Dovecot on SIGTERM/SIGINT.

use crate::dovecot_launcher::PrivateDovecot;
use crate::synthetic::mime_message;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct ImapSimOptions {
    /// Directory for Dovecot's config, sockets and Maildirs; default: a new temporary one,
    /// removed at exit.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// An account as USER:PASSWORD (repeat for more).
    #[arg(long = "user", default_value = "invoices@contoso.example:demo-secret")]
    pub users: Vec<String>,
    /// Messages delivered to every account's folder at start.
    #[arg(long, default_value_t = 0)]
    pub messages: u64,
    /// Size of each message in bytes (about; every third carries a PDF attachment).
    #[arg(long, default_value_t = 4_096)]
    pub size: usize,
    /// New messages per second delivered to every account while running (0: none).
    #[arg(long, default_value_t = 0)]
    pub trickle_per_s: u64,
    /// Folder the mail goes to.
    #[arg(long, default_value = "INBOX")]
    pub folder: String,
}

/// Runs until SIGTERM or SIGINT.
pub fn serve(opts: ImapSimOptions) -> anyhow::Result<()> {
    let users: Vec<(String, String)> = opts
        .users
        .iter()
        .map(|u| {
            u.split_once(':')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| anyhow::anyhow!("--user {u}: expected USER:PASSWORD"))
        })
        .collect::<anyhow::Result<_>>()?;
    let (dir, remove) = match &opts.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("ms1-sim-imap-{}", std::process::id())),
            true,
        ),
    };
    let refs: Vec<(&str, &str)> = users
        .iter()
        .map(|(u, p)| (u.as_str(), p.as_str()))
        .collect();
    let mut dc = PrivateDovecot::start(&dir, &refs, remove)?;
    let mut next = 0u64;
    // Generated and delivered a step at a time: at most 1,000 messages or 64 MiB (a burst of
    // 25 MB messages must not be built in memory all at once).
    let step = (64 * 1024 * 1024 / opts.size.max(1)).clamp(1, 1_000) as u64;
    for (user, _) in &users {
        for start in (0..opts.messages).step_by(step as usize) {
            let end = (start + step).min(opts.messages);
            let mail: Vec<Vec<u8>> = (start..end)
                .map(|n| mime_message(n, user, opts.size))
                .collect();
            dc.deliver(user, &opts.folder, &mail)?;
        }
    }
    next += opts.messages;
    println!("dovecot listening on 127.0.0.1:{}", dc.port());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = tick.tick(), if opts.trickle_per_s > 0 => {
                    for (user, _) in &users {
                        let mail: Vec<Vec<u8>> = (next..next + opts.trickle_per_s)
                            .map(|n| mime_message(n, user, opts.size))
                            .collect();
                        dc.deliver(user, &opts.folder, &mail)?;
                    }
                    next += opts.trickle_per_s;
                }
            }
        }
        anyhow::Ok(())
    })?;
    drop(dc);
    Ok(())
}
