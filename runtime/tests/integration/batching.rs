//! Batch invariance of the engine core against the reference fixtures:
//! every fixture case must produce transformers' greedy ids alone, packed
//! into a batch with other different requests, with its prompt chunked by a
//! tiny token budget, after being preempted and recomputed on a tiny KV
//! pool, and with its prefix served from the prefix cache — on the CPU
//! kernels and on the candle-ops path (what runs on CUDA). After every
//! scenario, every KV block is free again.

use crate::common;

use std::{collections::HashMap, path::Path};

use appliance_server::{
    cli,
    engine::{Engine, FinishReason, GenerateRequest, LoadOptions, SamplingParams},
    scheduler::{
        core::{Core, CoreConfig},
        planner::{PlannerConfig, SeqId},
    },
};
use common::{Case, fixture_checkpoints, fixture_reference};

fn load(dir: &Path, candle_ops: bool) -> Engine {
    let options = LoadOptions {
        device: cli::Device::Cpu,
        dtype: cli::DType::F32,
        max_model_len: None,
        candle_ops,
        threads: None,
    };
    Engine::load(dir, options).unwrap_or_else(|e| panic!("load {}: {e:?}", dir.display()))
}

fn config(blocks: usize, budget: usize, caching: bool) -> CoreConfig {
    CoreConfig {
        planner: PlannerConfig {
            max_num_seqs: 64,
            max_num_batched_tokens: budget,
            block_size: 16,
        },
        num_blocks: blocks,
        prefix_caching: caching,
    }
}

fn greedy(prompt: &[u32], max_new_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.to_vec(),
        max_new_tokens,
        sampling: SamplingParams::greedy(),
        ignore_eos: false,
        ..Default::default()
    }
}

/// Requests unlike the fixture cases: other lengths, some sampled, some
/// ignoring end-of-sequence.
fn others(vocab: u32, n: usize) -> Vec<GenerateRequest> {
    let mut state = 0x5eed_u32;
    (0..n)
        .map(|i| {
            let len = 1 + (i * 7) % 47;
            let prompt = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 8) % vocab
                })
                .collect();
            let mut sampling = SamplingParams::greedy();
            if i % 2 == 1 {
                sampling.temperature = 0.9;
                sampling.top_p = 0.95;
                sampling.seed = Some(i as u64);
            }
            GenerateRequest {
                prompt,
                max_new_tokens: 5 + (i * 5) % 30,
                sampling,
                ignore_eos: i % 3 == 0,
                ..Default::default()
            }
        })
        .collect()
}

#[derive(Default)]
struct Outcome {
    tokens: HashMap<SeqId, Vec<u32>>,
    finish: HashMap<SeqId, FinishReason>,
}

/// Steps until nothing is left; `between` may act on the core after each
/// step (cancel a request, ...).
fn drain(core: &mut Core<'_>, mut between: impl FnMut(&mut Core<'_>, usize)) -> Outcome {
    let mut out = Outcome::default();
    let mut steps = 0;
    while core.has_work() {
        let step = core
            .step()
            .unwrap_or_else(|f| panic!("step failed: {:?}", f.error));
        for (id, t) in step.tokens {
            out.tokens.entry(id).or_default().push(t);
        }
        for (id, f) in step.finished {
            assert!(out.finish.insert(id, f).is_none(), "{id} finished twice");
        }
        between(core, steps);
        steps += 1;
        assert!(steps < 100_000, "no progress");
    }
    out
}

fn want_finish(case: &Case) -> FinishReason {
    match case.finish_reason.as_str() {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        other => panic!("unknown finish_reason {other:?}"),
    }
}

fn assert_case(out: &Outcome, id: SeqId, case: &Case, label: &str) {
    let got = out.tokens.get(&id).cloned().unwrap_or_default();
    assert_eq!(got, case.output_ids, "{label}: output ids");
    assert_eq!(
        out.finish.get(&id),
        Some(&want_finish(case)),
        "{label}: finish"
    );
}

fn assert_all_free(core: &Core<'_>, label: &str) {
    let pool = core.planner().pool();
    assert_eq!(
        pool.num_free(),
        pool.num_blocks(),
        "{label}: blocks still held"
    );
    assert_eq!(pool.usage(), 0.0, "{label}");
}

/// Every case alone, then all cases at once among `extra` other requests,
/// on a core built by `make`; returns the preemptions seen.
fn check_scenario(
    engine: &Engine,
    cases: &[Case],
    max_new: usize,
    cfg: CoreConfig,
    extra: usize,
    label: &str,
) -> u64 {
    let vocab = engine.spec().vocab_size as u32;
    let mut preemptions = 0;
    for (i, case) in cases.iter().enumerate() {
        let mut core = Core::new(engine, cfg).expect("core");
        core.add(0, greedy(&case.input_ids, max_new));
        let out = drain(&mut core, |_, _| {});
        assert_case(&out, 0, case, &format!("{label} case {i} alone"));
        assert_all_free(&core, label);
        preemptions += core.planner().total_preemptions();
    }
    let mut core = Core::new(engine, cfg).expect("core");
    for (i, case) in cases.iter().enumerate() {
        core.add(i as SeqId, greedy(&case.input_ids, max_new));
    }
    let base = cases.len() as SeqId;
    for (i, r) in others(vocab, extra).into_iter().enumerate() {
        core.add(base + i as SeqId, r);
    }
    // Two of the other requests go away mid-generation (client gone).
    let out = drain(&mut core, |core, step| {
        if step == 3 {
            core.remove(base);
            core.remove(base + 3);
        }
    });
    for (i, case) in cases.iter().enumerate() {
        assert_case(
            &out,
            i as SeqId,
            case,
            &format!("{label} case {i} in a batch"),
        );
    }
    assert_all_free(&core, label);
    preemptions + core.planner().total_preemptions()
}

