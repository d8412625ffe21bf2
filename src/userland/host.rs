//! TEMPORARY compile shim; replaced by the real resolver.
use std::path::PathBuf;
pub struct HostResolver;
impl HostResolver { pub fn new(_: impl Into<PathBuf>) -> Self { Self } pub fn resolve(&self, _: &[PathBuf]) -> Result<Closure, UserlandError> { Err(UserlandError) } }
pub struct Closure { pub entries: Vec<ClosureEntry>, pub skipped: Vec<SkippedLibrary> }
pub enum ClosureEntry { File { path: String, host_path: PathBuf, size: u64, mode: u32, package: Option<PackageRef> }, Symlink { path: String, target: String }, Dir { path: String } }
pub struct PackageRef { pub name: String, pub version: String, pub arch: String }
pub struct SkippedLibrary { pub soname: String }
#[derive(Debug, thiserror::Error)] #[error("shim")] pub struct UserlandError;
