//! The short pass of the differential tester (`crate::fuzz`, docs/testing.md
//! "The differential tester"): fixed-seed sequences of container ioctls,
//! recorded on the C type1 and replayed on ours in the same run.
//!
//! On a backend with the C type1 the case runs the sequences and writes
//! every outcome to `type1-differential.json` in the run's results
//! directory; on a backend with the Rust type1 it runs the same sequences
//! and compares each outcome with that record (the `both` run does C first).
//! Without a record (a Rust-only run) it can only show that the sequences
//! run, and reports a skip that says so. The sequences leave out the DMA
//! engine, which the C mtty sample lacks; `cargo xtask fuzz` has it.

use super::{fail, CaseResult, Ctx, Fail};
use crate::fuzz::{self, exec::SeqOutcome, gen, ops::Seq};
use serde::{Deserialize, Serialize};

/// The seed of the short pass (`cargo xtask fuzz --seed 1 --no-engine`
/// runs the same sequences, and more, and shrinks a divergence).
pub const SEED: u64 = 1;
/// Sequences in the short pass.
pub const COUNT: u64 = 400;

const RECORD: &str = "type1-differential.json";

#[derive(Serialize, Deserialize)]
struct Record {
    backend: String,
    seed: u64,
    outcomes: Vec<SeqOutcome>,
}

pub fn differential(ctx: &Ctx) -> CaseResult {
    let Some(dir) = ctx.results.clone() else {
        return Err(Fail::Skip("no results directory was passed (run it through `vfio-guest run`)".into()));
    };
    let profile = gen::Profile { engine: false, max_ops: gen::MAX_OPS };
    let seqs: Vec<Seq> = (0..COUNT).map(|i| gen::sequence(SEED, i, profile)).collect();
    let ops: usize = seqs.iter().map(|s| s.ops.len()).sum();
    let env = fuzz::exec::Env::new(false)?;
    let t = std::time::Instant::now();
    let outcomes = env.run_all(&seqs);
    let secs = t.elapsed().as_secs_f64();
    drop(env);
    println!("{COUNT} sequences, {ops} ops in {secs:.1} s ({:.0} ops/s) on {}", ops as f64 / secs, ctx.backend.name());
    let mut cov = fuzz::Coverage::default();
    cov.add(&seqs, &outcomes);
    print!("{cov}");
    if let Some((i, e)) = outcomes.iter().enumerate().find_map(|(i, o)| o.as_ref().err().map(|e| (i, e))) {
        return Err(fail(format!("sequence {i} could not be set up: {e}")));
    }
    let path = dir.join(RECORD);
    if !ctx.backend.rust_type1 {
        let rec = Record { backend: ctx.backend.name().into(), seed: SEED, outcomes };
        let json = serde_json::to_string(&rec).map_err(|e| fail(e.to_string()))?;
        std::fs::write(&path, json).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        println!("recorded in {} for the Rust type1 to compare", path.display());
        return Ok(());
    }
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Err(Fail::Skip(format!(
            "the sequences ran, but nothing to compare with: no C type1 ran before in this run (use --backend both); {ops} ops"
        )));
    };
    let rec: Record = serde_json::from_str(&text).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    if rec.seed != SEED || rec.outcomes.len() != seqs.len() {
        return Err(fail(format!("{} holds another pass (seed {}, {} sequences)", path.display(), rec.seed, rec.outcomes.len())));
    }
    if let Some(d) = fuzz::compare(&rec.outcomes, &outcomes) {
        let seq = &seqs[d.pos];
        let mut shown = seq.clone();
        if let Some(op) = d.op {
            shown.ops.truncate(op + 1);
        }
        return Err(fail(format!(
            "divergence: seed {SEED} sequence {} op {:?}\n  C type1 ({}): {}\n  Rust type1 ({}): {}\n{shown}shrink it with `cargo xtask fuzz --seed {SEED} --only {} --no-engine`",
            seq.index,
            d.op,
            rec.backend,
            d.got.0,
            ctx.backend.name(),
            d.got.1,
            seq.index
        )));
    }
    println!("every outcome equals the C type1's ({})", rec.backend);
    Ok(())
}
