//! [`Shutdown`]: the signal every background task of a node stops on. The node keeps the
//! [`ShutdownTrigger`]; each task holds a clone of the [`Shutdown`] and awaits
//! [`Shutdown::signalled`] in its `select!` loop. [`on_signal`] is what fires a node's trigger:
//! Ctrl-C or SIGTERM.

use tokio::sync::watch;

/// Fires the node's [`Shutdown`]; dropping it fires it too, so no task outlives its node.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Whether, and when, the node stops. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl ShutdownTrigger {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Tells every holder of a [`Shutdown`] to stop.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Resolves once the trigger fires or is dropped. Cancel safe: use it in `select!`.
    pub async fn signalled(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_signalled(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn on_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn every_clone_hears_the_trigger_and_a_dropped_trigger() {
        let (trigger, shutdown) = ShutdownTrigger::new();
        let mut a = shutdown.clone();
        let mut b = trigger.subscribe();
        assert!(!a.is_signalled());
        let pending = tokio::time::timeout(Duration::from_millis(20), a.signalled()).await;
        assert!(pending.is_err(), "resolved before the trigger fired");
        trigger.fire();
        a.signalled().await;
        b.signalled().await;
        assert!(shutdown.is_signalled());

        let (trigger, mut shutdown) = ShutdownTrigger::new();
        drop(trigger);
        shutdown.signalled().await;
        assert!(shutdown.is_signalled());
    }
}
