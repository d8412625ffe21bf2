//! The input of one engine step: tokens of many sequences packed into one
//! unpadded batch, with what attention needs to keep them apart.

use crate::kernels::attention::KvShape;

/// One sequence's part of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqSlice {
    /// First row of the batch that belongs to this sequence.
    pub q_start: usize,
    /// Rows (new tokens) this step: positions `ctx_len - q_len..ctx_len`.
    pub q_len: usize,
    /// Positions cached once this step has run.
    pub ctx_len: usize,
    /// Physical KV block of each logical block.
    pub block_table: Vec<u32>,
}

impl SeqSlice {
    /// The KV slot of position `pos`.
    pub fn slot(&self, pos: usize, block_size: usize) -> u32 {
        self.block_table[pos / block_size] * block_size as u32 + (pos % block_size) as u32
    }
}

/// A packed batch: `tokens[i]` sits at `positions[i]` of its sequence and
/// writes its key and value to slot `slots[i]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    pub slots: Vec<u32>,
    pub seqs: Vec<SeqSlice>,
    /// Rows whose next-token logits are wanted (a sequence's last row when
    /// its chunk reaches the end of its known tokens), in output order.
    pub sample_rows: Vec<u32>,
    pub block_size: usize,
}

impl Batch {
    pub fn new(block_size: usize) -> Self {
        Self {
            block_size,
            ..Self::default()
        }
    }

    /// Appends a sequence's next `tokens`, which occupy positions
    /// `start..start + tokens.len()`; `sample` asks for the logits after the
    /// last of them.
    pub fn push(&mut self, tokens: &[u32], start: usize, block_table: &[u32], sample: bool) {
        let q_start = self.tokens.len();
        let seq = SeqSlice {
            q_start,
            q_len: tokens.len(),
            ctx_len: start + tokens.len(),
            block_table: block_table.to_vec(),
        };
        for (i, &t) in tokens.iter().enumerate() {
            self.tokens.push(t);
            self.positions.push((start + i) as u32);
            self.slots.push(seq.slot(start + i, self.block_size));
        }
        if sample {
            self.sample_rows.push((q_start + tokens.len() - 1) as u32);
        }
        self.seqs.push(seq);
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Checks the batch against the pool it will run on, so a scheduler
    /// bug is an error rather than a write outside a sequence's blocks.
    pub fn check(&self, shape: &KvShape, max_positions: usize) -> Result<(), String> {
        let slots = shape.num_blocks * shape.block_size;
        if self.block_size != shape.block_size {
            return Err(format!(
                "batch block size {} on a pool of {}",
                self.block_size, shape.block_size
            ));
        }
        for s in &self.seqs {
            if s.q_len == 0 || s.q_len > s.ctx_len {
                return Err(format!(
                    "sequence with {} of {} positions",
                    s.q_len, s.ctx_len
                ));
            }
            if s.ctx_len > max_positions {
                return Err(format!("position {} beyond {max_positions}", s.ctx_len));
            }
            if s.block_table.len() * shape.block_size < s.ctx_len {
                return Err(format!(
                    "{} blocks for {} positions",
                    s.block_table.len(),
                    s.ctx_len
                ));
            }
            if let Some(b) = s
                .block_table
                .iter()
                .find(|&&b| b as usize >= shape.num_blocks)
            {
                return Err(format!("block {b} outside a pool of {}", shape.num_blocks));
            }
        }
        if self.slots.iter().any(|&s| s as usize >= slots) {
            return Err("slot outside the pool".into());
        }
        Ok(())
    }
}
