//! The real-IOMMU size sweep: MAP_DMA then UNMAP_DMA of one mapping of
//! 4 KiB, 64 KiB, 2 MiB, 64 MiB and 1 GiB, on memory of 4 KiB pages, THP or
//! hugetlbfs 2 MiB pages, with a QEMU `edu`'s vfio-pci group in the
//! container (the VM's emulated VT-d). The 1 GiB points are the shapes of
//! upstream's large-folio series (6.18: map and unmap of THP/hugetlbfs
//! memory); the sweep is what `growth.svg` draws against the mapping size.

use super::workloads::{ns_per, sample, warming_up, Env, GIB, PAGE};
use crate::suites::type1_iommu::Backing;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const HUGE: u64 = 2 * MIB;

/// The mapping sizes of the sweep, smallest first.
pub const SIZES: [u64; 5] = [4 << 10, 64 << 10, 2 << 20, 64 << 20, 1 << 30];

/// Where every mapping of the sweep starts in IOVA space: 1 GiB.
///
/// What a type1 container accepts is its IOVA ranges (GET_INFO's
/// `IOVA_RANGE` capability): the VT-d domain's aperture (QEMU's
/// `intel-iommu` has a 39-bit address width by default: below 512 GiB)
/// minus the reserved MSI window `0xfee00000..=0xfeefffff`. The edu's
/// 28-bit DMA mask (256 MiB), which the `iommu.{4k,thp,hugetlb}` rows keep
/// to, bounds only what the edu's own DMA engine can reach; this workload
/// never starts it, and 1 GiB cannot fit under 256 MiB anyway. So
/// [1 GiB, 2 GiB): inside the aperture, below the MSI window (and below
/// 4 GiB, reachable with a 32-bit mask), and aligned to every size of the
/// sweep, so a mapping of 2 MiB pages starts on a 2 MiB IOVA boundary as
/// its memory does, and VT-d can use its 2 MiB entries for it.
const IOVA: u64 = GIB;

/// Caps the sweep's sizes (and the memory it populates): the environment
/// variable `VFIO_BENCH_MAX_BYTES` (the `bench.workloads_run` test case
/// sets it), else 1 GiB. The untimed warm-up pass of a workload process
/// stops at 64 MiB: it is there to translate the code, which the smaller
/// sizes run as well.
fn max_bytes() -> u64 {
    let cap = std::env::var("VFIO_BENCH_MAX_BYTES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(GIB);
    if warming_up() {
        cap.min(64 * MIB)
    } else {
        cap
    }
}

/// The label of a size in metric names: `4K`, `64K`, `2M`, `64M`, `1G`
/// (xtask/src/bench/render.rs reads it back).
pub fn size_label(bytes: u64) -> String {
    match bytes {
        b if b >= GIB && b % GIB == 0 => format!("{}G", b / GIB),
        b if b >= MIB && b % MIB == 0 => format!("{}M", b / MIB),
        b if b % 1024 == 0 => format!("{}K", b / 1024),
        b => b.to_string(),
    }
}

/// Map/unmap pairs timed per size: about 256 MiB mapped per point, at
/// least 4 and at most 1024 operations.
fn reps(size: u64) -> u64 {
    ((256 * MIB) / size).clamp(4, 1024)
}

/// `len` bytes of anonymous memory of the given backing, populated, 2 MiB
/// aligned. THP and hugetlbfs memory is populated by the kernel
/// (`MADV_POPULATE_WRITE` after the advice, so the advice decides the page
/// size: `MAP_POPULATE` would fault the pages in before it). For hugetlbfs
/// the pool is grown if needed, and shrunk back when the memory is dropped.
///
/// 4 KiB pages (`MADV_NOHUGEPAGE`) are faulted in by writes, the even pages
/// first, then the odd ones. Populated in address order, they come from the
/// page allocator mostly physically consecutive, in runs whose lengths
/// change from process to process; both type1s map a physically contiguous
/// run with one `iommu_map`, so such memory measured anything between
/// 4 KiB and huge-page behaviour (the first runs of this workload: the
/// 64 MiB point's Rust/C per round 0.34-0.92). Interleaved, no page is
/// physically next to its virtual neighbour: every page is a run of its
/// own, the case the 4 KiB rows are about, the same in every process.
struct Populated {
    map: *mut libc::c_void,
    map_len: usize,
    addr: u64,
    /// `nr_hugepages` before this memory raised it.
    hugepages_before: Option<u64>,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
const FREE_HUGEPAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";

fn read_u64(path: &str) -> Result<u64, String> {
    let s = std::fs::read_to_string(path).map_err(|err| format!("{path}: {err}"))?;
    s.trim().parse().map_err(|_| format!("{path}: not a number: {s}"))
}

impl Populated {
    fn new(kind: Backing, len: u64) -> Result<Self, String> {
        let mut hugepages_before = None;
        let (flags, map_len) = match kind {
            Backing::Hugetlb => {
                let (cur, free) = (read_u64(NR_HUGEPAGES)?, read_u64(FREE_HUGEPAGES)?);
                let need = len.div_ceil(HUGE);
                if free < need {
                    let _ = std::fs::write(NR_HUGEPAGES, (cur + need - free).to_string());
                    hugepages_before = Some(cur);
                }
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB, len.div_ceil(HUGE) * HUGE)
            }
            _ => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, len + HUGE),
        };
        // SAFETY: an anonymous mapping with no address hint.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), map_len as usize, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0)
        };
        if p == libc::MAP_FAILED {
            let err = std::io::Error::last_os_error();
            if let Some(before) = hugepages_before {
                let _ = std::fs::write(NR_HUGEPAGES, before.to_string());
                let got = read_u64(FREE_HUGEPAGES).unwrap_or(0);
                return Err(format!("SKIP: {} hugetlbfs 2 MiB pages wanted, the pool grew to {got} free ({err})", len.div_ceil(HUGE)));
            }
            return Err(format!("mmap of {map_len} bytes: {err}"));
        }
        // hugetlbfs mappings are aligned to the huge page size already.
        let addr = (p as u64).next_multiple_of(HUGE);
        let mem = Populated { map: p, map_len: map_len as usize, addr, hugepages_before };
        let advice = match kind {
            Backing::Small => [Some(libc::MADV_NOHUGEPAGE), None],
            Backing::Thp => [Some(libc::MADV_HUGEPAGE), Some(libc::MADV_POPULATE_WRITE)],
            Backing::Hugetlb => [None, Some(libc::MADV_POPULATE_WRITE)],
        };
        for a in advice.into_iter().flatten() {
            // SAFETY: advice on part of our own mapping.
            if unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, a) } != 0 {
                return Err(format!("madvise({a}) of {len} bytes: {}", std::io::Error::last_os_error()));
            }
        }
        if let Backing::Small = kind {
            for first in [0, PAGE] {
                for off in (first..len).step_by(2 * PAGE as usize) {
                    // SAFETY: inside [addr, addr + len), which is mapped writable.
                    unsafe { ((addr + off) as *mut u8).write_volatile(1) };
                }
            }
        }
        Ok(mem)
    }
}

