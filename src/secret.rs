//! Defines `Secret`, the wrapper for every credential the builder handles (the Hub token, the
//! signing key's password): it prints as `****` wherever it ends up, so a token or password
//! cannot leak through a log line, an error message or a `{:?}`.

use std::fmt;

/// A credential. `Debug` and `Display` never show it; only [`Secret::expose`] does, and its
/// callers are the code that sets the `Authorization` header and the key derivation.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hf_abcdef");
        assert_eq!(format!("{s} {s:?}"), "**** Secret(****)");
    }
}
