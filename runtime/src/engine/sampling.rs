//! Next-token selection from logits: greedy, or temperature / top-k / top-p
//! sampling with a seeded RNG so that a request with a `seed` is repeatable.
//!
//! Greedy (`temperature == 0`) breaks ties towards the lowest id, like
//! `torch.argmax`, which is what the reference fixtures were produced with.
//!
//! TODO (not implemented yet; the API must reject or ignore these
//! explicitly until they land):
//! - `presence_penalty` / `frequency_penalty` (OpenAI) and
//!   `repetition_penalty` (HF; divides positive logits);
//! - `min_p`;
//! - `logit_bias` (per-id additive bias);
//! - `logprobs` / `top_logprobs` (needs log-softmax of the processed logits);
//! - applying `generation_config.json` defaults (temperature, top_p, top_k)
//!   when a request leaves them unset, as vLLM does;
//! - `stop` strings are handled by the API layer (`api/completions.rs`,
//!   which re-decodes the output after each token), not here.

use std::hash::{BuildHasher, RandomState};

use rand_chacha::{
    ChaCha8Rng,
    rand_core::{RngCore, SeedableRng},
};

/// Per-request sampling settings, already validated by the API layer.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (`None` or 0: all).
    pub top_k: Option<usize>,
    /// Nucleus sampling mass in `(0, 1]`; 1 keeps everything.
    pub top_p: f32,
    /// RNG seed; `None` draws a fresh one per request.
    pub seed: Option<u64>,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: 1.0,
            seed: None,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == Some(1)
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::greedy()
    }
}

/// Sampling state of one sequence (the RNG advances per token).
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = params
            .seed
            .unwrap_or_else(|| RandomState::new().hash_one(std::time::Instant::now()));
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            params,
        }
    }

    /// Picks the next token id from `logits` (one f32 per vocabulary id).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / self.params.temperature))
            .collect();
        if candidates.is_empty() {
            return argmax(logits);
        }
        // Descending by logit, ties to the lower id, so results do not
        // depend on the sort's stability.
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = self.params.top_k.filter(|&k| k > 0) {
            candidates.truncate(k);
        }
        let max = candidates[0].1;
        let mut probs: Vec<f32> = candidates.iter().map(|(_, l)| (l - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.params.top_p < 1.0 {
            let mut mass = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    mass += p;
                    mass >= self.params.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            let total: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let mut draw = self.uniform();
        for (i, p) in probs.iter().enumerate() {
            if draw < *p {
                return candidates[i].0;
            }
            draw -= p;
        }
        candidates[probs.len() - 1].0
    }

    /// Uniform in `[0, 1)` with 24 bits of precision (exact in f32).
    fn uniform(&mut self) -> f32 {
        (self.rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }
}

/// Index of the largest logit; the first one on ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn seeded_sampling_is_repeatable_and_respects_top_k() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: Some(2),
            top_p: 1.0,
            seed: Some(7),
        };
        let logits = [1.0, 1.1, 0.9, 5.0, 4.9];
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = draw(&params);
        assert_eq!(a, draw(&params));
        assert!(a.iter().all(|&t| t == 3 || t == 4), "{a:?}");
        assert!(a.contains(&3) && a.contains(&4));
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: None,
            top_p: 0.01,
            seed: Some(1),
        };
        let mut s = Sampler::new(params);
        for _ in 0..16 {
            assert_eq!(s.sample(&[0.0, 2.0, 1.0]), 1);
        }
    }
}