#[test]
fn fixture_cases_are_batch_invariant_on_the_cpu_kernels() {
    for dir in fixture_checkpoints() {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_owned();
        let reference = fixture_reference(&dir);
        let engine = load(&dir, false);
        let n = reference.max_new_tokens;
        let ample = 256;
        check_scenario(
            &engine,
            &reference.cases,
            n,
            config(ample, 512, false),
            8,
            &format!("{name} batched"),
        );
        check_scenario(
            &engine,
            &reference.cases,
            n,
            config(ample, 5, false),
            8,
            &format!("{name} chunked by 5"),
        );
        check_scenario(
            &engine,
            &reference.cases,
            n,
            config(ample, 1, false),
            0,
            &format!("{name} chunked by 1"),
        );
        // 6 blocks of 16: the longest sequence (prompt + 24) fits alone,
        // 12 of them at once do not.
        let preempted = check_scenario(
            &engine,
            &reference.cases,
            n,
            config(6, 64, true),
            8,
            &format!("{name} preempted"),
        );
        assert!(preempted > 0, "{name}: the tiny pool preempted nothing");
    }
}

#[test]
fn fixture_cases_are_batch_invariant_on_the_candle_ops_path() {
    for dir in fixture_checkpoints() {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_owned();
        let reference = fixture_reference(&dir);
        let engine = load(&dir, true);
        let n = reference.max_new_tokens;
        check_scenario(
            &engine,
            &reference.cases,
            n,
            config(256, 7, false),
            8,
            &format!("{name} candle ops"),
        );
        let preempted = check_scenario(
            &engine,
            &reference.cases,
            n,
            config(6, 64, true),
            8,
            &format!("{name} candle ops preempted"),
        );
        assert!(preempted > 0);
    }
}

#[test]
fn prefixes_served_from_the_cache_give_the_same_ids() {
    for dir in fixture_checkpoints() {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_owned();
        let reference = fixture_reference(&dir);
        let engine = load(&dir, false);
        let n = reference.max_new_tokens;
        let mut core = Core::new(&engine, config(64, 512, true)).expect("core");
        let mut id = 0;
        for (i, case) in reference.cases.iter().enumerate() {
            // First run fills the cache; the second is served from it, once
            // alone and once next to a third copy.
            for round in 0..3 {
                core.add(id, greedy(&case.input_ids, n));
                if round == 2 {
                    core.add(id + 1, greedy(&case.input_ids, n));
                }
                let out = drain(&mut core, |_, _| {});
                assert_case(&out, id, case, &format!("{name} case {i} round {round}"));
                if round == 2 {
                    assert_case(&out, id + 1, case, &format!("{name} case {i} twin"));
                    id += 1;
                }
                id += 1;
            }
            assert_all_free(&core, &name);
        }
        let stats = core.planner().pool().stats();
        let full_blocks: u64 = reference
            .cases
            .iter()
            .map(|c| ((c.input_ids.len() - 1) / 16 * 16) as u64)
            .sum();
        assert!(full_blocks > 0, "{name}: no case spans a full block");
        // Rounds 1 and 2 (and the twin) hit every full prompt block.
        assert!(
            stats.hits >= 3 * full_blocks,
            "{name}: {stats:?}, {full_blocks}"
        );
    }
}

#[test]
fn every_block_is_free_after_finished_cancelled_preempted_and_failed_requests() {
    let dir = &fixture_checkpoints()[0];
    let engine = load(dir, false);
    let vocab = engine.spec().vocab_size as u32;
    let mut core = Core::new(&engine, config(5, 24, true)).expect("core");
    for (i, r) in others(vocab, 12).into_iter().enumerate() {
        core.add(i as SeqId, r);
    }
    let out = drain(&mut core, |core, step| {
        if step % 4 == 1
            && let Some(&id) = core.planner().running().last()
        {
            core.remove(id);
        }
    });
    assert!(
        core.planner().total_preemptions() > 0,
        "nothing was preempted"
    );
    assert!(!out.finish.is_empty());
    assert_all_free(&core, "finished/cancelled/preempted");

    // A step that fails (a token outside the vocabulary reaches the model)
    // fails its batch and frees those blocks too.
    core.add(100, greedy(&[1, 2, 3], 4));
    core.add(101, greedy(&[vocab + 7], 4));
    let failed = core.step().expect_err("a bad token id fails the step");
    assert!(
        failed.error.to_string().contains("vocabulary"),
        "{}",
        failed.error
    );
    assert_eq!(failed.seqs.len(), 2);
    assert!(!core.has_work());
    assert_all_free(&core, "failed");
}
