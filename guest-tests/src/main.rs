//! `vfio-guest`: the programs that run inside the test VM.
//!
//! - `vfio-guest run ...`: the suite runner (see `harness`), started by
//!   `cargo xtask test`.
//! - `vfio-guest case <name> --backend c|rust`: one case, in its own process.
//! - `vfio-guest demo --backend c|rust`: the walk-through of `cargo xtask demo`.
//! - `vfio-guest bench ...`: the benchmark rounds of `cargo xtask bench`
//!   (`bench/`); `vfio-guest bench-one <workload>` runs one workload.
//! - `vfio-guest fuzz ...`: the differential tester of `cargo xtask fuzz`
//!   (`fuzz/`); `vfio-guest fuzz-exec` runs one batch of it on one side.
//! - `vfio-guest installed ...`: the checks of the VM booted from the
//!   project's kernel packages (`installed`).
//! - `vfio-guest list`: the case names.

mod bench;
mod demo;
mod fuzz;
mod harness;
mod inner_dma;
mod installed;
mod iommufd;
mod inner_qemu;
mod mtty_dma_regs;
mod pci;
mod suites;
mod uapi;
mod vfio;

use harness::{Backend, RunConfig};
use std::path::PathBuf;
use std::time::Duration;

/// Exit code of a case that skipped (as automake's test drivers use it).
pub const EXIT_SKIP: i32 = 77;