impl Drop for Populated {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` created.
        unsafe { libc::munmap(self.map, self.map_len) };
        if let Some(before) = self.hugepages_before {
            let _ = std::fs::write(NR_HUGEPAGES, before.to_string());
        }
    }
}

/// The process's anonymous memory in transparent huge pages, bytes.
fn anon_huge_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The sweep on one backing: for each size, MAP_DMA then UNMAP_DMA of one
/// mapping at [`IOVA`], [`reps`] times, each unmap checked to return the
/// whole size. Metrics `<name>.map@<size>` and `<name>.unmap@<size>`.
pub(super) fn iommu_sizes(env: &Env, name: &str, kind: Backing) -> Result<(), String> {
    let cap = max_bytes();
    let sizes: Vec<u64> = SIZES.iter().copied().filter(|&s| s <= cap).collect();
    let Some(&largest) = sizes.last() else {
        return Err(format!("VFIO_BENCH_MAX_BYTES={cap} is below the smallest size, {}", SIZES[0]));
    };
    let (container, _group) = super::map::edu_container()?;
    let mem = Populated::new(kind, largest)?;
    if let Backing::Thp = kind {
        // Compaction may fail to find 2 MiB blocks; then the row would
        // measure a mix of page sizes.
        let huge = anon_huge_bytes();
        if huge < largest / 10 * 9 {
            return Err(format!("THP backing: only {huge} of {largest} bytes are in huge pages"));
        }
    }
    for &size in &sizes {
        let n = env.iters(reps(size));
        let (mut tm, mut tu) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..n {
            let t = Instant::now();
            container.map_rw(mem.addr, IOVA, size).map_err(|err| format!("MAP_DMA of {size:#x} bytes: {err}"))?;
            tm += t.elapsed();
            let t = Instant::now();
            let got = container.unmap_range(IOVA, size).map_err(|err| format!("UNMAP_DMA of {size:#x} bytes: {err}"))?;
            tu += t.elapsed();
            if got != size {
                return Err(format!("UNMAP_DMA unmapped {got:#x} bytes, wanted {size:#x}"));
            }
        }
        let label = size_label(size);
        sample(&format!("{name}.map@{label}"), "ns/op", ns_per(tm, n));
        sample(&format!("{name}.unmap@{label}"), "ns/op", ns_per(tu, n));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_repetitions() {
        let labels: Vec<String> = SIZES.iter().map(|&s| size_label(s)).collect();
        assert_eq!(labels, ["4K", "64K", "2M", "64M", "1G"]);
        assert_eq!(SIZES.map(reps), [1024, 1024, 128, 4, 4]);
        assert!(SIZES.iter().all(|&s| IOVA.is_multiple_of(s) && IOVA + s <= 0xfee0_0000));
    }
}
