//! Next-token selection from logits: penalties (presence, frequency,
//! repetition), then greedy or temperature / top-k / top-p sampling with a
//! seeded RNG so that a request with a `seed` is repeatable.
//!
//! Greedy (`temperature == 0`) breaks ties towards the lowest id, like
//! `torch.argmax`, which is what the reference fixtures were produced with.
//! Penalties apply before the greedy pick too, as in vLLM.
//!
//! Penalty semantics follow the APIs users know: `presence_penalty` and
//! `frequency_penalty` are OpenAI's (subtracted, over the *generated* tokens
//! only); `repetition_penalty` is Hugging Face's (over prompt *and*
//! generated tokens: positive logits are divided by it, negative ones
//! multiplied), applied first, as vLLM orders them.
//!
//! Log-probabilities ([`logprobs`]) are those of the model's raw
//! distribution — the softmax of the logits before penalties, temperature,
//! top-k/top-p or a grammar mask — which is what vLLM returns by default
//! (`logprobs_mode = raw_logprobs`) and what makes them comparable across
//! sampling settings.
//!
//! Not implemented (the API refuses them explicitly): `min_p`,
//! `logit_bias`. `stop` strings are text, not ids: see `engine/text.rs`.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
};

use rand_chacha::{
    ChaCha8Rng,
    rand_core::{RngCore, SeedableRng},
};

/// Per-request sampling settings, already validated by the API layer and
/// completed with the checkpoint's `generation_config.json` defaults.
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
    /// OpenAI: subtracted once from every id already generated (0: off).
    pub presence_penalty: f32,
    /// OpenAI: subtracted once per occurrence in the generated ids (0: off).
    pub frequency_penalty: f32,
    /// Hugging Face: applied to every id in prompt or output (1: off).
    pub repetition_penalty: f32,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: 1.0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == Some(1)
    }

    fn has_penalties(&self) -> bool {
        self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || self.repetition_penalty != 1.0
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::greedy()
    }
}

/// Sampling state of one sequence: the RNG, which advances per token, and
/// the token history the penalties look at.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Occurrences of each generated id (presence/frequency penalties).
    generated: HashMap<u32, u32>,
    /// Ids seen in the prompt (repetition penalty); empty when it is off.
    prompt: Vec<u32>,
}

impl Sampler {
    /// A sampler for a sequence starting with `prompt`.
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let seed = params
            .seed
            .unwrap_or_else(|| RandomState::new().hash_one(std::time::Instant::now()));
        let prompt = if params.repetition_penalty != 1.0 {
            let mut ids = prompt.to_vec();
            ids.sort_unstable();
            ids.dedup();
            ids
        } else {
            Vec::new()
        };
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            params,
            generated: HashMap::new(),
            prompt,
        }
    }

    /// Records a generated id, for the penalties of later steps.
    pub fn accept(&mut self, token: u32) {
        if self.params.has_penalties() {
            *self.generated.entry(token).or_default() += 1;
        }
    }

    /// Picks the next token id from `logits` (one f32 per vocabulary id).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.has_penalties() {
            let mut logits = logits.to_vec();
            apply_penalties(&mut logits, &self.params, &self.prompt, &self.generated);
            self.pick(&logits)
        } else {
            self.pick(logits)
        }
    }

    fn pick(&mut self, logits: &[f32]) -> u32 {
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
        // Nothing sorts the whole vocabulary (10^5 ids: milliseconds per token): top-k selects
        // its k (linear) and sorts those; top-p sorts only the nucleus (see `nucleus`); plain
        // temperature sampling draws in id order. The order is total (descending logit, ties
        // to the lower id), so results never depend on a sort's stability.
        if let Some(k) = self.params.top_k.filter(|&k| k > 0 && k < candidates.len()) {
            candidates.select_nth_unstable_by(k - 1, by_logit);
            candidates.truncate(k);
            candidates.sort_unstable_by(by_logit);
        }
        let max = candidates.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1));
        let weight = |logit: f32| (logit - max).exp();
        if self.params.top_p < 1.0 {
            let total: f32 = candidates.iter().map(|c| weight(c.1)).sum();
            let keep = nucleus(&mut candidates, |l| weight(l) / total, self.params.top_p);
            candidates.truncate(keep);
        }
        let total: f32 = candidates.iter().map(|c| weight(c.1)).sum();
        let mut draw = self.uniform() * total;
        for &(id, logit) in &candidates {
            let w = weight(logit);
            if draw < w {
                return id;
            }
            draw -= w;
        }
        candidates[candidates.len() - 1].0
    }

    /// Uniform in `[0, 1)` with 24 bits of precision (exact in f32).
    fn uniform(&mut self) -> f32 {
        (self.rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }
}

