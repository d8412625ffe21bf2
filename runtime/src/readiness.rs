//! The server's readiness lifecycle, shared between the loader that moves it
//! forward and the `/ready` handler that reports it.
//!
//! `/health` answers "the process is serving"; `/ready` answers "send me
//! traffic". The loader (`serve::load`) inventories the weights, loads the
//! engine onto the device and runs a one-token warm-up generation before
//! the `Ready` transition, so that the first real request never pays for
//! first-touch page faults, allocation or kernel loading; a failure at any
//! step is `Failed` and the process exits 1.

use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Loading,
    Ready,
    /// Shutdown has begun; load balancers should stop routing here.
    ShuttingDown,
    /// Loading failed; the process is about to exit non-zero.
    Failed(String),
}

/// Write side, held by the loader and the shutdown path.
#[derive(Debug, Clone)]
pub struct ReadinessTx(watch::Sender<Readiness>);

/// Read side, held by the HTTP layer.
#[derive(Debug, Clone)]
pub struct ReadinessRx(watch::Receiver<Readiness>);

pub fn channel() -> (ReadinessTx, ReadinessRx) {
    let (tx, rx) = watch::channel(Readiness::Loading);
    (ReadinessTx(tx), ReadinessRx(rx))
}

impl ReadinessTx {
    /// Moves to `next`, except that `ShuttingDown` and `Failed` are final: a
    /// loader finishing during shutdown must not flip `/ready` back to 200.
    pub fn set(&self, next: Readiness) {
        self.0.send_if_modified(|current| {
            let terminal = matches!(current, Readiness::ShuttingDown | Readiness::Failed(_));
            if terminal || *current == next {
                false
            } else {
                *current = next;
                true
            }
        });
    }
}

impl ReadinessRx {
    pub fn get(&self) -> Readiness {
        self.0.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_stick() {
        let (tx, rx) = channel();
        assert_eq!(rx.get(), Readiness::Loading);
        tx.set(Readiness::Ready);
        assert_eq!(rx.get(), Readiness::Ready);
        tx.set(Readiness::ShuttingDown);
        tx.set(Readiness::Ready);
        assert_eq!(rx.get(), Readiness::ShuttingDown);
    }
}
