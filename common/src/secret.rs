//! Defines `Secret`, the wrapper for every credential the binaries handle (the Hub token, the
//! signing key's password, the registry password, the server's API key): it prints as `****`
//! wherever it ends up, so a credential cannot leak through a log line, an error or a `{:?}`.

use std::fmt;
use std::str::FromStr;

/// A credential. `Debug` and `Display` never show it; only [`Secret::expose`] does, the single
/// greppable place where the plaintext is read.
///
/// There is deliberately no `PartialEq`: comparing a credential to what a client sent must be
/// constant-time, which `==` on the string is not.
#[derive(Clone)]
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
        f.write_str("****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// For command-line flags. Only a blank value is rejected, because clap echoes a rejected value
/// in its error message; a blank one is safe to echo.
impl FromStr for Secret {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            Err("a secret must not be empty")
        } else {
            Ok(Self(s.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hf_abcdef");
        assert_eq!(format!("{s}"), "****");
        assert_eq!(format!("{s:?}"), "****");
        assert_eq!(format!("{:?}", Some(s)), "Some(****)");
    }

    #[test]
    fn blank_secret_is_rejected() {
        assert!("".parse::<Secret>().is_err());
        assert!("  ".parse::<Secret>().is_err());
        assert_eq!(
            "k".parse::<Secret>().map(|s| s.expose().to_owned()),
            Ok("k".to_owned())
        );
    }
}
