//! `config.json` and `generation_config.json`: the hyperparameters and
//! generation defaults, with the per-architecture keys that candle's and
//! transformers' config loaders require, so the checkpoint loads like a real one.

use serde_json::{Value, json};

use super::{Arch, BOS_TOKEN_ID, EOS_TOKEN_IDS, SyntheticSpec};

pub(super) fn config_json(spec: &SyntheticSpec) -> Value {
    let mut config = json!({
        "architectures": [spec.arch.architecture()],
        "model_type": spec.arch.as_str(),
        "attention_dropout": 0.0,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_IDS,
        "head_dim": spec.head_dim(),
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_key_value_heads": spec.num_key_value_heads,
        "rope_theta": 10000.0,
        "tie_word_embeddings": spec.arch.tie_word_embeddings(),
        "torch_dtype": spec.dtype.torch_dtype(),
        "use_cache": true,
        "vocab_size": spec.vocab_size(),
    });
    let extra = match spec.arch {
        Arch::Llama => json!({
            "attention_bias": false,
            "mlp_bias": false,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-5,
            "rope_scaling": null,
        }),
        // candle's Qwen2 config requires these keys (as numbers); a window as
        // long as the context disables sliding attention in practice too.
        Arch::Qwen2 => json!({
            "max_window_layers": spec.num_hidden_layers,
            "rms_norm_eps": 1e-6,
            "sliding_window": spec.max_position_embeddings,
            "use_sliding_window": false,
        }),
        Arch::Mistral => json!({
            "rms_norm_eps": 1e-5,
            "sliding_window": spec.max_position_embeddings,
        }),
    };
    if let (Value::Object(config), Value::Object(extra)) = (&mut config, extra) {
        config.extend(extra);
    }
    config
}

pub(super) fn generation_config_json() -> Value {
    json!({
        "bos_token_id": BOS_TOKEN_ID,
        "do_sample": false,
        "eos_token_id": EOS_TOKEN_IDS,
    })
}
