//! The container workloads: the ioctl floor, MAP_DMA/UNMAP_DMA of one
//! mapping and of many, the cost growth with the number of mappings, and
//! the real-IOMMU path.

use super::workloads::{e, ns_per, sample, setup, Env, Reserve, GIB, IOVA0, PAGE, SCALE_NS};
use crate::harness::Backend;
use crate::suites::type1_iommu::{backed, ensure_hugepages, Backing};
use crate::uapi::*;
use crate::vfio::{Container, Errno, Group};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The floor under every other row: a container ioctl that does no work
/// (`VFIO_CHECK_EXTENSION(TYPE1v2)`: the core's dispatch into the backend
/// and back), and, as a control, `getpid`, a system call that enters no
/// VFIO code: if it differs between the sides, the loaded modules slow the
/// whole VM down and the other rows carry that too.
pub(super) fn ioctl_floor(env: &Env) -> Result<(), String> {
    let s = setup(1, false)?;
    let n = env.iters(100_000);
    let t = Instant::now();
    for _ in 0..n {
        if s.container.check_extension(VFIO_TYPE1v2_IOMMU).map_err(e("CHECK_EXTENSION"))? != 1 {
            return Err("CHECK_EXTENSION(TYPE1v2) on a type1 container is not 1".into());
        }
    }
    sample("ioctl.check_extension", "ns/op", ns_per(t.elapsed(), n));
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: getpid has no preconditions.
        std::hint::black_box(unsafe { libc::syscall(libc::SYS_getpid) });
    }
    sample("ioctl.getpid", "ns/op", ns_per(t.elapsed(), n));
    Ok(())
}

/// MAP_DMA and UNMAP_DMA of 1 GiB as one mapping, repeated.
pub(super) fn map_1g(env: &Env) -> Result<(), String> {
    let s = setup(1, false)?;
    let mem = Reserve::new(GIB)?;
    let n = env.iters(200);
    let (mut tm, mut tu) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        let t = Instant::now();
        s.container.map_rw(mem.vaddr(), IOVA0, GIB).map_err(e("MAP_DMA 1 GiB"))?;
        tm += t.elapsed();
        let t = Instant::now();
        let got = s.container.unmap_range(IOVA0, GIB).map_err(e("UNMAP_DMA 1 GiB"))?;
        tu += t.elapsed();
        if got != GIB {
            return Err(format!("UNMAP_DMA unmapped {got:#x} bytes, wanted {GIB:#x}"));
        }
    }
    sample("map.1g.map", "ns/op", ns_per(tm, n));
    sample("map.1g.unmap", "ns/op", ns_per(tu, n));
    Ok(())
}

/// A type1v2 container with the first `edu`'s vfio-pci group in it (the
/// VM's VT-d): the real-IOMMU workloads' setup.
pub(super) fn edu_container() -> Result<(Container, Group), String> {
    let dev = crate::pci::find(crate::pci::EDU_ID)
        .into_iter()
        .next()
        .ok_or("no edu device behind an IOMMU (the VM's VT-d)")?;
    crate::pci::type1v2_container(&dev)
}

/// The real-IOMMU path: MAP_DMA (pin the whole range, map it into the
/// VT-d domain in physically contiguous runs) and UNMAP_DMA (unmap with
/// batched IOTLB flushes, unpin) of 64 MiB in one mapping, with a QEMU
/// `edu`'s group in the container; memory backed by 4 KiB pages, THP or
/// hugetlbfs pages.
pub(super) fn iommu_map(env: &Env, name: &str, kind: Backing) -> Result<(), String> {
    const SIZE: u64 = 64 << 20;
    // Below the edu's 28-bit DMA mask, 2 MiB aligned (as its test cases).
    const IOVA: u64 = 64 << 20;
    let (container, _group) = edu_container()?;
    if let Backing::Hugetlb = kind {
        ensure_hugepages(SIZE / (2 << 20) + 4);
    }
    let mem = backed(kind, SIZE).map_err(|f| format!("{name} memory: {f:?}"))?;
    let n = env.iters(8);
    let (mut tm, mut tu) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        let t = Instant::now();
        container.map_rw(mem.vaddr(), IOVA, SIZE).map_err(e("MAP_DMA 64 MiB"))?;
        tm += t.elapsed();
        let t = Instant::now();
        let got = container.unmap_range(IOVA, SIZE).map_err(e("UNMAP_DMA 64 MiB"))?;
        tu += t.elapsed();
        if got != SIZE {
            return Err(format!("UNMAP_DMA unmapped {got:#x} bytes, wanted {SIZE:#x}"));
        }
    }
    sample(&format!("{name}.map"), "ns/op", ns_per(tm, n));
    sample(&format!("{name}.unmap"), "ns/op", ns_per(tu, n));
    Ok(())
}

