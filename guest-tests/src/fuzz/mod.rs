//! The differential tester of the type1 container uAPI (docs/testing.md,
//! "The differential tester").
//!
//! Seeded random sequences of container ioctls ([`ops`], [`gen`]) run on
//! the C and on the Rust type1, one after the other in one VM, and every
//! outcome is compared ([`exec`]): return value, errno, every byte the
//! kernel wrote into the argument and bitmap buffers, `VmLck`, and, with the
//! Rust mtty's DMA engine, its registers and the memory it wrote.
//!
//! - `vfio-guest fuzz ...` (started by `cargo xtask fuzz`) loops for a given
//!   time: a batch of sequences on one side, a module swap, the same batch
//!   on the other, a comparison; a divergence is shrunk to a minimal
//!   sequence, printed with its seed, and the program exits 1.
//! - `vfio-guest fuzz-exec --in FILE --out FILE` runs a batch on whatever is
//!   loaded (one process per batch and side, so the parent holds no VFIO
//!   file and can swap modules).
//! - The case `type1.differential` (suites/type1_differential.rs) is the
//!   short fixed-seed pass of `cargo xtask test`.

pub mod exec;
pub mod gen;
pub mod ops;

use crate::harness::{self, Backend, RunConfig};
use exec::SeqOutcome;
use ops::Seq;
use std::time::{Duration, Instant};

/// Where two runs of a batch first disagree.
pub struct Divergence {
    /// Position in the batch.
    pub pos: usize,
    /// The first op whose outcome differs (`None`: setup or op count).
    pub op: Option<usize>,
    /// The two outcomes, described (first side, second side).
    pub got: (String, String),
}

fn describe(o: &SeqOutcome, op: Option<usize>) -> String {
    match (o, op) {
        (Err(e), _) => format!("setup failed: {e}"),
        (Ok(v), Some(i)) => v.get(i).map_or("(no outcome)".into(), |x| x.to_string()),
        (Ok(v), None) => format!("{} outcomes", v.len()),
    }
}

/// The first op of `a` and `b` (outcomes of the same sequence) that differs.
pub fn first_difference(a: &SeqOutcome, b: &SeqOutcome) -> Option<Option<usize>> {
    match (a, b) {
        (Ok(x), Ok(y)) => {
            if let Some(i) = x.iter().zip(y).position(|(p, q)| p != q) {
                Some(Some(i))
            } else if x.len() != y.len() {
                Some(None)
            } else {
                None
            }
        }
        (Err(e), Err(f)) if e == f => None,
        _ => Some(None),
    }
}

/// Compares two runs of one batch.
pub fn compare(a: &[SeqOutcome], b: &[SeqOutcome]) -> Option<Divergence> {
    a.iter().zip(b).enumerate().find_map(|(pos, (x, y))| {
        first_difference(x, y).map(|op| Divergence { pos, op, got: (describe(x, op), describe(y, op)) })
    })
}

/// Which results each kind of operation got, as `MAP_DMA 812 (ok 301,
/// EINVAL 402, ...)` lines: to see that the sequences reach past the
/// argument checks.
#[derive(Default)]
pub struct Coverage {
    by_kind: std::collections::BTreeMap<&'static str, std::collections::BTreeMap<i32, u64>>,
    /// Outcomes with pages pinned (`VmLck` above the start).
    pinned: u64,
    /// Engine error codes seen after an op (code -> count).
    engine_errors: std::collections::BTreeMap<u32, u64>,
    /// Non-empty dirty bitmaps written back.
    dirty_bits: u64,
}

impl Coverage {
    pub fn add(&mut self, seqs: &[Seq], outs: &[SeqOutcome]) {
        for (s, o) in seqs.iter().zip(outs) {
            let Ok(o) = o else { continue };
            for (op, out) in s.ops.iter().zip(o) {
                *self.by_kind.entry(op.kind()).or_default().entry(out.errno).or_default() += 1;
                self.pinned += u64::from(out.vmlck_kb > 0);
                if let Some([_, code, _, _]) = out.engine {
                    if code != 0 {
                        *self.engine_errors.entry(code).or_default() += 1;
                    }
                }
                let bitmap_ok = matches!(op, ops::Op::Unmap { bitmap: Some(_), .. } | ops::Op::Dirty { get: Some(_), .. }) && out.errno == 0;
                self.dirty_bits += u64::from(bitmap_ok && out.bitmap.iter().any(|(_, hex)| hex.bytes().any(|b| b != b'0')));
            }
        }
    }
}

