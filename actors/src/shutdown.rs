//! The drain signal: once raised, actors stop taking new work, finish what they hold, and
//! report that they are done.

use tokio::sync::watch;

/// Raised once, observed by every actor.
#[derive(Clone, Debug)]
pub(crate) struct Shutdown {
    tx: std::sync::Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        let (tx, rx) = watch::channel(false);
        Self {
            tx: std::sync::Arc::new(tx),
            rx,
        }
    }
}

impl Shutdown {
    pub(crate) fn raise(&self) {
        self.tx.send_replace(true);
    }

    pub(crate) fn is_raised(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when the signal is raised (at once if it already is).
    pub(crate) async fn raised(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|v| *v).await;
    }
}
