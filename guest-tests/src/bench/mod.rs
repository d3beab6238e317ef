//! `vfio-guest bench`: the guest half of `cargo xtask bench` (docs/bench.md).
//!
//! For each round, for each backend of the pair (the order alternates from
//! round to round so drift in the VM spreads over both), the runner loads
//! the backend's modules, runs every selected workload as
//! `vfio-guest bench-one <workload> --backend <b>` in its own process (so a
//! crash or a leftover pin stays contained, as for the test cases), and
//! unloads. Each workload prints `SAMPLE <metric> <unit> <value>` lines; the
//! runner appends them, with the round and backend, as JSON lines to
//! `<results>/samples.jsonl`. The host computes the statistics.
//!
//! Times are wall-clock (`Instant`) around the ioctls only; setup (creating
//! instances, programming rings, touching memory) is outside the timed part.
//!
//! - [`workloads`]: the list of workloads, what a workload process knows,
//!   the setup they share, and `bench-one`;
//! - [`map`]: the container workloads (ioctl floor, MAP/UNMAP_DMA, scaling,
//!   the real-IOMMU path);
//! - [`sizes`]: the real-IOMMU size sweep (one mapping of 4 KiB to 1 GiB
//!   per backing);
//! - [`engine`]: the workloads that drive the DMA engine of the Rust mtty;
//! - [`runner`]: the rounds, the samples file and the kernel-log markers;
//! - [`perf`]: `bench --perf`, the profiles of single workloads.

mod engine;
mod map;
mod perf;
mod runner;
mod sizes;
mod workloads;

pub use perf::perf;
pub use runner::{finish, run, BenchConfig};
pub use workloads::{run_one, Env, WORKLOADS};
