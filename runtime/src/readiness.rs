//! The server's readiness lifecycle, shared between the loader that moves it
//! forward and the `/ready` handler that reports it.
//!
//! `/health` answers "the process is serving"; `/ready` answers "send me
//! traffic". Today the loader only inventories the weights before declaring
//! ready; the inference engine will add loading them onto the device and a
//! one-token warm-up generation before the `Ready` transition, so that the
//! first real request never pays for compilation or allocation.

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
