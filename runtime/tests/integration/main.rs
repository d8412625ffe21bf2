//! The server's integration tests: one binary (one link of candle and the server in CI) with a
//! module per topic, as ripgrep and uv lay theirs out. nextest runs every test in its own process.

#[path = "../common/mod.rs"]
mod common;

mod batching;
mod build_info;
mod completions;
mod gguf;
mod gguf_tokenizer;
mod grammar;
mod healthcheck;
mod http_api;
mod kv_pool;
mod lifecycle;
mod metrics;
mod numerics;
mod openai_client;
mod serving;
mod structured_output;
mod tool_calls;
