//! A throwaway Dovecot IMAP server for the demo, the tests and the benchmarks: loopback only,
//! a password file, Maildir homes in its own directory, and mail delivered by writing Maildir
//! files directly (thousands per second). Killed (and its directory removed, when asked) on
//! drop.
//!
//! By default it takes plain-text logins on one port. [`DovecotOptions`] adds what the IMAP
//! source meets at a real provider:
//!
//! - **TLS**: a private CA and a server certificate for `localhost` / `127.0.0.1`, made with the
//!   `openssl` CLI ([`crate::private_ca`]); STARTTLS on the plain port and implicit TLS on a second port. A client
//!   trusts [`PrivateDovecot::ca_file`]. Plain-text logins still work on the plain port.
//! - **XOAUTH2 / OAUTHBEARER**: an `oauth2` passdb that asks an RFC 7662 introspection
//!   endpoint (the Graph simulator's `POST /_sim/introspect`) about each bearer token; the
//!   answer's `email` must name the user logging in.
//!
//! A refused login is answered within half a second and does not slow the next ones: no
//! `auth_failure_delay`, and no per-IP auth penalty (Dovecot's anvil otherwise makes every
//! login from 127.0.0.1 wait up to 15 s after a few failures, successes included), so tests
//! can log in wrong on purpose.
//!
//! Needs `dovecot-imapd` (`apt-get install dovecot-imapd`); the scripts install it.

use crate::redis_launcher::free_port;
use std::io::{Read, Write};
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// What a private Dovecot offers beyond plain-text logins (all off by default).
#[derive(Debug, Clone, Default)]
pub struct DovecotOptions {
    /// STARTTLS on the plain port and implicit TLS on a second one, with a certificate from a
    /// private CA (see [`PrivateDovecot::ca_file`]).
    pub tls: bool,
    /// An RFC 7662 introspection URL (`http://127.0.0.1:…/_sim/introspect`): enables
    /// `AUTHENTICATE XOAUTH2` and `OAUTHBEARER`, with the token checked there.
    pub oauth2_introspection_url: Option<String>,
}

/// A running private Dovecot.
pub struct PrivateDovecot {
    dir: PathBuf,
    port: u16,
    /// The implicit-TLS port, when started with TLS.
    tls_port: Option<u16>,
    /// The CA certificate (PEM) the server certificate chains to, when started with TLS.
    ca_file: Option<PathBuf>,
    remove_dir: bool,
    /// uid/gid mail is stored as (the `dovecot` system user).
    owner: (u32, u32),
    delivered: u64,
}

/// The path of a Dovecot binary: /usr/sbin is not on every PATH.
fn binary(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// uid and gid of a system user, from /etc/passwd.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name) && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}

/// The parts of `dovecot.conf` that depend on the options.
struct Layout<'a> {
    dir: &'a Path,
    owner: (u32, u32),
    port: u16,
    tls_port: Option<u16>,
    /// Path of the oauth2 passdb args file, when XOAUTH2 is on.
    oauth2_args: Option<PathBuf>,
}

impl Layout<'_> {
    fn dovecot_conf(&self) -> String {
        let d = self.dir.display();
        let (uid, gid) = self.owner;
        let ssl = if self.tls_port.is_some() {
            format!(
                "ssl = yes\nssl_cert = <{d}/tls/server.pem\nssl_key = <{d}/tls/server.key\n\
                 ssl_min_protocol = TLSv1.2\n"
            )
        } else {
            "ssl = no\n".to_string()
        };
        let (mechanisms, oauth2_passdb, password_mechanisms) = match &self.oauth2_args {
            Some(args) => (
                "plain login xoauth2 oauthbearer",
                format!(
                    "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {}\n}}\n",
                    args.display()
                ),
                "  mechanisms = plain login\n",
            ),
            None => ("plain login", String::new(), ""),
        };
        let imaps = match self.tls_port {
            Some(p) => format!("    address = 127.0.0.1\n    port = {p}\n    ssl = yes\n"),
            None => "    port = 0\n".to_string(),
        };
        let port = self.port;
        format!(
            r#"protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
{ssl}disable_plaintext_auth = no
auth_failure_delay = 0
auth_mechanisms = {mechanisms}
first_valid_uid = {uid}
last_valid_uid = {uid}
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
{oauth2_passdb}passdb {{
  driver = passwd-file
{password_mechanisms}  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/home/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
{imaps}  }}
  chroot =
}}
service anvil {{
  chroot =
}}
service pop3-login {{
  chroot =
}}
"#
        )
    }
}

