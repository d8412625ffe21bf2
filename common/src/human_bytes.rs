//! Defines `HumanBytes`: byte counts for people (`1.5 GiB`), where exact counts are noise.

use std::fmt;

/// Displays with one decimal by default; a precision in the format (`{:.2}`) overrides it, which
/// the server's log uses to tell shards of nearly equal size apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanBytes(pub u64);

impl fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let bytes = self.0;
        let mut value = bytes as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{bytes} B")
        } else {
            let decimals = f.precision().unwrap_or(1);
            write!(f, "{value:.decimals$} {}", UNITS[unit])
        }
    }
}

/// `1234567890` → `"1.1 GiB"`.
pub fn human_bytes(bytes: u64) -> String {
    HumanBytes(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_decimal_by_default() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1234567890), "1.1 GiB");
        assert_eq!(human_bytes(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn precision_overrides_the_decimals() {
        let two = |b| format!("{:.2}", HumanBytes(b));
        assert_eq!(two(0), "0 B");
        assert_eq!(two(1023), "1023 B");
        assert_eq!(two(1536), "1.50 KiB");
        assert_eq!(two(3 * 1024 * 1024 * 1024), "3.00 GiB");
    }
}
