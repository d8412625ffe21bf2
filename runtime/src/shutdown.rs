//! Shutdown coordination: who asked the server to stop (a signal or a fatal
//! startup failure), and the SIGTERM/SIGINT listener.
//!
//! `docker stop` sends SIGTERM and, after its own grace period, SIGKILL; the
//! server must stop accepting at once and drain in-flight requests inside
//! `--shutdown-timeout`. A second signal abandons the drain, for an operator
//! at a terminal pressing Ctrl-C twice.

use std::sync::Arc;

use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{Notify, watch},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// An operator or orchestrator asked us to stop: a clean exit (code 0).
    Signal(&'static str),
    /// The server cannot become ready: exit non-zero so the container fails.
    Fatal(String),
}

/// Cloneable handle: any task can trigger shutdown, any task can wait for it.
/// The first trigger wins; later ones are ignored.
#[derive(Clone)]
pub struct Shutdown {
    reason: Arc<watch::Sender<Option<Reason>>>,
    force: Arc<Notify>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            reason: Arc::new(watch::Sender::new(None)),
            force: Arc::new(Notify::new()),
        }
    }
}

impl Shutdown {
    pub fn trigger(&self, reason: Reason) {
        self.reason.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Resolves once shutdown has been triggered, with the first reason.
    pub async fn triggered(&self) -> Reason {
        let mut rx = self.reason.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail with a
        // closed channel; the fallback only exists to avoid an unwrap.
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason
                .clone()
                .unwrap_or(Reason::Fatal("shutdown channel lost its reason".into())),
            Err(_) => Reason::Fatal("shutdown channel closed".into()),
        }
    }

    /// The reason, if shutdown has been triggered.
    pub fn reason(&self) -> Option<Reason> {
        self.reason.borrow().clone()
    }

    /// Asks the drain to stop waiting for in-flight requests.
    pub fn force(&self) {
        self.force.notify_one();
    }

    /// Resolves after [`Shutdown::force`]; a force that happened before the
    /// call is not lost (`Notify` keeps the permit).
    pub async fn forced(&self) {
        self.force.notified().await;
    }
}

/// SIGTERM and SIGINT handlers, installed before the port is bound so that a
/// signal arriving during startup is handled rather than killing the process
/// with the default action (which would not exit 0).
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }

    /// First signal: graceful shutdown. Second signal: force.
    pub async fn watch(mut self, shutdown: Shutdown) {
        let name = self.next().await;
        tracing::info!("received {name}: no longer accepting connections, draining");
        shutdown.trigger(Reason::Signal(name));
        let name = self.next().await;
        tracing::warn!("received {name} again: abandoning in-flight requests");
        shutdown.force();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_reason_wins() {
        let s = Shutdown::default();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.triggered().await }
        });
        s.trigger(Reason::Signal("SIGTERM"));
        s.trigger(Reason::Fatal("late".into()));
        assert_eq!(waiter.await.ok(), Some(Reason::Signal("SIGTERM")));
        assert_eq!(s.triggered().await, Reason::Signal("SIGTERM"));
    }

    #[tokio::test]
    async fn force_before_wait_is_remembered() {
        let s = Shutdown::default();
        s.force();
        tokio::time::timeout(std::time::Duration::from_secs(1), s.forced())
            .await
            .expect("force permit kept");
    }
}
