//! `cargo xtask`: builds the kernel, the modules and the guest tests, boots
//! the test VM and runs the suites. See the README for the commands.

mod bench;
mod cmd;
mod fuzz;
mod host_kernel;
mod inner;
mod install;
mod installed;
mod kernel;
mod modules;
mod paths;
mod progress;
mod report;
mod setup;
mod test;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use paths::Paths;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, boot and test the Rust VFIO type1 and mtty modules")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// Which implementations of type1 and mtty the guest loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// The kernel's C vfio_iommu_type1 and the C mtty sample.
    C,
    /// Our Rust modules.
    Rust,
    /// Each suite twice: C, then Rust, in one VM run.
    Both,
    /// Our type1 with the C mtty sample (to develop type1 alone).
    Type1Rs,
    /// The C type1 with our mtty (to develop mtty alone).
    MttyRs,
}

impl BackendArg {
    /// The guest runner's `--backends` value.
    pub fn guest_list(self) -> &'static str {
        match self {
            BackendArg::C => "c",
            BackendArg::Rust => "rust",
            BackendArg::Both => "c,rust",
            BackendArg::Type1Rs => "type1-rs",
            BackendArg::MttyRs => "mtty-rs",
        }
    }
}

/// Forces the VM's accelerator instead of probing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AccelArg {
    Kvm,
    Tcg,
}

