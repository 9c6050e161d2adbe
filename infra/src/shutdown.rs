//! Shutdown: the process signal and the one handle every task watches.
//!
//! `main` awaits [`signal`] (SIGINT or SIGTERM) and hands the future to
//! `Application::run_until_stopped`, which triggers a [`Shutdown`]; every
//! loop inside holds a clone and stops at its next safe point (a committed
//! batch, a finished call). Backoff waits go through [`Shutdown::sleep`],
//! so a stopping service never sits out a retry delay.

use std::time::Duration;

use tokio_util::sync::{
    CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned,
};

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// A shutdown that one owner triggers and any number of tasks await.
/// Clones share the state; triggering is idempotent.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    /// A shutdown not yet triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every holder to stop.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    /// Whether [`Self::trigger`] was called.
    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once triggered (at once if it already was).
    pub fn triggered(&self) -> WaitForCancellationFuture<'_> {
        self.0.cancelled()
    }

    /// [`Self::triggered`] as a `'static` future (for servers that take
    /// ownership of their shutdown future).
    pub fn triggered_owned(&self) -> WaitForCancellationFutureOwned {
        self.0.clone().cancelled_owned()
    }

    /// Sleeps `d` unless shutdown comes first; `true` when shutting down.
    pub async fn sleep(&self, d: Duration) -> bool {
        if self.is_triggered() {
            return true;
        }
        tokio::select! {
            () = self.0.cancelled() => true,
            () = tokio::time::sleep(d) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleep_ends_early_once_triggered() {
        let s = Shutdown::new();
        assert!(!s.sleep(Duration::from_millis(1)).await);
        let clone = s.clone();
        let waiter = tokio::spawn(async move { clone.sleep(Duration::from_secs(3600)).await });
        s.trigger();
        assert!(waiter.await.unwrap_or(false));
        assert!(s.is_triggered());
        s.triggered().await;
        assert!(s.sleep(Duration::from_secs(3600)).await);
    }
}