impl std::fmt::Display for Coverage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (kind, by) in &self.by_kind {
            let total: u64 = by.values().sum();
            let parts: Vec<String> = by
                .iter()
                .map(|(e, n)| if *e == 0 { format!("ok {n}") } else { format!("{} {n}", errno_name(*e)) })
                .collect();
            writeln!(f, "{kind} {total} ({})", parts.join(", "))?;
        }
        writeln!(
            f,
            "outcomes with pages pinned: {}; bitmaps with dirty bits: {}; engine error codes after an op: {:?}",
            self.pinned, self.dirty_bits, self.engine_errors
        )
    }
}

fn errno_name(e: i32) -> String {
    match e {
        libc::EINVAL => "EINVAL".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::EEXIST => "EEXIST".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::EBUSY => "EBUSY".into(),
        libc::EACCES => "EACCES".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::ENOSPC => "ENOSPC".into(),
        libc::ENODEV => "ENODEV".into(),
        libc::EPERM => "EPERM".into(),
        libc::ENOTTY => "ENOTTY".into(),
        e => format!("errno{e}"),
    }
}

/// Ops and sequences of a batch.
fn count_ops(seqs: &[Seq]) -> usize {
    seqs.iter().map(|s| s.ops.len()).sum()
}

/// `vfio-guest fuzz-exec --in FILE --out FILE`: runs the sequences in FILE
/// (JSON) on the loaded modules and writes their outcomes (JSON).
pub fn exec_main(input: &str, output: &str, engine: bool) -> i32 {
    let run = || -> Result<(), String> {
        let text = std::fs::read_to_string(input).map_err(|e| format!("{input}: {e}"))?;
        let seqs: Vec<Seq> = serde_json::from_str(&text).map_err(|e| format!("{input}: {e}"))?;
        let env = exec::Env::new(engine)?;
        let out = env.run_all(&seqs);
        let json = serde_json::to_string(&out).map_err(|e| e.to_string())?;
        std::fs::write(output, json).map_err(|e| format!("{output}: {e}"))
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fuzz-exec: {e}");
            1
        }
    }
}

/// What `vfio-guest fuzz` is asked to do.
pub struct FuzzConfig {
    pub run: RunConfig,
    pub seed: u64,
    pub seconds: u64,
    /// Sequences with the DMA engine's pins and copies (both sides must
    /// have the Rust mtty: the pair is `mtty-rs` against `rust`).
    pub engine: bool,
    /// Sequences per batch.
    pub batch: u64,
    /// Run only these sequence indices (shrinking one known divergence).
    pub only: Option<Vec<u64>>,
}

/// The two sides and which one's modules are loaded.
struct Sides {
    pair: [Backend; 2],
    engine: bool,
    loaded: usize,
    swaps: u64,
    round: u64,
    /// Time in the executor per side (module swaps not included).
    time: [Duration; 2],
}

/// Marks in the kernel log which side is loaded, in the format the bench
/// uses (xtask reads it to tell the C type1's own lockdep report apart).
fn kmsg(line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = f.write_all(line.as_bytes());
    }
}

const SIDE_NAMES: [&str; 2] = ["c", "rust"];

impl Sides {
    fn swap_to(&mut self, cfg: &RunConfig, side: usize) -> Result<(), String> {
        if side != self.loaded {
            harness::swap_type1(cfg, self.pair[self.loaded], self.pair[side])?;
            self.loaded = side;
            self.swaps += 1;
        }
        Ok(())
    }

