//! A throwaway Dovecot IMAP server for the demo, the tests and the benchmarks: loopback only,
//! plain-text login (loopback, `tls = none`), a password file, Maildir homes in its own
//! directory, and mail delivered by writing Maildir files directly (thousands per second).
//! Killed (and its directory removed, when asked) on drop.
//!
//! Needs `dovecot-imapd` (`apt-get install dovecot-imapd`); the scripts install it.

use crate::redis_launcher::free_port;
use std::io::{Read, Write};
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running private Dovecot.
pub struct PrivateDovecot {
    dir: PathBuf,
    port: u16,
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

impl PrivateDovecot {
    /// Starts Dovecot with these `(user, password)` accounts, data in `dir`.
    pub fn start(dir: &Path, users: &[(&str, &str)], remove_dir: bool) -> anyhow::Result<Self> {
        let owner = user_ids("dovecot").ok_or_else(|| {
            anyhow::anyhow!(
                "no `dovecot` system user: install dovecot-imapd (apt-get install dovecot-imapd)"
            )
        })?;
        for sub in ["run", "state", "home"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        chown(dir.join("home"), Some(owner.0), Some(owner.1))?;
        let passwd: String = users
            .iter()
            .map(|(u, p)| format!("{u}:{{PLAIN}}{p}\n"))
            .collect();
        std::fs::write(dir.join("users"), passwd)?;
        let port = free_port()?;
        let d = dir.display();
        let conf = format!(
            r#"protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = {uid}
last_valid_uid = {uid}
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
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
    port = 0
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
service pop3-login {{
  chroot =
}}
"#,
            uid = owner.0,
            gid = owner.1,
        );
        std::fs::write(dir.join("dovecot.conf"), conf)?;
        let status = Command::new(binary("dovecot"))
            .arg("-c")
            .arg(dir.join("dovecot.conf"))
            .status()
            .map_err(|e| anyhow::anyhow!("cannot run dovecot ({e}); install dovecot-imapd"))?;
        anyhow::ensure!(
            status.success(),
            "dovecot did not start; see {d}/dovecot.log"
        );
        let me = Self {
            dir: dir.to_path_buf(),
            port,
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

    pub fn port(&self) -> u16 {
        self.port
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
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
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

    /// Deletes a folder with its Dovecot index, so that it comes back with a new UIDVALIDITY.
    pub fn remove_folder(&self, user: &str, folder: &str) -> anyhow::Result<()> {
        let md = self.maildir(user, folder);
        if md.exists() {
            std::fs::remove_dir_all(&md)?;
        }
        Ok(())
    }
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
