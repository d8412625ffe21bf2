//! Defines how stages report progress without printing: they call these traits, and the binary
//! decides how (or whether) to draw them.

/// Log lines for the user: commands never print themselves (the binary decides where they
/// go). Here, beside [`Progress`], so every command can take one without depending on another.
pub trait BuildLog {
    fn step(&self, message: &str);
}

/// A source of progress tasks, one per long step.
pub trait Progress: Sync {
    /// Starts a step that will process about `total_bytes`.
    fn task(&self, label: &str, total_bytes: u64) -> Box<dyn ProgressTask + '_>;
}

/// `Sync`: layers are written by several threads at once, each advancing the same task.
pub trait ProgressTask: Sync {
    fn advance(&self, bytes: u64);
    fn finish(&self) {}
}

/// Reports nothing: for tests, `--quiet`, and non-terminal stderr.
pub struct Silent;

impl Progress for Silent {
    fn task(&self, _label: &str, _total_bytes: u64) -> Box<dyn ProgressTask + '_> {
        Box::new(Silent)
    }
}

impl ProgressTask for Silent {
    fn advance(&self, _bytes: u64) {}
}
