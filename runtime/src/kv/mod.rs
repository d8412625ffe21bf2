//! The paged KV cache: a pool of fixed-size blocks allocated once at start
//! ([`cache::KvCache`]), the bookkeeping of which block holds what
//! ([`pool::BlockPool`], with prefix caching), and how big the pool is.
//!
//! Sizing follows vLLM's `--kv-cache-memory` (bytes). Without it the pool
//! takes the smallest of: 4 GiB (vLLM's CPU default), half of what the
//! memory limit leaves after the weights (the cgroup limit inside a
//! container, else the machine's memory), and what `--max-num-seqs`
//! sequences of `--max-model-len` tokens could ever use.

pub mod cache;
pub mod pool;

use std::{fmt, fs, str::FromStr};

pub use cache::KvCache;
pub use pool::{BlockHash, BlockId, BlockPool, PrefixStats};

/// vLLM's default block size, in tokens.
pub const DEFAULT_BLOCK_SIZE: usize = 16;
/// Upper bound of the default pool (vLLM's CPU default).
pub const DEFAULT_MAX_POOL: u64 = 4 << 30;

/// A byte count written as `4GiB`, `512MiB`, `1g`, `100000000`: binary
/// units (`KiB`, `MiB`, `GiB`, `TiB` and Docker's `k`, `m`, `g`, `t`) or
/// decimal ones (`KB`, `MB`, `GB`, `TB`), case-insensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (e.g. 4GiB, 512MiB, 1000000)"))?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {s:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
                ));
            }
        };
        let bytes = value * scale as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(format!("{s:?} is out of range"));
        }
        Ok(Self(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        if self.0 >= 1 << 30 {
            write!(f, "{:.2} GiB", b / (1u64 << 30) as f64)
        } else if self.0 >= 1 << 20 {
            write!(f, "{:.1} MiB", b / (1u64 << 20) as f64)
        } else {
            write!(f, "{} B", self.0)
        }
    }
}

/// Bytes of K and V for one token across all layers.
pub fn bytes_per_token(layers: usize, kv_heads: usize, head_dim: usize, dtype_size: usize) -> u64 {
    2 * (layers * kv_heads * head_dim * dtype_size) as u64
}

/// Where the default pool size came from (for the startup log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSource {
    Flag,
    DefaultCap,
    MemoryLimit,
    MaxSequences,
}

/// The memory this process may use: the cgroup limit (v2 `memory.max`,
/// v1 `memory.limit_in_bytes`) if one is set, else the machine's memory.
pub fn memory_limit() -> Option<u64> {
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| fs::read_to_string(p).ok())
    .filter_map(|s| s.trim().parse::<u64>().ok())
    // v1 reports "no limit" as a huge page-rounded number.
    .find(|&v| v < 1 << 60);
    cgroup.or_else(|| {
        let info = fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    })
}

/// Inputs of the default pool size.
#[derive(Debug, Clone, Copy)]
pub struct Sizing {
    pub requested: Option<u64>,
    pub memory_limit: Option<u64>,
    pub weight_bytes: u64,
    pub bytes_per_token: u64,
    pub block_size: usize,
    pub max_num_seqs: usize,
    pub max_model_len: usize,
}

/// Number of blocks and why: `--kv-cache-memory` if given, else the
/// smallest of the caps in the module doc. At least one block.
pub fn num_blocks(s: &Sizing) -> (usize, SizeSource) {
    let per_block = (s.bytes_per_token * s.block_size as u64).max(1);
    let (bytes, source) = match s.requested {
        Some(b) => (b, SizeSource::Flag),
        None => {
            let seqs_tokens = (s.max_num_seqs as u64)
                .saturating_mul(s.max_model_len.div_ceil(s.block_size) as u64)
                .saturating_mul(per_block);
            let mut best = (DEFAULT_MAX_POOL, SizeSource::DefaultCap);
            if let Some(limit) = s.memory_limit {
                let half = limit.saturating_sub(s.weight_bytes) / 2;
                if half < best.0 {
                    best = (half, SizeSource::MemoryLimit);
                }
            }
            if seqs_tokens < best.0 {
                best = (seqs_tokens, SizeSource::MaxSequences);
            }
            best
        }
    };
    (((bytes / per_block) as usize).max(1), source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        let p = |s: &str| s.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(p("4GiB"), Ok(4 << 30));
        assert_eq!(p("512MiB"), Ok(512 << 20));
        assert_eq!(p("1g"), Ok(1 << 30));
        assert_eq!(p("1.5 GiB"), Ok(3 << 29));
        assert_eq!(p("2GB"), Ok(2_000_000_000));
        assert_eq!(p("123456"), Ok(123_456));
        assert!(p("12 parsecs").unwrap_err().contains("parsecs"));
        assert!(p("GiB").is_err());
        assert!(p("-1GiB").is_err());
    }

    #[test]
    fn default_pool_takes_the_smallest_cap() {
        let base = Sizing {
            requested: None,
            memory_limit: Some(64 << 30),
            weight_bytes: 1 << 30,
            bytes_per_token: 1 << 10,
            block_size: 16,
            max_num_seqs: 1 << 20,
            max_model_len: 1 << 20,
        };
        let per_block = 16 << 10;
        assert_eq!(
            num_blocks(&base),
            ((4 << 30) / per_block, SizeSource::DefaultCap)
        );
        let small_box = Sizing {
            memory_limit: Some(3 << 30),
            ..base
        };
        assert_eq!(
            num_blocks(&small_box),
            ((1 << 30) / per_block, SizeSource::MemoryLimit)
        );
        let few = Sizing {
            max_num_seqs: 2,
            max_model_len: 100,
            ..base
        };
        assert_eq!(num_blocks(&few), (2 * 7, SizeSource::MaxSequences));
        let flag = Sizing {
            requested: Some(1 << 20),
            ..base
        };
        assert_eq!(num_blocks(&flag), (64, SizeSource::Flag));
        let tiny = Sizing {
            requested: Some(1),
            ..base
        };
        assert_eq!(num_blocks(&tiny).0, 1, "never zero blocks");
    }
}