/// Descending by logit, ties to the lower id: a total order.
fn by_logit(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Sorts the smallest head of `candidates` (in [`by_logit`] order) whose probability mass
/// reaches `top_p`, and returns its length. The head is selected (linear) before it is sorted,
/// starting at 64 ids and growing 4x until it holds the nucleus: a nucleus is usually tens of
/// tokens of a vocabulary of 10^5, and the result is the same as sorting everything.
fn nucleus(candidates: &mut [(u32, f32)], prob: impl Fn(f32) -> f32, top_p: f32) -> usize {
    let mut k = candidates.len().min(64);
    loop {
        if k < candidates.len() {
            candidates.select_nth_unstable_by(k - 1, by_logit);
        }
        candidates[..k].sort_unstable_by(by_logit);
        let mut mass = 0.0;
        for (i, c) in candidates[..k].iter().enumerate() {
            mass += prob(c.1);
            if mass >= top_p {
                return i + 1;
            }
        }
        if k == candidates.len() {
            return k;
        }
        k = (k * 4).min(candidates.len());
    }
}

/// vLLM's order: the repetition penalty over prompt and output ids, then
/// frequency and presence penalties over output ids. `prompt` is sorted
/// and deduplicated.
fn apply_penalties(
    logits: &mut [f32],
    params: &SamplingParams,
    prompt: &[u32],
    generated: &HashMap<u32, u32>,
) {
    let rep = params.repetition_penalty;
    if rep != 1.0 {
        let seen = prompt.iter().chain(
            generated
                .keys()
                .filter(|id| prompt.binary_search(id).is_err()),
        );
        for &id in seen {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 { *l / rep } else { *l * rep };
            }
        }
    }
    for (&id, &count) in generated {
        if let Some(l) = logits.get_mut(id as usize) {
            *l -= params.frequency_penalty * count as f32 + params.presence_penalty;
        }
    }
}

/// The log-probability of a sampled token and of the most likely ids.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// The `n` most likely ids, most likely first (ties to the lower id).
    pub top: Vec<(u32, f32)>,
}

