//! Device memory in a container: `MAP_DMA` of BARs that `vfio-pci` maps
//! into the process (`VM_PFNMAP` VMAs), as QEMU maps every assigned
//! device's BARs so that devices can reach each other (peer to peer).
//!
//! The memory is the `ivshmem-plain`'s 1 GiB BAR2 and the second `edu`'s
//! register BAR (crate::pci); the first `edu` DMAs into and out of it
//! through the container's IOMMU mappings. Type1 maps such memory without
//! pinning it and without charging `locked_vm`. Every case gives the same
//! results on the C and the Rust type1; before the Rust type1 followed
//! PFN maps, each failed at its first `MAP_DMA` (`EFAULT`).

use super::type1_iommu::{bytes, edu, fill, pattern, Mem};
use super::type1_runs::{map_copy_unmap_in, Pages, Region};
use super::{fail, CaseResult, Ctx, Fail};
use crate::pci::{self, Edu, Ivshmem, PciDev, EDU_DMA_LIMIT, IVSHMEM_ID};
use crate::uapi::*;
use crate::vfio::{vm_locked_kb, Container, Errno, Group};
use crate::{check, check_eq};
use std::time::Duration;

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Where the scratch RAM buffer is mapped: the edu copies through it.
const RAM_IOVA: u64 = 0x10_0000;
/// Where BAR memory is mapped (2 MiB aligned, below the edu's 28-bit limit).
const BAR_IOVA: u64 = 0x0400_0000;

/// The ivshmem device, or a skip.
fn ivshmem() -> Result<PciDev, Fail> {
    pci::find(IVSHMEM_ID)
        .into_iter()
        .next()
        .ok_or_else(|| Fail::Skip("no ivshmem device behind an IOMMU (needs the VM's VT-d and ivshmem-plain)".into()))
}

/// A stretch of address space reserved with `PROT_NONE` at an `align`ed
/// start, released on drop; BAR and anonymous mappings are placed in it
/// with `MAP_FIXED`, so their addresses (and so the page-table levels that
/// map them) are chosen by the case.
pub(crate) struct Area {
    base: u64,
    len: u64,
    start: u64,
}

impl Area {
    pub(crate) fn new(len: u64, align: u64) -> Result<Area, Fail> {
        let total = len + align;
        // SAFETY: a new anonymous mapping with no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(fail(format!("reserve {total:#x} bytes: {}", std::io::Error::last_os_error())));
        }
        let base = p as u64;
        Ok(Area { base, len: total, start: (base + align - 1) & !(align - 1) })
    }

    pub(crate) fn at(&self, off: u64) -> u64 {
        self.start + off
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: the reservation `new` made, with whatever was placed in it.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len as usize) };
    }
}