/// Device memory on the real-IOMMU path: MAP_DMA and UNMAP_DMA of the
/// `ivshmem`'s whole 1 GiB BAR2, mmap'd 1 GiB aligned from its `vfio-pci`
/// device file (a `VM_PFNMAP` VMA that `vfio-pci` fills with 1 GiB
/// entries), with the device's own group in the container. Nothing is
/// pinned: MAP_DMA looks the pfns up and maps them into the VT-d domain,
/// UNMAP_DMA unmaps them.
pub(super) fn iommu_pfnmap(env: &Env) -> Result<(), String> {
    use crate::suites::type1_pfnmap::{mmap_bar, Area};
    const IOVA: u64 = 64 << 20;
    let dev = crate::pci::find(crate::pci::IVSHMEM_ID)
        .into_iter()
        .next()
        .ok_or("no ivshmem device behind an IOMMU (the VM's VT-d)")?;
    let (container, group) = crate::pci::type1v2_container(&dev)?;
    let shm = crate::pci::Ivshmem::open(&group, &dev.bdf)?;
    let size = shm.bar2_size;
    let area = Area::new(size, GIB).map_err(|f| format!("address space for the BAR: {f:?}"))?;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    mmap_bar(shm.dev.raw(), shm.bar2, area.at(0), 0, size, rw).map_err(|f| format!("{f:?}"))?;
    let n = env.iters(4);
    let (mut tm, mut tu) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        let t = Instant::now();
        container.map_rw(area.at(0), IOVA, size).map_err(e("MAP_DMA of the BAR"))?;
        tm += t.elapsed();
        let t = Instant::now();
        let got = container.unmap_range(IOVA, size).map_err(e("UNMAP_DMA of the BAR"))?;
        tu += t.elapsed();
        if got != size {
            return Err(format!("UNMAP_DMA unmapped {got:#x} bytes, wanted {size:#x}"));
        }
    }
    sample("iommu.pfnmap.map", "ns/op", ns_per(tm, n));
    sample("iommu.pfnmap.unmap", "ns/op", ns_per(tu, n));
    Ok(())
}

/// Sets the loaded type1's `dma_entry_limit` (read when a container opens);
/// returns the previous value.
fn set_entry_limit(b: Backend, v: u64) -> Result<u64, String> {
    let p = PathBuf::from("/sys/module").join(b.type1_module()).join("parameters/dma_entry_limit");
    let old = std::fs::read_to_string(&p).map_err(|err| format!("{}: {err}", p.display()))?;
    std::fs::write(&p, v.to_string()).map_err(|err| format!("writing {}: {err}", p.display()))?;
    old.trim().parse().map_err(|_| format!("{}: not a number: {old}", p.display()))
}

/// 1 GiB in mappings of `chunk` bytes: map them all, then unmap each.
/// More mappings than the default dma_entry_limit (65535) need a higher
/// limit: the workload raises it for its container and restores it.
pub(super) fn map_split(env: &Env, name: &str, chunk: u64) -> Result<(), String> {
    let count = GIB / chunk;
    let old = if count > 65535 { Some(set_entry_limit(env.backend, count + 16)?) } else { None };
    let r = (|| {
        let s = setup(1, false)?;
        let mem = Reserve::new(GIB)?;
        let reps = env.iters(((1u64 << 15) / count).clamp(1, 64));
        let (mut tm, mut tu) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..reps {
            let t = Instant::now();
            for i in 0..count {
                s.container
                    .map_rw(mem.vaddr() + i * chunk, IOVA0 + i * chunk, chunk)
                    .map_err(|err| format!("MAP_DMA #{i} of {count}: {err}"))?;
            }
            tm += t.elapsed();
            let t = Instant::now();
            for i in 0..count {
                s.container.unmap_range(IOVA0 + i * chunk, chunk).map_err(|err| format!("UNMAP_DMA #{i}: {err}"))?;
            }
            tu += t.elapsed();
        }
        sample(&format!("{name}.map"), "ns/op", ns_per(tm, reps * count));
        sample(&format!("{name}.unmap"), "ns/op", ns_per(tu, reps * count));
        Ok(())
    })();
    if let Some(old) = old {
        set_entry_limit(env.backend, old)?;
    }
    r
}

/// Per-operation cost of map, lookup and unmap with N mappings in the
/// container. The lookup is a MAP_DMA of an already mapped IOVA, which the
/// backend refuses with EEXIST after one search of its mapping tree.
pub(super) fn scale(env: &Env) -> Result<(), String> {
    let s = setup(1, false)?;
    let mem = Reserve::new(PAGE * 65536)?;
    for &n in &SCALE_NS {
        // Small N repeat, so every point times at least ~16k operations.
        let reps = env.iters((16384 / n).max(1));
        let (mut tm, mut tl, mut tu) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for _ in 0..reps {
            let t = Instant::now();
            for i in 0..n {
                s.container
                    .map_rw(mem.vaddr() + i * PAGE, IOVA0 + i * PAGE, PAGE)
                    .map_err(|err| format!("MAP_DMA #{i} of {n}: {err}"))?;
            }
            tm += t.elapsed();
            let t = Instant::now();
            for i in 0..n {
                // Spread the probes over the tree rather than walking it in order.
                let j = (i * 40503) % n;
                match s.container.map_rw(mem.vaddr() + j * PAGE, IOVA0 + j * PAGE, PAGE) {
                    Err(Errno(libc::EEXIST)) => {}
                    other => return Err(format!("lookup of mapping {j}: wanted EEXIST, got {other:?}")),
                }
            }
            tl += t.elapsed();
            let t = Instant::now();
            for i in 0..n {
                s.container.unmap_range(IOVA0 + i * PAGE, PAGE).map_err(|err| format!("UNMAP_DMA #{i}: {err}"))?;
            }
            tu += t.elapsed();
        }
        let ops = reps * n;
        sample(&format!("scale.map@{n}"), "ns/op", ns_per(tm, ops));
        sample(&format!("scale.lookup@{n}"), "ns/op", ns_per(tl, ops));
        sample(&format!("scale.unmap@{n}"), "ns/op", ns_per(tu, ops));
    }
    Ok(())
}
