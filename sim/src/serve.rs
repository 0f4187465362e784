//! What every simulator does around its HTTP server: listen on loopback only, and say where
//! (the first line on stdout, which the tests, the demo and the benchmarks read).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

/// The `--bind` address, refused unless it is a loopback address.
pub fn loopback(bind: &str) -> anyhow::Result<IpAddr> {
    let ip: IpAddr = bind
        .parse()
        .map_err(|_| anyhow::anyhow!("--bind {bind}: not an IP address"))?;
    anyhow::ensure!(
        ip.is_loopback(),
        "--bind {ip}: the simulator listens on loopback only"
    );
    Ok(ip)
}

/// Prints `{name} simulator listening on http://{addr}` and flushes it.
pub fn announce(name: &str, addr: SocketAddr) {
    println!("{name} simulator listening on http://{addr}");
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_taken() {
        assert!(loopback("127.0.0.1").is_ok());
        assert!(loopback("::1").is_ok());
        assert!(loopback("0.0.0.0").is_err());
        assert!(loopback("localhost").is_err());
    }
}
