//! Process shutdown: SIGINT/SIGTERM (or a role that failed) fan out to every task through one
//! watch channel.

use std::sync::Arc;

use tokio::sync::watch;

/// A handle tasks clone to learn that the process is stopping.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    tx: Arc<watch::Sender<bool>>,
}

impl Shutdown {
    /// Resolves once shutdown has begun.
    pub async fn wait(mut self) {
        let _ = self.rx.wait_for(|stopping| *stopping).await;
    }

    /// Begin shutdown from inside the process (one role failed: stop the others too).
    pub fn begin(&self) {
        let _ = self.tx.send(true);
    }
}

/// Start listening for SIGINT/SIGTERM; returns the handle tasks wait on.
pub fn on_signals() -> Shutdown {
    let (tx, rx) = watch::channel(false);
    let tx = Arc::new(tx);
    let handle = Shutdown { rx, tx: tx.clone() };
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        let _ = tx.send(true);
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    handle
}