/// Maps `len` bytes of BAR memory (`region` offset in `dev`'s file plus
/// `bar_off`) at `at`, shared, with `prot`. Nothing is touched.
pub(crate) fn mmap_bar(fd: i32, region: u64, at: u64, bar_off: u64, len: u64, prot: i32) -> Result<(), Fail> {
    // SAFETY: `at` lies in an `Area` of ours, which MAP_FIXED replaces.
    let p = unsafe {
        libc::mmap(at as *mut libc::c_void, len as usize, prot, libc::MAP_SHARED | libc::MAP_FIXED, fd, (region + bar_off) as i64)
    };
    if p == libc::MAP_FAILED {
        return Err(fail(format!("mmap of BAR offset {bar_off:#x}+{len:#x}: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

/// Anonymous read/write memory at `at`, zeroed and populated.
fn mmap_anon(at: u64, len: u64) -> Result<(), Fail> {
    // SAFETY: `at` lies in an `Area` of ours, which MAP_FIXED replaces.
    let p = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(fail(format!("anonymous mmap at {at:#x}: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: the mapping just made.
    unsafe { std::ptr::write_bytes(at as *mut u8, 0, len as usize) };
    Ok(())
}

/// Puts the range back to `PROT_NONE` reserved space (the BAR's VMA goes).
fn unmap_vma(at: u64, len: u64) -> Result<(), Fail> {
    // SAFETY: `at` lies in an `Area` of ours.
    let p = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(fail(format!("unmap at {at:#x}: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

/// `len` bytes at process address `at` (a live mapping of the case's).
fn read_mem(at: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    // SAFETY: the caller's mapping covers the range.
    unsafe { std::ptr::copy_nonoverlapping(at as *const u8, v.as_mut_ptr(), len as usize) };
    v
}

fn write_mem(at: u64, data: &[u8]) {
    // SAFETY: the caller's mapping covers the range.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), at as *mut u8, data.len()) };
}

/// A type1v2 container with the ivshmem's and the first edu's groups, both
/// devices open, and a scratch RAM buffer mapped at [`RAM_IOVA`].
struct Setup {
    edu: Edu,
    shm: Ivshmem,
    _groups: Vec<Group>,
    container: Container,
    ram: Mem,
}

fn setup() -> Result<Setup, Fail> {
    let shm_dev = ivshmem()?;
    let edu_dev = edu(0)?;
    let container = Container::open().map_err(|e| fail(format!("open /dev/vfio/vfio: {e}")))?;
    let gs = pci::open_group(&shm_dev, &container)?;
    container.set_iommu(VFIO_TYPE1v2_IOMMU).map_err(|e| fail(format!("SET_IOMMU(TYPE1v2): {e}")))?;
    let ge = pci::open_group(&edu_dev, &container)?;
    let shm = Ivshmem::open(&gs, &shm_dev.bdf)?;
    let edu = Edu::open(&ge, &edu_dev.bdf)?;
    check_size(&shm)?;
    let ram = Mem::anon(4 * PAGE)?;
    container.map_rw(ram.vaddr(), RAM_IOVA, 4 * PAGE)?;
    Ok(Setup { edu, shm, _groups: vec![gs, ge], container, ram })
}

fn check_size(shm: &Ivshmem) -> CaseResult {
    if shm.bar2_size != GIB {
        return Err(fail(format!("ivshmem BAR2 is {:#x} bytes; the VM gives it 1 GiB", shm.bar2_size)));
    }
    Ok(())
}

impl Setup {
    fn fd(&self) -> i32 {
        self.shm.dev.raw()
    }

    /// Maps BAR2 bytes `[bar_off, + len)` at `at`, read/write.
    fn mmap_bar(&self, at: u64, bar_off: u64, len: u64) -> CaseResult {
        mmap_bar(self.fd(), self.shm.bar2, at, bar_off, len, libc::PROT_READ | libc::PROT_WRITE)
    }

    /// Writes `data` into BAR2 at `bar_off` through the device file (no mmap).
    fn poke(&self, bar_off: u64, data: &[u8]) -> CaseResult {
        let n = self.shm.dev.pwrite(data, self.shm.bar2 + bar_off)?;
        check_eq!(n, data.len(), "pwrite into BAR2");
        Ok(())
    }

    /// Reads BAR2 at `bar_off` through the device file.
    fn peek(&self, bar_off: u64, len: u64) -> Result<Vec<u8>, Fail> {
        let mut v = vec![0u8; len as usize];
        let n = self.shm.dev.pread(&mut v, self.shm.bar2 + bar_off)?;
        check_eq!(n, len as usize, "pread from BAR2");
        Ok(v)
    }

    /// The device copies `data` to bus address `iova` (through its buffer,
    /// loaded from the scratch RAM).
    fn dma_write(&self, iova: u64, data: &[u8]) -> CaseResult {
        dma_write(&self.edu, &self.ram, iova, data)
    }

    /// The device copies `len` bytes from bus address `iova` (through its
    /// buffer, into the scratch RAM, which is returned).
    fn dma_read(&self, iova: u64, len: u64) -> Result<Vec<u8>, Fail> {
        dma_read(&self.edu, &self.ram, iova, len)
    }
}

fn dma_write(e: &Edu, ram: &Mem, iova: u64, data: &[u8]) -> CaseResult {
    fill(ram, 0, data);
    e.dma_from_ram(RAM_IOVA, 0, data.len() as u64)?;
    e.dma_to_ram(0, iova, data.len() as u64)?;
    Ok(())
}

fn dma_read(e: &Edu, ram: &Mem, iova: u64, len: u64) -> Result<Vec<u8>, Fail> {
    fill(ram, 0, &vec![0u8; len as usize]);
    e.dma_from_ram(iova, 0, len)?;
    e.dma_to_ram(0, RAM_IOVA, len)?;
    Ok(bytes(ram, 0, len).to_vec())
}

/// Expects `op` to fail with `errno`.
fn expect_errno(r: Result<(), Errno>, errno: i32, what: &str) -> CaseResult {
    match r {
        Err(Errno(e)) if e == errno => Ok(()),
        Err(e) => Err(fail(format!("{what}: {e}, wanted errno {errno}"))),
        Ok(()) => Err(fail(format!("{what} succeeded, wanted errno {errno}"))),
    }
}

/// A write through the device to `iova`, which is no longer mapped, must
/// fault in the IOMMU.
fn expect_fault(s: &Setup, iova: u64, data: &[u8]) -> CaseResult {
    let faults = pci::FaultWatch::start(iova);
    s.dma_write(iova, data)?;
    check!(
        faults.wait(Duration::from_secs(5)),
        "no IOMMU fault at {iova:#x} after a DMA to an unmapped IOVA"
    );
    Ok(())
}

/// The edu DMAs into and out of the BAR through the container: bytes
/// written by the device are read back through the BAR's own mmap and the
/// other way round; the mapping charges no `locked_vm`; after the unmap the
/// same transfer faults and the BAR keeps its bytes.
pub fn dma_through_bar(_ctx: &Ctx) -> CaseResult {
    let s = setup()?;
    let c = &s.container;
    let len = 64 * MIB;
    let area = Area::new(len, 2 * MIB)?;
    s.mmap_bar(area.at(0), 0, len)?;
    let base = vm_locked_kb();
    c.map_rw(area.at(0), BAR_IOVA, len)?;
    check_eq!(vm_locked_kb(), base, "VmLck after mapping 64 MiB of device memory (nothing is pinned)");
    // Device reads what the CPU wrote through the mmap.
    let a = pattern(1, 1000);
    write_mem(area.at(5 * MIB + 123), &a);
    check!(s.dma_read(BAR_IOVA + 5 * MIB + 123, 1000)? == a, "bytes the device read from the BAR");
    // The CPU reads what the device wrote, across a page boundary.
    let b = pattern(2, 2000);
    s.dma_write(BAR_IOVA + 40 * MIB + 3000, &b)?;
    check!(read_mem(area.at(40 * MIB + 3000), 2000) == b, "bytes the device wrote into the BAR, read through its mmap");
    // And at the very end of the mapping.
    let tail = pattern(3, 512);
    s.dma_write(BAR_IOVA + len - 512, &tail)?;
    check!(read_mem(area.at(len - 512), 512) == tail, "bytes the device wrote at the end of the mapping");
    check_eq!(c.unmap_range(BAR_IOVA, len)?, len, "unmapped size");
    check_eq!(vm_locked_kb(), base, "VmLck after the unmap");
    write_mem(area.at(7 * MIB), &[0x77; 256]);
    expect_fault(&s, BAR_IOVA + 7 * MIB, &[0x11; 256])?;
    check!(read_mem(area.at(7 * MIB), 256).iter().all(|&b| b == 0x77), "the BAR changed after its IOVA was unmapped");
    Ok(())
}

/// The first edu writes into the second edu's registers through the
/// container (its BAR0 mmap mapped at an IOVA), and reads its
/// identification register; after the unmap the write faults and the
/// register keeps its value.
pub fn peer_to_peer(_ctx: &Ctx) -> CaseResult {
    let (d0, d1) = (edu(0)?, edu(1)?);
    let container = Container::open().map_err(|e| fail(format!("open /dev/vfio/vfio: {e}")))?;
    let g0 = pci::open_group(&d0, &container)?;
    container.set_iommu(VFIO_TYPE1v2_IOMMU).map_err(|e| fail(format!("SET_IOMMU(TYPE1v2): {e}")))?;
    let g1 = pci::open_group(&d1, &container)?;
    let e0 = Edu::open(&g0, &d0.bdf)?;
    let e1 = Edu::open(&g1, &d1.bdf)?;
    let ram = Mem::anon(4 * PAGE)?;
    container.map_rw(ram.vaddr(), RAM_IOVA, 4 * PAGE)?;
    let bar0 = e1.dev.region(VFIO_PCI_BAR0_REGION_INDEX)?;
    let area = Area::new(bar0.size, MIB)?;
    mmap_bar(e1.dev.raw(), bar0.offset, area.at(0), 0, bar0.size, libc::PROT_READ | libc::PROT_WRITE)?;
    let p2p = 0x0800_0000;
    let base = vm_locked_kb();
    container.map_rw(area.at(0), p2p, bar0.size)?;
    check_eq!(vm_locked_kb(), base, "VmLck after mapping another device's registers");
    // edu register 0x04 reads back the bitwise inverse of what was written.
    dma_write(&e0, &ram, p2p + 4, &0x1234_5678u32.to_le_bytes())?;
    check_eq!(e1.dev.read32(bar0.offset + 4)?, !0x1234_5678u32, "the second edu's register 0x04 after the first wrote it");
    let id = dma_read(&e0, &ram, p2p, 4)?;
    check_eq!(u32::from_le_bytes(id[..4].try_into().unwrap()), e1.dev.read32(bar0.offset)?, "identification register read by DMA");
    check_eq!(container.unmap_range(p2p, bar0.size)?, bar0.size, "unmapped size");
    let faults = pci::FaultWatch::start(p2p);
    dma_write(&e0, &ram, p2p + 4, &0xdead_beefu32.to_le_bytes())?;
    check!(faults.wait(Duration::from_secs(5)), "no IOMMU fault for the unmapped peer address");
    check_eq!(e1.dev.read32(bar0.offset + 4)?, !0x1234_5678u32, "the register changed after the unmap");
    Ok(())
}

/// A BAR mmap'd read-only cannot be mapped for device writes (`EFAULT`,
/// touched or not), but can be mapped read-only.
pub fn read_only_vma(_ctx: &Ctx) -> CaseResult {
    let s = setup()?;
    let c = &s.container;
    let area = Area::new(2 * MIB, 2 * MIB)?;
    mmap_bar(s.fd(), s.shm.bar2, area.at(0), 0, 2 * MIB, libc::PROT_READ)?;
    expect_errno(c.map_rw(area.at(0), BAR_IOVA, 2 * MIB), libc::EFAULT, "read/write MAP_DMA of a never-touched read-only BAR mmap")?;
    let _ = read_mem(area.at(0), 8);
    expect_errno(c.map_rw(area.at(0), BAR_IOVA, 2 * MIB), libc::EFAULT, "read/write MAP_DMA of a populated read-only BAR mmap")?;
    let ro = vfio_iommu_type1_dma_map {
        argsz: argsz::<vfio_iommu_type1_dma_map>(),
        flags: VFIO_DMA_MAP_FLAG_READ,
        vaddr: area.at(0),
        iova: BAR_IOVA,
        size: 2 * MIB,
    };
    c.map(&ro)?;
    s.poke(MIB + 8, b"read-only")?;
    check!(s.dma_read(BAR_IOVA + MIB + 8, 9)? == b"read-only", "device read through a read-only mapping");
    check_eq!(c.unmap_range(BAR_IOVA, 2 * MIB)?, 2 * MIB, "unmapped size");
    Ok(())
}

/// A BAR mmap that was never touched maps (type1 faults it in: the fix for
/// CVE-2020-12888), and the device reaches it.
pub fn never_touched(_ctx: &Ctx) -> CaseResult {
    let s = setup()?;
    let c = &s.container;
    let area = Area::new(16 * MIB, 2 * MIB)?;
    // Written through the device file, not through the mmap.
    s.poke(3 * MIB + 77, b"never touched")?;
    s.mmap_bar(area.at(0), 0, 16 * MIB)?;
    c.map_rw(area.at(0), BAR_IOVA, 16 * MIB)?;
    check!(s.dma_read(BAR_IOVA + 3 * MIB + 77, 13)? == b"never touched", "device read of a never-touched BAR mapping");
    s.dma_write(BAR_IOVA + 9 * MIB + 4090, b"across a page")?;
    check!(s.peek(9 * MIB + 4090, 13)? == b"across a page", "device write, read through the device file");
    check_eq!(c.unmap_range(BAR_IOVA, 16 * MIB)?, 16 * MIB, "unmapped size");
    Ok(())
}

/// The BAR's mmap goes away while it is mapped: type1 keeps the IOMMU
/// mapping (C 6.12 has no notifier for it; the device still reaches the
/// BAR) and the unmap gives the whole size back. With memory decoding off
/// the mmap is zapped and cannot be faulted in, so a new `MAP_DMA` of it
/// fails with `EFAULT`; an existing mapping survives that too.
pub fn mmap_gone_while_mapped(_ctx: &Ctx) -> CaseResult {
    let s = setup()?;
    let c = &s.container;
    let len = 8 * MIB;
    let area = Area::new(2 * len, 2 * MIB)?;
    let base = vm_locked_kb();
    s.mmap_bar(area.at(0), 0, len)?;
    c.map_rw(area.at(0), BAR_IOVA, len)?;
    unmap_vma(area.at(0), len)?;
    s.dma_write(BAR_IOVA + MIB, b"after munmap")?;
    check!(s.peek(MIB, 12)? == b"after munmap", "device write after the BAR's munmap (the IOMMU mapping stays)");
    check_eq!(c.unmap_range(BAR_IOVA, len)?, len, "unmap after the munmap");
    check_eq!(vm_locked_kb(), base, "VmLck after the unmap");

    s.mmap_bar(area.at(len), 0, len)?;
    c.map_rw(area.at(len), BAR_IOVA, len)?;
    s.mmap_bar(area.at(0), len, len)?;
    s.shm.set_memory_decode(false)?;
    expect_errno(c.map_rw(area.at(0), BAR_IOVA + len, len), libc::EFAULT, "MAP_DMA of a BAR with memory decoding off")?;
    s.shm.set_memory_decode(true)?;
    s.dma_write(BAR_IOVA + 2 * MIB, b"decode back on")?;
    check!(read_mem(area.at(len + 2 * MIB), 14) == b"decode back on", "device write once decoding is back on");
    check_eq!(c.unmap_range(BAR_IOVA, len)?, len, "unmap after decoding was toggled");
    check_eq!(vm_locked_kb(), base, "VmLck at the end");
    Ok(())
}

/// `UNMAP_ALL` takes device-memory and RAM mappings alike; `VFIO_UPDATE_VADDR`
/// moves a device-memory mapping to a new mmap of the same BAR.
pub fn unmap_all_and_update_vaddr(_ctx: &Ctx) -> CaseResult {
    let s = setup()?;
    let c = &s.container;
    let area = Area::new(16 * MIB, 2 * MIB)?;
    s.mmap_bar(area.at(0), 0, 4 * MIB)?;
    mmap_anon(area.at(4 * MIB), 2 * MIB)?;
    s.mmap_bar(area.at(8 * MIB), 8 * MIB, 4 * MIB)?;
    let base = vm_locked_kb();
    c.map_rw(area.at(0), BAR_IOVA, 4 * MIB)?;
    c.map_rw(area.at(4 * MIB), BAR_IOVA + 4 * MIB, 2 * MIB)?;
    c.map_rw(area.at(8 * MIB), BAR_IOVA + 8 * MIB, 4 * MIB)?;
    check_eq!(vm_locked_kb(), base + 2 * 1024, "VmLck: only the RAM mapping is charged");
    // The scratch buffer's 4 pages go too.
    check_eq!(c.unmap(&dma_unmap(VFIO_DMA_UNMAP_FLAG_ALL, 0, 0))?, 10 * MIB + 4 * PAGE, "UNMAP_ALL size");
    check_eq!(vm_locked_kb(), base - 16, "VmLck after UNMAP_ALL");
    c.map_rw(s.ram.vaddr(), RAM_IOVA, 4 * PAGE)?;

    // UPDATE_VADDR: invalidate, remap the BAR elsewhere, give the new vaddr.
    c.map_rw(area.at(0), BAR_IOVA, 4 * MIB)?;
    let mut inval = dma_unmap(VFIO_DMA_UNMAP_FLAG_VADDR, BAR_IOVA, 4 * MIB);
    inval.argsz = argsz::<vfio_iommu_type1_dma_unmap>();
    check_eq!(c.unmap(&inval)?, 4 * MIB, "UNMAP_DMA(VADDR) size");
    unmap_vma(area.at(0), 4 * MIB)?;
    s.mmap_bar(area.at(12 * MIB), 0, 4 * MIB)?;
    c.map(&vfio_iommu_type1_dma_map {
        argsz: argsz::<vfio_iommu_type1_dma_map>(),
        flags: VFIO_DMA_MAP_FLAG_VADDR,
        vaddr: area.at(12 * MIB),
        iova: BAR_IOVA,
        size: 4 * MIB,
    })?;
    s.dma_write(BAR_IOVA + 3 * MIB, b"new vaddr")?;
    check!(read_mem(area.at(15 * MIB), 9) == b"new vaddr", "device write after UPDATE_VADDR");
    check_eq!(c.unmap_range(BAR_IOVA, 4 * MIB)?, 4 * MIB, "unmapped size");
    Ok(())
}

/// Device memory mapped while the container has only an mdev group (no
/// IOMMU domain, nothing looked up) is mapped when a `vfio-pci` group
/// joins (the replay follows the PFN map), and a second `vfio-pci` group
/// joining later reaches it too.
pub fn groups_join_after_mapping(ctx: &Ctx) -> CaseResult {
    // The BAR is mmap'd through a container of its own.
    let shm_dev = ivshmem()?;
    let (d0, d1) = (edu(0)?, edu(1)?);
    let shm_container = Container::open().map_err(|e| fail(format!("open /dev/vfio/vfio: {e}")))?;
    let gs = pci::open_group(&shm_dev, &shm_container)?;
    shm_container.set_iommu(VFIO_TYPE1v2_IOMMU).map_err(|e| fail(format!("SET_IOMMU(TYPE1v2): {e}")))?;
    let shm = Ivshmem::open(&gs, &shm_dev.bdf)?;
    check_size(&shm)?;
    let len = 8 * MIB;
    let area = Area::new(len, 2 * MIB)?;
    mmap_bar(shm.dev.raw(), shm.bar2, area.at(0), 0, len, libc::PROT_READ | libc::PROT_WRITE)?;
    write_mem(area.at(5 * MIB), b"replayed");

    let m = ctx.container_with_mdev("mtty-1")?;
    let c = &m.container;
    let ram = Mem::anon(4 * PAGE)?;
    c.map_rw(ram.vaddr(), RAM_IOVA, 4 * PAGE)?;
    let base = vm_locked_kb();
    c.map_rw(area.at(0), BAR_IOVA, len)?;
    let g0 = pci::open_group(&d0, c)?;
    check_eq!(vm_locked_kb(), base + 16, "VmLck once a vfio-pci group joined: only the RAM buffer is pinned");
    let e0 = Edu::open(&g0, &d0.bdf)?;
    check!(dma_read(&e0, &ram, BAR_IOVA + 5 * MIB, 8)? == b"replayed", "first joined device reads the BAR");
    let g1 = pci::open_group(&d1, c)?;
    let e1 = Edu::open(&g1, &d1.bdf)?;
    dma_write(&e1, &ram, BAR_IOVA + 6 * MIB, b"second group")?;
    check!(read_mem(area.at(6 * MIB), 12) == b"second group", "second joined device writes the BAR");
    drop((e1, g1, e0, g0));
    check_eq!(vm_locked_kb(), base, "VmLck after the vfio-pci groups left");
    check_eq!(c.unmap_range(BAR_IOVA, len)?, len, "unmap in the mdev-only container");
    drop(m);
    drop((shm, gs, shm_container));
    Ok(())
}

/// One `MAP_DMA` over RAM, then BAR memory, then RAM: it maps, only the RAM
/// is charged, and transfers across each boundary land on the right side.
pub fn mixed_ram_and_bar(_ctx: &Ctx) -> CaseResult {
    let s = setup()?;
    let c = &s.container;
    let area = Area::new(6 * MIB, 2 * MIB)?;
    mmap_anon(area.at(0), 2 * MIB)?;
    s.mmap_bar(area.at(2 * MIB), 0, 2 * MIB)?;
    mmap_anon(area.at(4 * MIB), 2 * MIB)?;
    let base = vm_locked_kb();
    c.map_rw(area.at(0), BAR_IOVA, 6 * MIB)?;
    check_eq!(vm_locked_kb(), base + 4 * 1024, "VmLck: the two RAM parts are charged, the BAR is not");
    for (i, edge) in [2 * MIB, 4 * MIB].into_iter().enumerate() {
        let data = pattern(10 + i as u8, 1000);
        s.dma_write(BAR_IOVA + edge - 500, &data)?;
        check!(read_mem(area.at(edge - 500), 1000) == data, "device write across the boundary at {edge:#x}");
        let back = pattern(20 + i as u8, 1500);
        write_mem(area.at(edge - 700), &back);
        check!(s.dma_read(BAR_IOVA + edge - 700, 1500)? == back, "device read across the boundary at {edge:#x}");
    }
    check_eq!(c.unmap_range(BAR_IOVA, 6 * MIB)?, 6 * MIB, "unmapped size");
    check_eq!(vm_locked_kb(), base, "VmLck after the unmap");
    // BAR first, then RAM.
    unmap_vma(area.at(0), 6 * MIB)?;
    s.mmap_bar(area.at(0), 4 * MIB, 2 * MIB)?;
    mmap_anon(area.at(2 * MIB), 2 * MIB)?;
    c.map_rw(area.at(0), BAR_IOVA, 4 * MIB)?;
    check_eq!(vm_locked_kb(), base + 2 * 1024, "VmLck of a BAR-then-RAM mapping");
    let data = pattern(30, 3000);
    s.dma_write(BAR_IOVA + 2 * MIB - 1000, &data)?;
    check!(read_mem(area.at(2 * MIB - 1000), 3000) == data, "device write from BAR into RAM");
    check_eq!(c.unmap_range(BAR_IOVA, 4 * MIB)?, 4 * MIB, "unmapped size");
    check_eq!(vm_locked_kb(), base, "VmLck after the second unmap");
    Ok(())
}

/// 4 MiB of the BAR (device memory only: one unmap call per domain,
/// nothing to unpin), then 4 MiB of 4 KiB pages (each a run of its own) at
/// the same IOVA: the second unmap must give back exactly the RAM's pins.
/// (The Rust type1 remembers large runs, the BAR's too: the first unmap
/// must forget it, or the second would take it for the RAM.)
pub fn ram_where_bar_was(_ctx: &Ctx) -> CaseResult {
    let s = setup()?;
    let c = &s.container;
    let area = Area::new(4 * MIB, 2 * MIB)?;
    s.mmap_bar(area.at(0), 0, 4 * MIB)?;
    c.map_rw(area.at(0), BAR_IOVA, 4 * MIB)?;
    let data = pattern(40, 1000);
    s.dma_write(BAR_IOVA + 2 * MIB - 500, &data)?;
    check!(read_mem(area.at(2 * MIB - 500), 1000) == data, "device write into the BAR");
    check_eq!(c.unmap_range(BAR_IOVA, 4 * MIB)?, 4 * MIB, "unmapped size of the BAR");
    let ram = Region::anon(&[(Pages::Scattered, 4 * MIB)])?;
    map_copy_unmap_in(c, &s.edu, &ram, BAR_IOVA, &[2 * MIB], "4 MiB of 4 KiB pages where the BAR was")
}

/// One `MAP_DMA` over two VMAs of the same BAR, physically out of order
/// (the second half of the range maps the BAR's start) and then in order
/// (two VMAs, one contiguous run): every byte reaches the right place.
pub fn two_vmas(_ctx: &Ctx) -> CaseResult {
    let s = setup()?;
    let c = &s.container;
    let area = Area::new(6 * MIB, 2 * MIB)?;
    s.mmap_bar(area.at(0), 32 * MIB, 2 * MIB)?;
    s.mmap_bar(area.at(2 * MIB), 0, 2 * MIB)?;
    s.mmap_bar(area.at(4 * MIB), 2 * MIB, 2 * MIB)?;
    c.map_rw(area.at(0), BAR_IOVA, 6 * MIB)?;
    for (edge, bar_before, bar_after) in [(2 * MIB, 34 * MIB, 0), (4 * MIB, 2 * MIB, 2 * MIB)] {
        let data = pattern((edge / MIB) as u8, 2000);
        s.dma_write(BAR_IOVA + edge - 1000, &data)?;
        check!(s.peek(bar_before - 1000, 1000)? == data[..1000], "bytes before the VMA boundary at {edge:#x}");
        check!(s.peek(bar_after, 1000)? == data[1000..], "bytes after the VMA boundary at {edge:#x}");
    }
    check_eq!(c.unmap_range(BAR_IOVA, 6 * MIB)?, 6 * MIB, "unmapped size");
    Ok(())
}

/// The whole 1 GiB BAR in one mapping (PUD-sized entries where the mmap is
/// 1 GiB aligned), a part of it that starts and ends inside such entries,
/// and a mapping whose VMA mixes levels: 4 KiB entries at
/// both ends, 2 MiB entries between, some faulted in before the
/// `MAP_DMA` and the rest by it. Markers written through the device file
/// must come back by DMA from the matching IOVAs.
pub fn whole_bar_and_mixed_levels(_ctx: &Ctx) -> CaseResult {
    let s = setup()?;
    let c = &s.container;
    let markers = [0, 2 * MIB - 8, 100 * MIB + 5, 200 * MIB + 4090];
    for (i, &off) in markers.iter().enumerate() {
        s.poke(off, &pattern(40 + i as u8, 16))?;
    }
    let area = Area::new(GIB, GIB)?;
    s.mmap_bar(area.at(0), 0, GIB)?;
    let iova = 0x0100_0000;
    check!(iova + markers[3] + 16 <= EDU_DMA_LIMIT, "markers beyond the edu's reach");
    let base = vm_locked_kb();
    c.map_rw(area.at(0), iova, GIB)?;
    check_eq!(vm_locked_kb(), base, "VmLck after mapping the whole BAR");
    for (i, &off) in markers.iter().enumerate() {
        check!(s.dma_read(iova + off, 16)? == pattern(40 + i as u8, 16), "marker at BAR offset {off:#x}");
    }
    check_eq!(c.unmap_range(iova, GIB)?, GIB, "unmapped size of the whole BAR");
    // A range that starts and ends inside those entries.
    let (start, len) = (3 * MIB + 8 * PAGE, 100 * MIB + 3 * PAGE);
    let edges = [(start, 16), (100 * MIB + 5, 16), (start + len - 16, 16)];
    for (i, &(off, n)) in edges.iter().enumerate() {
        s.poke(off, &pattern(60 + i as u8, n as usize))?;
    }
    c.map_rw(area.at(start), iova, len)?;
    for (i, &(off, n)) in edges.iter().enumerate() {
        let got = s.dma_read(iova + off - start, n)?;
        check!(got == pattern(60 + i as u8, n as usize), "BAR offset {off:#x} in a range starting mid-entry");
    }
    check_eq!(c.unmap_range(iova, len)?, len, "unmapped size of the part");
    drop(area);

    // Mixed levels: the VMA starts and ends 1 MiB off a 2 MiB boundary.
    let area = Area::new(12 * MIB, 2 * MIB)?;
    let (vma, bar_off, len) = (area.at(MIB), MIB, 8 * MIB);
    s.mmap_bar(vma, bar_off, len)?;
    // Populate a 4 KiB entry at the start and a 2 MiB one in the middle.
    let _ = read_mem(vma, 4);
    let _ = read_mem(vma + 3 * MIB, 4);
    let checks = [(100, 300), (MIB - 100, 200), (3 * MIB + 7, 64), (5 * MIB - 50, 100), (len - 300, 300)];
    for (i, &(off, n)) in checks.iter().enumerate() {
        s.poke(bar_off + off, &pattern(50 + i as u8, n as usize))?;
    }
    c.map_rw(vma, BAR_IOVA, len)?;
    for (i, &(off, n)) in checks.iter().enumerate() {
        check!(s.dma_read(BAR_IOVA + off, n)? == pattern(50 + i as u8, n as usize), "bytes at offset {off:#x} of a mixed-level VMA");
    }
    check_eq!(c.unmap_range(BAR_IOVA, len)?, len, "unmapped size of the mixed-level mapping");
    Ok(())
}

/// An mdev in a container that also maps device memory (a mixed
/// container: the ivshmem's group gives it an IOMMU domain). A device pin
/// of a BAR IOVA (`vfio_pin_pages`) fails, as in C (`EINVAL`: the pfn has
/// no `struct page`), and pins nothing: the mtty engine halts with
/// PIN_FAILED at that IOVA and `VmLck` does not move. `vfio_dma_rw`, which
/// copies through the process's mmap, reaches the BAR both ways. Rust mtty
/// only (the C sample has no DMA engine); `--backend mtty-rs` runs it on
/// the C type1.
pub fn mdev_pin_and_dma_rw(ctx: &Ctx) -> CaseResult {
    use crate::mtty_dma_regs::*;
    super::mtty::needs_rust_mtty(ctx, "the C sample has no DMA engine")?;
    let shm_dev = ivshmem()?;
    let o = super::mtty::open_device(ctx, "mtty-1")?;
    let (c, d) = (&o._container, &o.device);
    let gs = pci::open_group(&shm_dev, c)?;
    let shm = Ivshmem::open(&gs, &shm_dev.bdf)?;
    let ram = Mem::anon(4 * PAGE)?;
    c.map_rw(ram.vaddr(), RAM_IOVA, 4 * PAGE)?;
    let area = Area::new(2 * MIB, 2 * MIB)?;
    mmap_bar(shm.dev.raw(), shm.bar2, area.at(0), 0, 2 * MIB, libc::PROT_READ | libc::PROT_WRITE)?;
    c.map_rw(area.at(0), BAR_IOVA, 2 * MIB)?;
    let cfg = d.region(VFIO_PCI_CONFIG_REGION_INDEX)?.offset;
    d.write16(cfg + 0x04, 0x0007)?;
    let bar = d.region(VFIO_PCI_BAR2_REGION_INDEX)?.offset;
    let base = vm_locked_kb();

    // TX ring in RAM page 0; its one descriptor's buffer lies in the BAR.
    let target = BAR_IOVA + 0x1000;
    let mut desc = [0u8; 16];
    desc[..8].copy_from_slice(&target.to_le_bytes());
    desc[8..12].copy_from_slice(&16u32.to_le_bytes());
    fill(&ram, 0, &desc);
    for (ring, page) in [(TX, 0), (RX, 1)] {
        d.write32(bar + ring + RING_BASE, (RAM_IOVA + page * PAGE) as u32)?;
        d.write32(bar + ring + RING_BASE + 4, 0)?;
        d.write32(bar + ring + RING_SIZE, 16)?;
    }
    d.write32(bar + INT_ENABLE, 0x7)?;
    d.write32(bar + CTRL, CTRL_ENABLE)?;
    check_eq!(d.read32(bar + STATUS)? & (STATUS_RUNNING | STATUS_ERROR), STATUS_RUNNING, "engine running (ring pages pinned)");
    d.write32(bar + TX + RING_TAIL, 1)?;
    d.write32(bar + DOORBELL, DOORBELL_TX)?;
    let t = std::time::Instant::now();
    while d.read32(bar + STATUS)? & STATUS_ERROR == 0 {
        check!(t.elapsed() < Duration::from_secs(10), "the engine did not halt on a buffer in device memory");
        std::thread::sleep(Duration::from_millis(5));
    }
    let lo = d.read32(bar + ERROR_IOVA)? as u64;
    let hi = d.read32(bar + ERROR_IOVA + 4)? as u64;
    check_eq!((d.read32(bar + ERROR_CODE)?, lo | hi << 32), (ERR_PIN_FAILED, target), "ERROR_CODE and ERROR_IOVA");
    check_eq!(vm_locked_kb(), base, "VmLck after the refused pin");

    // vfio_dma_rw: BAR -> RAM, then RAM -> BAR.
    d.write32(bar + CTRL, CTRL_RESET)?;
    d.write32(bar + INT_ENABLE, INT_COPY_DONE | INT_ERROR)?;
    d.write32(bar + CTRL, CTRL_ENABLE)?;
    let copy = |src: u64, dst: u64, len: u32| -> Result<u32, Fail> {
        for (reg, v) in [(COPY_SRC, src), (COPY_DST, dst)] {
            d.write32(bar + reg, v as u32)?;
            d.write32(bar + reg + 4, (v >> 32) as u32)?;
        }
        d.write32(bar + COPY_LEN, len)?;
        d.write32(bar + DOORBELL, DOORBELL_COPY)?;
        let t = std::time::Instant::now();
        loop {
            let st = d.read32(bar + STATUS)?;
            if st & STATUS_COPY == 0 {
                return Ok(st);
            }
            check!(t.elapsed() < Duration::from_secs(10), "copy still busy after 10 s");
        }
    };
    let a = pattern(70, 300);
    write_mem(area.at(0x100), &a);
    check_eq!(copy(BAR_IOVA + 0x100, RAM_IOVA + 2 * PAGE, 300)?, STATUS_RUNNING, "STATUS after a copy out of the BAR");
    check!(bytes(&ram, 2 * PAGE, 300) == &a[..], "bytes vfio_dma_rw read from the BAR");
    let b = pattern(71, 200);
    fill(&ram, 3 * PAGE, &b);
    check_eq!(copy(RAM_IOVA + 3 * PAGE, BAR_IOVA + 0x2ff0, 200)?, STATUS_RUNNING, "STATUS after a copy into the BAR");
    check!(read_mem(area.at(0x2ff0), 200) == b, "bytes vfio_dma_rw wrote into the BAR");
    d.write32(bar + CTRL, 0)?;
    check_eq!(vm_locked_kb(), base, "VmLck at the end");
    drop((shm, gs));
    Ok(())
}