    /// Runs `seqs` on `side` in a child process.
    fn exec(&mut self, cfg: &RunConfig, side: usize, seqs: &[Seq]) -> Result<Vec<SeqOutcome>, String> {
        self.swap_to(cfg, side)?;
        self.round += 1;
        let b = self.pair[side];
        kmsg(&format!("vfio-rs-fuzz: begin round {} side {} backend {}", self.round, SIDE_NAMES[side], b.name()));
        let input = cfg.results.join("fuzz-batch.json");
        let output = cfg.results.join(format!("fuzz-out-{}.json", SIDE_NAMES[side]));
        let _ = std::fs::remove_file(&output);
        std::fs::write(&input, serde_json::to_string(seqs).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{}: {e}", input.display()))?;
        let (i, o) = (input.to_string_lossy(), output.to_string_lossy());
        let mut args = vec!["fuzz-exec", "--in", &i, "--out", &o];
        if self.engine {
            args.push("--engine");
        }
        let t = Instant::now();
        let run = harness::run_self(&args, Duration::from_secs(900))?;
        self.time[side] += t.elapsed();
        kmsg(&format!("vfio-rs-fuzz: end round {} side {} backend {}", self.round, SIDE_NAMES[side], b.name()));
        if run.status.is_none_or(|s| !s.success()) {
            return Err(format!(
                "the executor on {} {} ({:?}): {}{}",
                b.name(),
                if run.status.is_none() { "timed out" } else { "failed" },
                run.status,
                run.stdout,
                run.stderr
            ));
        }
        let text = std::fs::read_to_string(&output).map_err(|e| format!("{}: {e}", output.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", output.display()))
    }

    /// Runs `seqs` on both sides, starting with the loaded one (so one
    /// swap per batch); returns (C side's, Rust side's) outcomes.
    fn both(&mut self, cfg: &RunConfig, seqs: &[Seq]) -> Result<(Vec<SeqOutcome>, Vec<SeqOutcome>), String> {
        let first = self.loaded;
        let a = self.exec(cfg, first, seqs)?;
        let b = self.exec(cfg, 1 - first, seqs)?;
        Ok(if first == 0 { (a, b) } else { (b, a) })
    }
}

/// Drops every op after `op`.
fn truncated(seq: &Seq, op: Option<usize>) -> Seq {
    let mut s = seq.clone();
    if let Some(i) = op {
        s.ops.truncate(i + 1);
    }
    s
}

/// Shrinks a diverging sequence: cut after the first differing op, then
/// repeatedly try the sequence without each single op (one batch per
/// round, so two module swaps per round) and keep the first that still
/// diverges, until no single op can go. Returns the minimal sequence and
/// its divergence.
fn shrink(cfg: &RunConfig, sides: &mut Sides, seq: &Seq, div: Divergence) -> Result<(Seq, Divergence), String> {
    let mut best = truncated(seq, div.op);
    let mut best_div = div;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let mut cands: Vec<Seq> = (0..best.ops.len())
            .map(|i| {
                let mut s = best.clone();
                s.ops.remove(i);
                s
            })
            .collect();
        // A device that is not needed is one thing less to read.
        if best.device && !best.ops.iter().any(|o| o.needs_engine()) {
            cands.push(Seq { device: false, ..best.clone() });
        }
        if cands.is_empty() {
            break;
        }
        let (c, r) = sides.both(cfg, &cands)?;
        let found = cands.iter().zip(c.iter().zip(&r)).find_map(|(s, (x, y))| {
            first_difference(x, y).map(|op| (s.clone(), Divergence { pos: 0, op, got: (describe(x, op), describe(y, op)) }))
        });
        match found {
            Some((s, d)) => {
                best = truncated(&s, d.op);
                best_div = d;
                println!("fuzz: shrinking: {} op(s) left after round {rounds}", best.ops.len());
            }
            None => break,
        }
    }
    Ok((best, best_div))
}

/// `vfio-guest fuzz`: returns whether no divergence (and no error) was found.
pub fn fuzz(cfg: &FuzzConfig) -> bool {
    let pair = if cfg.engine {
        [Backend::parse("mtty-rs").expect("known backend"), Backend::RUST]
    } else {
        [Backend::C, Backend::parse("type1-rs").expect("known backend")]
    };
    let profile = gen::Profile { engine: cfg.engine, max_ops: gen::MAX_OPS };
    println!(
        "fuzz: seed {} for {} s, {} sequences per batch, {} ({}) against {} ({})",
        cfg.seed,
        cfg.seconds,
        cfg.batch,
        SIDE_NAMES[0],
        pair[0].name(),
        SIDE_NAMES[1],
        pair[1].name()
    );
    if let Err(e) = harness::load_backend(&cfg.run, pair[0]) {
        println!("fuzz: FAIL: cannot load {}: {e}", pair[0].name());
        return false;
    }
    let mut sides = Sides { pair, engine: cfg.engine, loaded: 0, swaps: 0, round: 0, time: [Duration::ZERO; 2] };
    let start = Instant::now();
    let (mut seqs_done, mut ops_done, mut next) = (0u64, 0usize, 0u64);
    let mut cov = Coverage::default();
    let mut ok = true;
    loop {
        let indices: Vec<u64> = match &cfg.only {
            Some(_) if next > 0 => break,
            Some(list) => list.clone(),
            None => (next..next + cfg.batch).collect(),
        };
        next += cfg.batch;
        let seqs: Vec<Seq> = indices.iter().map(|&i| gen::sequence(cfg.seed, i, profile)).collect();
        let first = sides.loaded;
        let a = sides.exec(&cfg.run, first, &seqs);
        let b = a.and_then(|a| sides.exec(&cfg.run, 1 - first, &seqs).map(|b| (a, b)));
        let (c, r) = match b {
            Ok((a, b)) if first == 0 => (a, b),
            Ok((a, b)) => (b, a),
            Err(e) => {
                println!("fuzz: FAIL: seed {} sequences {}..{}: {e}", cfg.seed, indices[0], indices[indices.len() - 1]);
                ok = false;
                break;
            }
        };
        cov.add(&seqs, &c);
        seqs_done += seqs.len() as u64;
        ops_done += count_ops(&seqs);
        if let Some(d) = compare(&c, &r) {
            ok = false;
            let seq = &seqs[d.pos];
            println!("fuzz: DIVERGENCE: seed {} sequence {} op {:?}", cfg.seed, seq.index, d.op);
            println!("fuzz:   {}: {}\nfuzz:   {}: {}", pair[0].name(), d.got.0, pair[1].name(), d.got.1);
            print!("{}", truncated(seq, d.op));
            println!("fuzz: shrinking (each round runs the candidates on both sides)");
            match shrink(&cfg.run, &mut sides, seq, d) {
                Ok((min, d)) => {
                    println!(
                        "fuzz: minimal sequence (seed {}, sequence {}, {} op(s), differs at op {:?}):",
                        cfg.seed,
                        min.index,
                        min.ops.len(),
                        d.op
                    );
                    print!("{min}");
                    println!("fuzz:   {} type1: {}", if sides.pair[0].rust_type1 { "Rust" } else { "C" }, d.got.0);
                    println!("fuzz:   {} type1: {}", if sides.pair[1].rust_type1 { "Rust" } else { "C" }, d.got.1);
                    println!(
                        "fuzz: reproduce with `cargo xtask fuzz --seed {} --only {}{}`",
                        cfg.seed,
                        min.index,
                        if cfg.engine { "" } else { " --no-engine" }
                    );
                }
                Err(e) => println!("fuzz: shrinking failed: {e}"),
            }
            break;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "fuzz: {seqs_done} sequences, {ops_done} ops, {secs:.0} s; executor per side: {} {:.0} ops/s, {} {:.0} ops/s; {} module swaps",
            SIDE_NAMES[0],
            ops_done as f64 / sides.time[0].as_secs_f64().max(1e-3),
            SIDE_NAMES[1],
            ops_done as f64 / sides.time[1].as_secs_f64().max(1e-3),
            sides.swaps
        );
        if start.elapsed() >= Duration::from_secs(cfg.seconds) {
            break;
        }
    }
    let loaded = sides.pair[sides.loaded];
    if let Err(e) = harness::unload_backend(&cfg.run, loaded) {
        println!("fuzz: FAIL: unloading {}: {e}", loaded.name());
        ok = false;
    }
    print!("fuzz: results of each kind of operation (C side):\n{cov}");
    println!("fuzz: {} after {seqs_done} sequences and {ops_done} ops", if ok { "no divergence" } else { "FAILED" });
    ok
}