#[derive(clap::Args, Clone)]
pub struct VmOpts {
    /// Use KVM or TCG instead of probing (KVM only works where the CPU shows vmx/svm).
    #[arg(long, value_enum)]
    accel: Option<AccelArg>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: Debian packages, rust-src, bindgen-cli, virtme-ng.
    Setup,
    /// Unpack, configure and build the test kernel (cached outside the checkout).
    Kernel {
        /// `debug` (what the tests run on) or `release` (what the bench measures on).
        #[arg(long, value_enum, default_value = "debug")]
        flavor: kernel::Flavor,
    },
    /// Debian packages (bindeb-pkg) of the same 6.12 source for your own
    /// machine, with what the modules need (RUST, VFIO with its container
    /// and type1, mdev); prints the packages and the next commands.
    HostKernel {
        /// The config to start from; default: the running kernel's
        /// /boot/config-$(uname -r).
        #[arg(long, value_name = "FILE", conflicts_with = "from_test_kernel")]
        config: Option<std::path::PathBuf>,
        /// Start from the cached test kernel's config instead (small and
        /// quick to build: to try the packages, e.g. in a VM).
        #[arg(long)]
        from_test_kernel: bool,
        /// Keep only the drivers of the modules loaded now (`make
        /// localmodconfig`): a much shorter build of a distribution config.
        #[arg(long)]
        localmodconfig: bool,
        /// Write and check the config, print what changed and a time
        /// estimate, and stop before building.
        #[arg(long)]
        configure_only: bool,
    },
    /// Build kmod-iommu and kmod-mtty out of tree against the test kernel,
    /// or against another kernel's build tree (`--kdir`).
    Modules {
        /// A configured and built 6.12 kernel tree with CONFIG_RUST (the `O=`
        /// directory if it was built with one), e.g. /lib/modules/$(uname -r)/build.
        #[arg(long)]
        kdir: Option<std::path::PathBuf>,
        /// The kernel's source tree (the modules need its internal
        /// drivers/vfio/vfio.h); default: what --kdir's `source` link names
        /// (an O= tree has one), else --kdir itself.
        #[arg(long, requires = "kdir")]
        ksrc: Option<std::path::PathBuf>,
    },
    /// Install the built modules into <root>/lib/modules/<release>/extra/ with
    /// a modprobe.d file that makes `modprobe vfio` load vfio_iommu_type1_rs
    /// instead of the C vfio_iommu_type1; run depmod. `--uninstall` removes
    /// exactly that again.
    Install {
        /// The kernel build tree the modules were built against (its
        /// include/config/kernel.release names the release); default: the
        /// cached test kernel `cargo xtask modules` builds against.
        #[arg(long)]
        kdir: Option<std::path::PathBuf>,
        /// The root file system to install into.
        #[arg(long, default_value = "/")]
        root: std::path::PathBuf,
        /// Remove what install wrote, then rerun depmod.
        #[arg(long)]
        uninstall: bool,
    },
    /// Host unit tests, then kernel, modules and guest tests, then the VM suites.
    Test {
        /// Run only the guest cases whose name contains this text (a
        /// comma-separated list: any of them).
        #[arg(long)]
        filter: Option<String>,
        /// Leave out the guest cases whose name contains this text (a
        /// comma-separated list: any of them); `--skip qemu` leaves out the
        /// nested-QEMU cases and the inner guest's kernel.
        #[arg(long)]
        skip: Option<String>,
        /// Go on after a failed case instead of stopping at the first.
        #[arg(long)]
        keep_going: bool,
        /// Which type1 and mtty the suites run against.
        #[arg(long, value_enum, default_value = "both")]
        backend: BackendArg,
        /// Skip the host unit tests (`cargo test`).
        #[arg(long)]
        no_host: bool,
        /// Minutes before the VM is killed as hung.
        #[arg(long, default_value_t = 30)]
        timeout_min: u64,
        #[command(flatten)]
        vm: VmOpts,
    },
    /// Boot the VM with the modules loaded and give you a shell.
    Shell {
        #[arg(long, value_enum, default_value = "rust")]
        backend: BackendArg,
        #[command(flatten)]
        vm: VmOpts,
    },
    /// The walk-through for newcomers: an mtty instance driven through VFIO, step by step.
    Demo {
        #[arg(long, value_enum, default_value = "rust")]
        backend: BackendArg,
        #[command(flatten)]
        vm: VmOpts,
    },
    /// Benchmark the Rust type1 against the C one in one VM: every workload
    /// on each backend, alternating for several rounds; prints medians,
    /// spreads and Rust/C ratios and writes target/bench/results.{json,md}
    /// and chart.svg (docs/bench.md).
    Bench {
        /// Rounds; each runs every workload on both backends (the order
        /// alternates, so an even count puts each side first equally often).
        #[arg(long, default_value_t = 4)]
        rounds: u32,
        /// Only workloads whose name contains one of these comma-separated
        /// texts: ioctl, map.1g, map.2m, map.64k, map.4k, scale, pin.single,
        /// pin.run2, pin.same, dma_rw.16b, dma_rw.64k, unmap_pinned.1dev,
        /// unmap_pinned.8dev, iommu.4k, iommu.thp, iommu.hugetlb, iommu.pfnmap.
        #[arg(long)]
        filter: Option<String>,
        /// Which pair is compared: `mtty` = C type1 vs Rust type1, both with
        /// the Rust mtty (all workloads); `sample` = the same with the C
        /// mtty sample (map/unmap workloads only: it has no DMA engine).
        #[arg(long, value_enum, default_value = "mtty")]
        pair: bench::PairArg,
        /// Multiplies iteration counts (not sizes), e.g. 0.2 for a quick look.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Minutes before the VM is killed as hung.
        #[arg(long, default_value_t = 60)]
        timeout_min: u64,
        /// Recompute the tables from an earlier run's samples.jsonl, without a VM.
        #[arg(long)]
        from: Option<std::path::PathBuf>,
        /// Profile instead of timing: run each named workload (comma-separated,
        /// as --filter) once per side under `perf record -g` in the guest and
        /// write the reports to target/bench/perf/.
        #[arg(long, value_name = "WORKLOADS", conflicts_with = "from")]
        perf: Option<String>,
        /// The kernel to measure on: `release` (the test config without
        /// KASAN, lockdep, kmemleak and fault injection: what users run) or
        /// `debug` (the test kernel, with every checker on).
        #[arg(long, value_enum, default_value = "release")]
        kernel: kernel::Flavor,
        /// What the guest's clock counts: `wall` time, or `icount`, guest
        /// instructions (QEMU's instruction counter; exact and repeatable,
        /// TCG only; units become insn/op).
        #[arg(long, value_enum, default_value = "wall")]
        clock: bench::ClockArg,
        #[command(flatten)]
        vm: VmOpts,
    },
    /// The differential tester run long: seeded random sequences of type1
    /// container ioctls on the C and the Rust type1 in one VM, every return
    /// value, errno and written-back byte compared; stops at the first
    /// divergence and prints its seed and a minimal sequence
    /// (docs/testing.md, "The differential tester").
    Fuzz {
        /// How long to generate new sequences (boot and shrinking come on top).
        #[arg(long, default_value_t = 300)]
        seconds: u64,
        /// Seed of the sequences; sequence N of a seed is always the same.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Leave out the DMA engine's pins and copies, and compare C type1 +
        /// C mtty with Rust type1 + C mtty (the sequences of the short pass
        /// in `cargo xtask test`, which is `--seed 1 --no-engine`).
        #[arg(long)]
        no_engine: bool,
        /// Run only these sequence numbers of the seed (comma-separated), e.g.
        /// to shrink one a report named.
        #[arg(long)]
        only: Option<String>,
        /// Sequences per batch (each batch costs one module swap).
        #[arg(long, default_value_t = 40)]
        batch: u64,
        #[command(flatten)]
        vm: VmOpts,
    },
    /// Remove the cache outside the checkout (kernel builds, virtme-ng venv).
    CleanCache {
        /// Remove only kernel builds that no longer match the config and toolchain.
        #[arg(long)]
        stale: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let paths = Paths::discover();
    let result: Result<bool> = match cli.command {
        Cmd::Setup => setup::setup_retrying(&paths).map(|_| true),
        Cmd::Kernel { flavor } => setup::setup(&paths).and_then(|_| kernel::kernel(&paths, flavor)).map(|_| true),
        Cmd::HostKernel { config, from_test_kernel, localmodconfig, configure_only } => {
            let base = match (config, from_test_kernel) {
                (_, true) => Some(host_kernel::Base::TestKernel),
                (Some(f), false) => Some(host_kernel::Base::File(f)),
                (None, false) => None,
            };
            setup::setup(&paths)
                .and_then(|_| host_kernel::host_kernel(&paths, host_kernel::HostKernelOpts { base, localmodconfig, configure_only }))
                .map(|_| true)
        }
        Cmd::Modules { kdir: None, .. } => setup::setup(&paths)
            .and_then(|_| kernel::kernel(&paths, kernel::Flavor::Debug))
            .and_then(|k| modules::modules(&paths, &k))
            .map(|_| true),
        Cmd::Modules { kdir: Some(kdir), ksrc } => {
            let k = kernel::KernelBuild::external(kdir, ksrc);
            modules::modules(&paths, &k).map(|m| {
                for ko in m.kos() {
                    println!("built: {}", ko.display());
                }
                true
            })
        }
        Cmd::Install { kdir, root, uninstall } => install::install(&paths, kdir, &root, uninstall).map(|_| true),
        Cmd::Test { filter, skip, keep_going, backend, no_host, timeout_min, vm } => test::test(
            &paths,
            &test::TestOpts { filter, skip, keep_going, backend, host: !no_host, timeout_min, accel: vm.accel },
        ),
        Cmd::Shell { backend, vm } => test::shell(&paths, backend, vm.accel),
        Cmd::Demo { backend, vm } => test::demo(&paths, backend, vm.accel),
        Cmd::Bench { rounds, filter, pair, scale, timeout_min, from, perf, kernel, clock, vm } => bench::bench(
            &paths,
            &bench::BenchOpts { clock, rounds, filter, pair, scale, timeout_min, accel: vm.accel, from, perf, kernel },
        ),
        Cmd::Fuzz { seconds, seed, no_engine, only, batch, vm } => {
            fuzz::fuzz(&paths, &fuzz::FuzzOpts { seconds, seed, no_engine, only, batch, accel: vm.accel })
        }
        Cmd::CleanCache { stale } => kernel::clean_cache(&paths, stale).map(|_| true),
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
