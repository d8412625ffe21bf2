//! Rotary position embedding tables, including the long-context frequency
//! adjustments ([`RopeScaling`]) the supported checkpoints use.
//!
//! Tables are built once per model for `max_positions` positions, in f32 as
//! transformers does, and only then cast to the model dtype: computing the
//! angles in bf16 would drift visibly at large positions.

use candle_core::{DType, Device, Result, Tensor};

use super::config::RopeScaling;

/// Precomputed `cos`/`sin` of shape `(max_positions, head_dim / 2)`.
#[derive(Debug, Clone)]
pub struct RopeTables {
    cos: Tensor,
    sin: Tensor,
}

impl RopeTables {
    pub fn new(
        head_dim: usize,
        theta: f64,
        scaling: RopeScaling,
        max_positions: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let inv_freq = inv_freq(head_dim, theta, scaling);
        let half = inv_freq.len();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let positions = Tensor::arange(0u32, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?;
        let angles = positions.matmul(&inv_freq)?;
        Ok(Self {
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
        })
    }

    /// `cos` and `sin` rows `(tokens, head_dim / 2)` for each token's
    /// position, for `candle_nn::rotary_emb::rope_thd` (the "rotate half"
    /// convention of Hugging Face Llama checkpoints, not the interleaved
    /// one). Tokens of a packed batch each have their own position.
    pub fn at(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.cos.index_select(positions, 0)?,
            self.sin.index_select(positions, 0)?,
        ))
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims().first().copied().unwrap_or(0)
    }
}

/// Inverse frequencies `theta^(-2i/d)`, then scaled. f32 arithmetic mirrors
/// transformers' `_compute_default_rope_parameters`.
pub fn inv_freq(head_dim: usize, theta: f64, scaling: RopeScaling) -> Vec<f32> {
    let base = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0 / (theta as f32).powf(i as f32 / head_dim as f32));
    match scaling {
        RopeScaling::None => base.collect(),
        RopeScaling::Linear { factor } => base.map(|f| f / factor as f32).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let (factor, low, high) = (
                factor as f32,
                low_freq_factor as f32,
                high_freq_factor as f32,
            );
            let old_len = original_max_position_embeddings as f32;
            let low_freq_wavelen = old_len / low;
            let high_freq_wavelen = old_len / high;
            base.map(|freq| {
                let wavelen = 2.0 * std::f32::consts::PI / freq;
                if wavelen < high_freq_wavelen {
                    freq
                } else if wavelen > low_freq_wavelen {
                    freq / factor
                } else {
                    let smooth = (old_len / wavelen - low) / (high - low);
                    (1.0 - smooth) * freq / factor + smooth * freq
                }
            })
            .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let plain = inv_freq(128, 500_000.0, RopeScaling::None);
        let scaled = inv_freq(
            128,
            500_000.0,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            },
        );
        assert_eq!(plain.len(), 64);
        assert_eq!(plain[0], scaled[0], "highest frequency untouched");
        let last = plain.len() - 1;
        assert!((plain[last] / 8.0 - scaled[last]).abs() < 1e-12);
    }

    #[test]
    fn position_zero_is_the_identity() -> Result<()> {
        let t = RopeTables::new(4, 10_000.0, RopeScaling::None, 8, DType::F32, &Device::Cpu)?;
        let x = Tensor::arange(0f32, 8.0, &Device::Cpu)?.reshape((1, 2, 1, 4))?;
        let (cos, sin) = t.at(&Tensor::new(&[0u32, 1], &Device::Cpu)?)?;
        let y = candle_nn::rotary_emb::rope_thd(&x, &cos, &sin)?;
        let first: Vec<f32> = y.narrow(1, 0, 1)?.flatten_all()?.to_vec1()?;
        assert_eq!(first, [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(t.max_positions(), 8);
        Ok(())
    }
}
