//! `cargo xtask fuzz`: the differential tester of the type1 container uAPI
//! run long (docs/testing.md, "The differential tester"). Boots the test VM
//! and runs `vfio-guest fuzz` (guest-tests/src/fuzz/), which loops over
//! seeded random sequences on the C and the Rust type1 and stops at the
//! first divergence with its seed and a minimal sequence.

use crate::bench::splats::{judge_splats, splats};
use crate::cmd::{note, step};
use crate::paths::Paths;
use crate::test;
use crate::vm::Boot;
use crate::AccelArg;
use anyhow::{bail, Result};
use std::time::Duration;

/// Options of `cargo xtask fuzz`.
pub struct FuzzOpts {
    pub seconds: u64,
    pub seed: u64,
    pub no_engine: bool,
    pub only: Option<String>,
    pub batch: u64,
    pub accel: Option<AccelArg>,
}

/// Marker the guest prints when a divergence was found (and shrunk).
const DIVERGENCE: &str = "fuzz: DIVERGENCE";

/// `cargo xtask fuzz`. Returns whether the run found no divergence and the
/// kernel log is clean.
pub fn fuzz(paths: &Paths, o: &FuzzOpts) -> Result<bool> {
    if o.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if let Some(only) = &o.only {
        if only.split(',').any(|i| i.parse::<u64>().is_err()) {
            bail!("--only takes sequence numbers separated by commas (as a divergence report prints them), e.g. --only 17");
        }
    }
    let p = test::prepare(paths, o.accel, crate::kernel::Flavor::Debug)?;
    let results = paths.vm_results().join("fuzz");
    let _ = std::fs::remove_dir_all(&results);
    std::fs::create_dir_all(&results)?;
    let mut exec = format!(
        "{} fuzz --results {} {} --seed {} --seconds {} --batch {}",
        p.guest.display(),
        results.display(),
        test::guest_args(&p),
        o.seed,
        o.seconds,
        o.batch
    );
    if o.no_engine {
        exec.push_str(" --no-engine");
    }
    if let Some(only) = &o.only {
        exec.push_str(&format!(" --only {only}"));
    }
    step(&format!(
        "VM: booting ({:?}); seed {}, {} s of sequences on the C type1, then the Rust type1, compared; progress below",
        p.accel, o.seed, o.seconds
    ));
    let log = paths.vm_results().join("fuzz-console.log");
    // Boot, module loads and the last batch and shrinking come on top of
    // the fuzzing time.
    let timeout = Duration::from_secs(o.seconds + 30 * 60);
    let boot = Boot { accel: p.accel, exec, results: Some(results.clone()), timeout, interactive: false, echo: true, icount: false };
    let run = boot.run(paths, &p.kernel, &log)?;
    let finished = run.console.contains("VFIO-RS-GUEST-DONE");
    let diverged = run.console.contains(DIVERGENCE);
    let no_div = run.console.contains("fuzz: no divergence");
    let found = splats(&run.console, &results);
    let clean = judge_splats(&run.console, &found, &log);
    if !finished {
        let why = if run.timed_out { "the VM timed out (hung guest?)" } else { "the guest did not finish (kernel panic or crash?)" };
        println!("FAIL fuzz: {why}; console log: {}", log.display());
    } else if diverged {
        println!(
            "FAIL fuzz: the C and the Rust type1 diverged: the seed and the minimal sequence are above (and in {}). \
             A divergence the project keeps on purpose belongs in docs/type1.md \"Differences from the reference\" and \
             out of the generator (guest-tests/src/fuzz/gen.rs); any other is a bug to fix in kmod-iommu.",
            log.display()
        );
    } else if !no_div {
        println!("FAIL fuzz: the tester stopped with an error (see above); console log: {}", log.display());
    } else {
        note(&format!("console log: {}", log.display()));
    }
    let ok = finished && no_div && !diverged && clean;
    println!("{}", if ok { "fuzz: passed" } else { "fuzz: failed" });
    Ok(ok)
}
