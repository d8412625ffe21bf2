//! Small helpers every layer uses (the API, the scheduler, startup), kept in a module that
//! depends on none of them so the `api → scheduler → engine` arrows stay one-way.

use std::error::Error;
use std::time::{SystemTime, UNIX_EPOCH};

/// `error: cause: root cause`, the way `anyhow` would print it; this module
/// stays on typed errors, so it formats the chain itself.
pub fn chain(error: &dyn Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Seconds since the epoch, for OpenAI's `created` fields.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
