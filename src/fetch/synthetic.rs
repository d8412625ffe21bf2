//! TEMPORARY compile shim; replaced by the real generator.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSpec {
    pub arch: Arch,
    #[serde(default)]
    pub seed: u64,
}
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
}
impl Arch {
    pub fn as_str(&self) -> &'static str {
        "llama"
    }
}
#[derive(Debug, thiserror::Error)]
#[error("shim")]
pub struct SyntheticError;
impl SyntheticSpec {
    pub fn validate(&self) -> Result<(), SyntheticError> {
        Ok(())
    }
    pub fn digest(&self) -> String {
        "0".repeat(64)
    }
}
pub fn generate(_: &SyntheticSpec, _: &std::path::Path) -> Result<(), SyntheticError> {
    Err(SyntheticError)
}
