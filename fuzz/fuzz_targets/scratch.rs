//! A per-process scratch file for the targets whose production entry point reads a path.

use std::path::PathBuf;

/// Writes `data` to this process's scratch file (in `$TMPDIR`) and returns its path.
pub fn write(name: &str, data: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("appliance-fuzz-{}-{name}", std::process::id()));
    std::fs::write(&path, data).expect("write the fuzz scratch file");
    path
}