fn usage() -> ! {
    eprintln!(
        "usage:\n  vfio-guest run --results DIR --modroot DIR --kmods DIR --backends c,rust [--filter S] [--skip S] [--keep-going]\n  vfio-guest load|unload --backends c|rust --modroot DIR --kmods DIR
  vfio-guest case NAME --backend c|rust\n  vfio-guest bench --results DIR --modroot DIR --kmods DIR --backends C_SIDE,RUST_SIDE [--rounds N] [--filter A,B] [--scale F] [--perf [--perf-freq HZ]]\n  vfio-guest bench-one WORKLOAD --backend B [--scale F]\n  vfio-guest fuzz --results DIR --modroot DIR --kmods DIR [--seed S] [--seconds N] [--batch N] [--no-engine] [--only I,J]\n  vfio-guest fuzz-exec --in FILE --out FILE [--engine]\n  vfio-guest demo --backend c|rust|type1-rs|mtty-rs\n  vfio-guest installed --results DIR --release REL --build N --root DIR   (in the VM booted from the packages)\n  vfio-guest inner-dma --stop FILE [--pages N]   (inside the nested guest of qemu.migrate_mtty)\n  vfio-guest vaddr-exec-successor --container FD --memfd FD --out FD   (exec'd by type1_iommu.history.vaddr_after_exec)\n  vfio-guest list"
    );
    std::process::exit(2)
}

struct Args(Vec<String>);

impl Args {
    fn value(&self, flag: &str) -> Option<String> {
        self.0.iter().position(|a| a == flag).and_then(|i| self.0.get(i + 1)).cloned()
    }
    fn required(&self, flag: &str) -> String {
        self.value(flag).unwrap_or_else(|| {
            eprintln!("missing {flag}");
            usage()
        })
    }
    fn has(&self, flag: &str) -> bool {
        self.0.iter().any(|a| a == flag)
    }
}

fn backend_arg(args: &Args) -> Backend {
    Backend::parse(&args.required("--backend")).unwrap_or_else(|| usage())
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first().cloned() else { usage() };
    let args = Args(argv[1..].to_vec());
    match cmd.as_str() {
        "run" => {
            let backends: Vec<Backend> = args
                .required("--backends")
                .split(',')
                .map(|b| Backend::parse(b).unwrap_or_else(|| usage()))
                .collect();
            let cfg = RunConfig {
                results: PathBuf::from(args.required("--results")),
                modroot: PathBuf::from(args.required("--modroot")),
                kmods: PathBuf::from(args.required("--kmods")),
                backends,
                filter: args.value("--filter"),
                skip: args.value("--skip"),
                keep_going: args.has("--keep-going"),
                case_timeout: Duration::from_secs(
                    args.value("--case-timeout").and_then(|s| s.parse().ok()).unwrap_or(180),
                ),
            };
            let ok = harness::run(&cfg);
            std::process::exit(if ok { 0 } else { 1 });
        }
        "case" => {
            let Some(name) = args.0.first().cloned() else { usage() };
            let backend = backend_arg(&args);
            let Some(case) = suites::ALL.iter().find(|c| c.name == name) else {
                eprintln!("no case named {name}");
                std::process::exit(2);
            };
            let ctx = suites::Ctx { backend, results: args.value("--results").map(PathBuf::from) };
            match (case.run)(&ctx) {
                Ok(()) => std::process::exit(0),
                Err(suites::Fail::Skip(why)) => {
                    println!("SKIP: {why}");
                    std::process::exit(EXIT_SKIP);
                }
                Err(suites::Fail::Fail(why)) => {
                    println!("{why}");
                    std::process::exit(1);
                }
            }
        }
        "load" | "unload" => {
            let cfg = RunConfig {
                results: PathBuf::new(),
                modroot: PathBuf::from(args.required("--modroot")),
                kmods: PathBuf::from(args.required("--kmods")),
                backends: args
                    .required("--backends")
                    .split(',')
                    .map(|b| Backend::parse(b).unwrap_or_else(|| usage()))
                    .collect(),
                filter: None,
                skip: None,
                keep_going: false,
                case_timeout: Duration::from_secs(0),
            };
            // Loading two backends at once is refused by `load_backend` itself.
            for b in &cfg.backends {
                let r = if cmd == "load" { harness::load_backend(&cfg, *b) } else { harness::unload_backend(&cfg, *b) };
                if let Err(e) = r {
                    eprintln!("{cmd} {}: {e}", b.name());
                    std::process::exit(1);
                }
            }
        }
        "bench" => {
            // The guest half of `cargo xtask bench` (see bench/).
            let pair: Vec<Backend> = args
                .required("--backends")
                .split(',')
                .map(|b| Backend::parse(b).unwrap_or_else(|| usage()))
                .collect();
            let [c_side, rust_side] = pair[..] else { usage() };
            let results = PathBuf::from(args.required("--results"));
            let cfg = bench::BenchConfig {
                run: RunConfig {
                    results: results.clone(),
                    modroot: PathBuf::from(args.required("--modroot")),
                    kmods: PathBuf::from(args.required("--kmods")),
                    backends: vec![c_side, rust_side],
                    filter: args.value("--filter"),
                    skip: None,
                    keep_going: true,
                    case_timeout: Duration::from_secs(0),
                },
                pair: (c_side, rust_side),
                rounds: args.value("--rounds").and_then(|s| s.parse().ok()).unwrap_or(3),
                scale: args.value("--scale").and_then(|s| s.parse().ok()).unwrap_or(1.0),
                timeout: Duration::from_secs(args.value("--timeout").and_then(|s| s.parse().ok()).unwrap_or(600)),
                perf_freq: args.value("--perf-freq").and_then(|s| s.parse().ok()).unwrap_or(1999),
            };
            let ok = if args.has("--perf") { bench::perf(&cfg) } else { bench::run(&cfg) };
            bench::finish(&results);
            std::process::exit(if ok { 0 } else { 1 });
        }
        "inner-dma" => {
            // Inside the nested guest of qemu.migrate_mtty (inner_dma.rs).
            let pages = args.value("--pages").and_then(|s| s.parse().ok()).unwrap_or(4);
            std::process::exit(inner_dma::main(pages, &args.required("--stop")));
        }
        "vaddr-exec-successor" => {
            // Exec'd by the case type1_iommu.history.vaddr_after_exec.
            let fd = |flag: &str| args.required(flag).parse().unwrap_or_else(|_| usage());
            std::process::exit(suites::type1_vaddr::exec_successor(fd("--container"), fd("--memfd"), fd("--out")));
        }
        "bench-one" => {
            let Some(name) = args.0.first().cloned() else { usage() };
            let env = bench::Env {
                backend: backend_arg(&args),
                scale: args.value("--scale").and_then(|s| s.parse().ok()).unwrap_or(1.0),
            };
            std::process::exit(bench::run_one(&name, &env));
        }
        "fuzz" => {
            // The guest half of `cargo xtask fuzz` (see fuzz/).
            let results = PathBuf::from(args.required("--results"));
            let cfg = fuzz::FuzzConfig {
                run: RunConfig {
                    results: results.clone(),
                    modroot: PathBuf::from(args.required("--modroot")),
                    kmods: PathBuf::from(args.required("--kmods")),
                    backends: vec![],
                    filter: None,
                    skip: None,
                    keep_going: true,
                    case_timeout: Duration::from_secs(0),
                },
                seed: args.value("--seed").and_then(|s| s.parse().ok()).unwrap_or(1),
                seconds: args.value("--seconds").and_then(|s| s.parse().ok()).unwrap_or(60),
                engine: !args.has("--no-engine"),
                batch: args.value("--batch").and_then(|s| s.parse().ok()).unwrap_or(40),
                only: args.value("--only").map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect()),
            };
            let _ = std::fs::create_dir_all(&results);
            let ok = fuzz::fuzz(&cfg);
            harness::finish(&cfg.run);
            std::process::exit(if ok { 0 } else { 1 });
        }
        "fuzz-exec" => {
            std::process::exit(fuzz::exec_main(&args.required("--in"), &args.required("--out"), args.has("--engine")));
        }
        "installed" => {
            let results = PathBuf::from(args.required("--results"));
            let ok = installed::run(
                &results,
                &args.required("--release"),
                &args.required("--build"),
                &PathBuf::from(args.required("--root")),
            );
            std::process::exit(if ok { 0 } else { 1 });
        }
        "demo" => {
            let backend = backend_arg(&args);
            let ok = demo::run(backend);
            std::process::exit(if ok { 0 } else { 1 });
        }
        "list" => {
            for c in suites::ALL {
                println!("{}", c.name);
            }
        }
        _ => usage(),
    }
}
