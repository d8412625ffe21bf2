//! A request's choices as one stream of events: each choice is its own sequence in the engine
//! (`n` > 1), and the handlers (whole answers and streams alike) read them merged, tagged with
//! the choice index.

use tokio::{sync::mpsc, task::JoinSet};

use crate::scheduler::{Event, Finish, Handle};

/// OpenAI's `tool_calls` when a choice ended by calling tools (a call cut
/// off by `max_tokens` stays `length`).
pub(super) fn finish_reason(finish: Finish, called: bool) -> &'static str {
    match (finish, called) {
        (Finish::Stop, true) => "tool_calls",
        _ => finish.as_str(),
    }
}

/// The events of a request's choices, merged in the order the engine sent
/// them, tagged with the choice index.
pub(super) struct Choices {
    rx: mpsc::Receiver<(usize, Event)>,
    /// One task per choice forwards its handle's events. Dropping the set
    /// aborts them and drops the handles: that is the cancellation.
    _forwarders: JoinSet<()>,
    pub n: usize,
}

impl Choices {
    pub(super) fn new(handles: Vec<(Handle, Option<Event>)>) -> Self {
        let n = handles.len();
        // Room for a few events per choice; a client that stops reading fills it, then the
        // handles' own buffers, and the engine pauses its sequences.
        let (tx, rx) = mpsc::channel(4 * n);
        let mut forwarders = JoinSet::new();
        for (i, (mut handle, early)) in handles.into_iter().enumerate() {
            let tx = tx.clone();
            forwarders.spawn(async move {
                if let Some(event) = early
                    && tx.send((i, event)).await.is_err()
                {
                    return;
                }
                while let Some(event) = handle.next().await {
                    if tx.send((i, event)).await.is_err() {
                        return;
                    }
                }
            });
        }
        Self {
            rx,
            _forwarders: forwarders,
            n,
        }
    }

    /// The next event of any choice; `None` once every handle is done.
    pub(super) async fn next(&mut self) -> Option<(usize, Event)> {
        self.rx.recv().await
    }
}