/// Log-softmax of `logits` at `token`, and the `top` most likely ids. The
/// normaliser is summed in f64 so that a vocabulary of 10^5 ids loses no
/// precision; only `top` ids are selected and sorted (linear, not a sort
/// of the vocabulary).
pub fn logprobs(logits: &[f32], token: u32, top: usize) -> TokenLogprobs {
    let max = logits
        .iter()
        .copied()
        .filter(|l| l.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .iter()
        .filter(|l| l.is_finite())
        .map(|&l| f64::from(l - max).exp())
        .sum();
    let log_z = f64::from(max) + sum.ln();
    let logprob = |l: f32| (f64::from(l) - log_z) as f32;
    let mut best = Vec::new();
    if top > 0 {
        let mut all: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, if l.is_nan() { f32::NEG_INFINITY } else { l }))
            .collect();
        let k = top.min(all.len());
        if k < all.len() {
            all.select_nth_unstable_by(k - 1, by_logit);
            all.truncate(k);
        }
        all.sort_unstable_by(by_logit);
        best = all.into_iter().map(|(id, l)| (id, logprob(l))).collect();
    }
    TokenLogprobs {
        token,
        logprob: logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&l| logprob(l)),
        top: best,
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

    fn params(temperature: f32, top_k: Option<usize>, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed: Some(seed),
            ..SamplingParams::greedy()
        }
    }

    #[test]
    fn logprobs_are_the_log_softmax_with_a_sorted_top() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, f32::NEG_INFINITY];
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        let lp = logprobs(&logits, 2, 3);
        assert_eq!(lp.token, 2);
        assert!((f64::from(lp.logprob) - (2.0 - z.ln())).abs() < 1e-6);
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 2], "descending, ties to the lower id");
        assert_eq!(lp.top[0].1, lp.top[1].1);
        let total: f64 = (0..5)
            .map(|i| f64::from(logprobs(&logits, i, 0).logprob).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        assert_eq!(logprobs(&logits, 4, 0).logprob, f32::NEG_INFINITY);
        assert!(logprobs(&logits, 0, 0).top.is_empty());
        assert_eq!(
            logprobs(&logits, 0, 20).top.len(),
            5,
            "at most the vocabulary"
        );
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplingParams::greedy(), &[]);
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn seeded_sampling_is_repeatable_and_respects_top_k() {
        let params = params(1.0, Some(2), 1.0, 7);
        let logits = [1.0, 1.1, 0.9, 5.0, 4.9];
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone(), &[]);
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = draw(&params);
        assert_eq!(a, draw(&params));
        assert!(a.iter().all(|&t| t == 3 || t == 4), "{a:?}");
        assert!(a.contains(&3) && a.contains(&4));
    }

    /// 100 ids share 90% of the mass, so the nucleus for top_p 0.85 (95 ids) lies beyond the
    /// first 64-id head and needs the head to grow. Every draw falls in it, ids from beyond the
    /// first 64 come up, and nothing outside it does.
    #[test]
    fn top_p_draws_only_from_the_nucleus_even_past_the_first_head() {
        let vocab = 20_000;
        // 100 ids at logit 10 hold ~90% of the mass against the rest at 0.
        let mut logits = vec![0.0f32; vocab];
        let nucleus: Vec<usize> = (0..100).map(|i| i * 150 + 7).collect();
        let rest = (vocab - 100) as f32;
        let high = ((0.9 / 0.1) * rest / 100.0).ln();
        for &id in &nucleus {
            logits[id] = high;
        }
        let mut s = Sampler::new(params(1.0, None, 0.85, 3), &[]);
        let drawn: Vec<u32> = (0..400).map(|_| s.sample(&logits)).collect();
        assert!(
            drawn.iter().all(|&t| nucleus.contains(&(t as usize))),
            "{drawn:?}"
        );
        // Ties break to the lower id, so the nucleus is the 95 lowest of the 100.
        assert!(drawn.iter().any(|&t| t as usize > nucleus[63]));
        assert!(!drawn.iter().any(|&t| t as usize > nucleus[94]));
    }

    /// Plain temperature sampling (no top-k, top-p 1) draws in proportion to the softmax.
    #[test]
    fn plain_sampling_follows_the_softmax() {
        let logits = [0.0f32, 3f32.ln(), f32::NEG_INFINITY, -100.0];
        let mut s = Sampler::new(params(1.0, None, 1.0, 11), &[]);
        let n = 8000;
        let ones = (0..n).filter(|_| s.sample(&logits) == 1).count();
        let share = ones as f64 / n as f64;
        assert!(
            (0.72..0.78).contains(&share),
            "id 1 drawn {share} of the time, not ~0.75"
        );
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let mut s = Sampler::new(params(1.0, None, 0.01, 1), &[]);
        for _ in 0..16 {
            assert_eq!(s.sample(&[0.0, 2.0, 1.0]), 1);
        }
    }

    fn penalized(
        p: &SamplingParams,
        prompt: &[u32],
        generated: &[u32],
        logits: &[f32],
    ) -> Vec<f32> {
        let mut s = Sampler::new(p.clone(), prompt);
        generated.iter().for_each(|&t| s.accept(t));
        let mut out = logits.to_vec();
        apply_penalties(&mut out, &s.params, &s.prompt, &s.generated);
        out
    }

    #[test]
    fn presence_and_frequency_penalties_follow_openai() {
        // OpenAI: mu[j] - c[j] * alpha_frequency - (c[j] > 0) * alpha_presence,
        // over generated ids only (the prompt id 0 is not penalized).
        let p = SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..SamplingParams::greedy()
        };
        let out = penalized(&p, &[0], &[1, 2, 2, 2], &[1.0, 1.0, 1.0, 1.0]);
        // id 1: 1 - 0.25 - 0.5 = 0.25; id 2: 1 - 0.75 - 0.5 = -0.25.
        assert_eq!(out, [1.0, 0.25, -0.25, 1.0]);
    }

    #[test]
    fn repetition_penalty_follows_hugging_face() {
        // Prompt and output ids alike: positive logits / 2, negative * 2.
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let out = penalized(&p, &[0, 1, 0], &[2, 2], &[3.0, -1.5, 0.5, 4.0]);
        assert_eq!(out, [1.5, -3.0, 0.25, 4.0]);
    }

    #[test]
    fn repetition_then_frequency_as_vllm_orders_them() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            frequency_penalty: 1.0,
            ..SamplingParams::greedy()
        };
        // id 1: 3.0 / 2 - 1 * 1.0 = 0.5.
        let out = penalized(&p, &[], &[1], &[0.0, 3.0]);
        assert_eq!(out, [0.0, 0.5]);
    }

    #[test]
    fn greedy_picks_after_penalties() {
        let p = SamplingParams {
            presence_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(p, &[]);
        let logits = [1.0, 2.0];
        assert_eq!(s.sample(&logits), 1);
        s.accept(1);
        // 2.0 - 2.0 = 0.0 < 1.0: the repeated id loses.
        assert_eq!(s.sample(&logits), 0);
    }
}
