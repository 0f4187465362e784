//! A private certificate authority for the TLS servers the tests and the demo start (Dovecot,
//! redis-server): a CA, a server certificate for `localhost` / `127.0.0.1`, and client
//! certificates for servers that ask for one. Made with the `openssl` CLI; P-256 keys in
//! PKCS#8 PEM, valid a week.

use std::path::Path;
use std::process::Command;

/// openssl config for the private CA: a v3 CA certificate that may sign server certificates.
const CA_CNF: &str = "[req]
distinguished_name = dn
x509_extensions = ca
prompt = no
[dn]
CN = ms1 private test CA
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
";

/// openssl config for the server certificate: `localhost` and `127.0.0.1`, for TLS servers.
const SERVER_CNF: &str = "[req]
distinguished_name = dn
prompt = no
[dn]
CN = localhost
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// openssl config for a client certificate.
const CLIENT_CNF: &str = "[req]
distinguished_name = dn
prompt = no
[dn]
CN = ms1-ingestor
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

/// Runs `openssl` with `command` (its arguments, separated by spaces) in `dir`; what it says
/// goes into the error when it fails.
fn openssl(dir: &Path, command: &str) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(command.split_whitespace())
        .current_dir(dir)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run openssl ({e}); install openssl"))?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {command} (in {}) failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Makes a private CA (`ca.pem`, `ca.key`) and a server certificate it signed (`server.pem`,
/// `server.key`) for `localhost` / `127.0.0.1` in `dir`. (The server certificate may also
/// serve as a client certificate: Redis Cluster nodes over TLS present it to each other.)
pub fn make_certificates(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.cnf"), CA_CNF)?;
    std::fs::write(dir.join("server.cnf"), SERVER_CNF)?;
    openssl(
        dir,
        &format!("req -x509 -config ca.cnf -days 7 {NEW_KEY} -keyout ca.key -out ca.pem"),
    )?;
    sign(dir, "server")
}

/// Makes a self-signed RSA certificate (`{name}.pem`) and its PKCS#8 key (`{name}.key`) in
/// `dir`: what an operator uploads to an Entra app registration for certificate credentials
/// (Entra takes RSA only). Valid a week.
pub fn make_app_certificate(dir: &Path, name: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    openssl(
        dir,
        &format!(
            "req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN={name} -keyout {name}.key -out {name}.pem"
        ),
    )
}

/// Makes a client certificate (`client.pem`, `client.key`) signed by the CA in `dir` (made by
/// [`make_certificates`]).
pub fn make_client_certificate(dir: &Path) -> anyhow::Result<()> {
    std::fs::write(dir.join("client.cnf"), CLIENT_CNF)?;
    sign(dir, "client")
}

/// `{name}.key` and `{name}.pem`, signed by the CA, with the extensions of section `[name]`
/// of `{name}.cnf`.
fn sign(dir: &Path, name: &str) -> anyhow::Result<()> {
    openssl(
        dir,
        &format!("req -new -config {name}.cnf {NEW_KEY} -keyout {name}.key -out {name}.csr"),
    )?;
    let serial = rand::random::<u64>() >> 1;
    openssl(
        dir,
        &format!(
            "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -set_serial {serial} -days 7 \
             -extfile {name}.cnf -extensions {name} -out {name}.pem"
        ),
    )
}