/// The oauth2 passdb's args file: POST the token to `url` (as the form field `token`), take the
/// user from `email`, and accept only answers with `"active": true`.
fn oauth2_args(url: &str) -> String {
    format!(
        "introspection_mode = post
introspection_url = {url}
force_introspection = yes
username_attribute = email
active_attribute = active
active_value = true
"
    )
}

/// Dovecot's auth and imap processes run as the `dovecot` user and must reach the password
/// file and the Maildirs: give "others" search (x, not read) permission on every directory
/// above `dir` that lacks it, e.g. a private (0700) temporary directory.
fn let_dovecot_through(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for d in dir.ancestors() {
        let meta = std::fs::metadata(d)?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o001))?;
        }
    }
    Ok(())
}

impl PrivateDovecot {
    /// Starts Dovecot with these `(user, password)` accounts, data in `dir`, plain-text logins
    /// only.
    pub fn start(dir: &Path, users: &[(&str, &str)], remove_dir: bool) -> anyhow::Result<Self> {
        Self::start_with(dir, users, remove_dir, DovecotOptions::default())
    }

    /// Starts Dovecot with these `(user, password)` accounts, data in `dir`, and what
    /// `options` turn on (TLS, XOAUTH2).
    pub fn start_with(
        dir: &Path,
        users: &[(&str, &str)],
        remove_dir: bool,
        options: DovecotOptions,
    ) -> anyhow::Result<Self> {
        let owner = user_ids("dovecot").ok_or_else(|| {
            anyhow::anyhow!(
                "no `dovecot` system user: install dovecot-imapd (apt-get install dovecot-imapd)"
            )
        })?;
        for sub in ["run", "state", "home"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        chown(dir.join("home"), Some(owner.0), Some(owner.1))?;
        let dir = &std::fs::canonicalize(dir)?;
        let_dovecot_through(dir)?;
        let passwd: String = users
            .iter()
            .map(|(u, p)| format!("{u}:{{PLAIN}}{p}\n"))
            .collect();
        std::fs::write(dir.join("users"), passwd)?;
        let port = free_port()?;
        let (tls_port, ca_file) = if options.tls {
            crate::private_ca::make_certificates(&dir.join("tls"))?;
            let mut tls_port = free_port()?;
            while tls_port == port {
                tls_port = free_port()?;
            }
            (Some(tls_port), Some(dir.join("tls").join("ca.pem")))
        } else {
            (None, None)
        };
        let oauth2 = match &options.oauth2_introspection_url {
            Some(url) => {
                let path = dir.join("oauth2.conf.ext");
                std::fs::write(&path, oauth2_args(url))?;
                Some(path)
            }
            None => None,
        };
        let layout = Layout {
            dir,
            owner,
            port,
            tls_port,
            oauth2_args: oauth2,
        };
        std::fs::write(dir.join("dovecot.conf"), layout.dovecot_conf())?;
        let d = dir.display();
        let status = Command::new(binary("dovecot"))
            .arg("-c")
            .arg(dir.join("dovecot.conf"))
            .status()
            .map_err(|e| anyhow::anyhow!("cannot run dovecot ({e}); install dovecot-imapd"))?;
        anyhow::ensure!(
            status.success(),
            "dovecot did not start; see {d}/dovecot.log"
        );
        // The auth process (started at the first login, after this) finds no penalty socket
        // and runs without auth penalties; nothing else uses that socket.
        let _ = std::fs::remove_file(dir.join("run").join("anvil-auth-penalty"));
        let me = Self {
            dir: dir.to_path_buf(),
            port,
            tls_port,
            ca_file,
            remove_dir,
            owner,
            delivered: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if me.greets() {
                return Ok(me);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        anyhow::bail!("dovecot on port {port} did not greet; see {d}/dovecot.log")
    }

    fn greets(&self) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 256];
        let ok = matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"* OK"));
        let _ = s.write_all(b"x LOGOUT\r\n");
        ok
    }

    /// The plain IMAP port (STARTTLS too, when started with TLS).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The implicit-TLS (imaps) port, when started with TLS.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The CA certificate (PEM) a client trusts to verify the server, when started with TLS.
    /// The server certificate names `localhost` and `127.0.0.1`.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.ca_file.clone()
    }

    /// Dovecot's log file (auth failures, TLS errors).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("dovecot.log")
    }

    /// A user's folder as a Maildir (`INBOX` or another folder name).
    fn maildir(&self, user: &str, folder: &str) -> PathBuf {
        let root = self.dir.join("home").join(user).join("Maildir");
        if folder.eq_ignore_ascii_case("inbox") {
            root
        } else {
            root.join(format!(".{folder}"))
        }
    }

    /// Delivers raw messages into a user's folder (new mail, unread).
    pub fn deliver(
        &mut self,
        user: &str,
        folder: &str,
        messages: &[Vec<u8>],
    ) -> anyhow::Result<()> {
        let md = self.maildir(user, folder);
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(md.join(sub))?;
        }
        let mut dirs = vec![md.clone(), md.join("new"), md.join("cur"), md.join("tmp")];
        let mut p = md.as_path();
        while let Some(parent) = p.parent() {
            if parent == self.dir.join("home") {
                break;
            }
            dirs.push(parent.to_path_buf());
            p = parent;
        }
        for d in dirs {
            chown(&d, Some(self.owner.0), Some(self.owner.1))?;
        }
        let pid = std::process::id();
        let secs = unix_now()?;
        for raw in messages {
            self.delivered += 1;
            let name = format!("{secs}.M{}P{pid}.ms1test", self.delivered);
            let tmp = md.join("tmp").join(&name);
            std::fs::write(&tmp, raw)?;
            chown(&tmp, Some(self.owner.0), Some(self.owner.1))?;
            std::fs::rename(&tmp, md.join("new").join(&name))?;
        }
        Ok(())
    }

    /// How many messages of a user's folder carry a Maildir flag (`S` for `\Seen`).
    pub fn count_flagged(&self, user: &str, folder: &str, flag: char) -> anyhow::Result<usize> {
        let cur = self.maildir(user, folder).join("cur");
        let mut n = 0;
        for entry in std::fs::read_dir(cur)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if name
                .rsplit_once(":2,")
                .is_some_and(|(_, flags)| flags.contains(flag))
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Deletes a folder with its Dovecot index, so that it comes back with a new UIDVALIDITY.
    ///
    /// Dovecot gives a recreated Maildir the current time as UIDVALIDITY, so this returns only
    /// once the clock has passed every UIDVALIDITY the deleted folders had (at most a second):
    /// a folder deleted and refilled within one second would otherwise come back unchanged.
    /// (`INBOX` is the Maildir root: deleting it deletes the user's other folders too.)
    pub fn remove_folder(&self, user: &str, folder: &str) -> anyhow::Result<()> {
        let md = self.maildir(user, folder);
        if !md.exists() {
            return Ok(());
        }
        let mut folders = vec![md.clone()];
        if let Ok(entries) = std::fs::read_dir(&md) {
            folders.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
                    .map(|e| e.path()),
            );
        }
        let newest = folders.iter().filter_map(|f| uidvalidity_on_disk(f)).max();
        std::fs::remove_dir_all(&md)?;
        if let Some(newest) = newest {
            while unix_now()? <= newest {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

/// The UIDVALIDITY Dovecot recorded for a Maildir folder (`V…` in the `dovecot-uidlist`
/// header), if it has one.
fn uidvalidity_on_disk(maildir: &Path) -> Option<u64> {
    let list = std::fs::read_to_string(maildir.join("dovecot-uidlist")).ok()?;
    list.lines()
        .next()?
        .split_whitespace()
        .find_map(|field| field.strip_prefix('V')?.parse().ok())
}

fn unix_now() -> anyhow::Result<u64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs())
}

impl Drop for PrivateDovecot {
    fn drop(&mut self) {
        let _ = Command::new(binary("doveadm"))
            .arg("-c")
            .arg(self.dir.join("dovecot.conf"))
            .arg("stop")
            .status();
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
