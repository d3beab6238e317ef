//! `VFIO_UPDATE_VADDR` on a container whose group sits behind a real
//! IOMMU (live update: a process invalidates its vaddrs, a successor maps
//! the same memory elsewhere and hands the new vaddrs in, while the device
//! keeps doing DMA). mdev containers refuse the feature (`type1.*` cases);
//! here an `edu` behind VT-d does the DMA, so the IOMMU keeps translating
//! while no vaddr is valid.

use super::type1_multi::Pipe;
use super::{fail, CaseResult, Ctx, Fail};
use crate::pci::{self, Edu, EDU_DMA_LIMIT};
use crate::uapi::*;
use crate::vfio::{vm_locked_kb, vm_locked_kb_of, Container, Errno, Group, VResult};
use crate::{check, check_eq};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const PAGE: u64 = 4096;
const PAGES: u64 = 16;
const IOVA: u64 = 0x20_0000;
const IOVA2: u64 = 0x40_0000;
const _: () = assert!(IOVA2 + PAGES * PAGE < EDU_DMA_LIMIT);

/// A memfd of `PAGES` pages that can be mapped several times: every view
/// shows the same pages, as a successor process's mapping of guest RAM does.
struct Memfd(OwnedFd);

/// One `MAP_SHARED` view of a [`Memfd`].
struct View {
    addr: *mut u8,
}

impl Memfd {
    fn new() -> Result<Self, Fail> {
        // SAFETY: a valid NUL-terminated name; no flags.
        let fd = unsafe { libc::memfd_create(c"vfio-rs-vaddr".as_ptr(), 0) };
        if fd < 0 {
            return Err(fail(format!("memfd_create: {}", std::io::Error::last_os_error())));
        }
        // SAFETY: memfd_create just returned this descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sizes the memfd we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), (PAGES * PAGE) as libc::off_t) } != 0 {
            return Err(fail(format!("ftruncate: {}", std::io::Error::last_os_error())));
        }
        Ok(Memfd(fd))
    }

    fn view(&self) -> Result<View, Fail> {
        // SAFETY: a shared mapping of the whole memfd at an address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                (PAGES * PAGE) as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                self.0.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(fail(format!("mmap memfd: {}", std::io::Error::last_os_error())));
        }
        Ok(View { addr: p.cast() })
    }
}

impl View {
    fn vaddr(&self) -> u64 {
        self.addr as u64
    }

    fn write(&self, off: u64, data: &[u8]) {
        assert!(off + data.len() as u64 <= PAGES * PAGE);
        // SAFETY: inside the view (checked above).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.addr.add(off as usize), data.len()) };
    }

    fn read(&self, off: u64, len: u64) -> Vec<u8> {
        assert!(off + len <= PAGES * PAGE);
        // SAFETY: inside the view (checked above).
        unsafe { std::slice::from_raw_parts(self.addr.add(off as usize), len as usize) }.to_vec()
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: the mapping `Memfd::view` made.
        unsafe { libc::munmap(self.addr.cast(), (PAGES * PAGE) as usize) };
    }
}

fn invalidate(c: &Container, flags: u32, iova: u64, size: u64) -> VResult<u64> {
    c.unmap(&dma_unmap(VFIO_DMA_UNMAP_FLAG_VADDR | flags, iova, size))
}

/// MAP_DMA with VADDR: only the vaddr changes, so no READ/WRITE flags.
fn update(c: &Container, vaddr: u64, iova: u64, size: u64) -> VResult<()> {
    update_flags(c, VFIO_DMA_MAP_FLAG_VADDR, vaddr, iova, size)
}

fn update_flags(c: &Container, flags: u32, vaddr: u64, iova: u64, size: u64) -> VResult<()> {
    c.map(&vfio_iommu_type1_dma_map {
        argsz: argsz::<vfio_iommu_type1_dma_map>(),
        flags,
        vaddr,
        iova,
        size,
    })
}

/// The device copies 200 bytes from `src` to `dst` (IOVAs) through its buffer.
fn copy(e: &Edu, src: u64, dst: u64) -> CaseResult {
    e.dma_from_ram(src, 0, 200)?;
    e.dma_to_ram(0, dst, 200)?;
    Ok(())
}

fn edu_container(n: usize) -> Result<(Container, Group, Edu), Fail> {
    let dev = pci::find(pci::EDU_ID)
        .into_iter()
        .nth(n)
        .ok_or_else(|| Fail::Skip(format!("no edu device #{n} behind an IOMMU (needs the VM's VT-d)")))?;
    let (c, g) = pci::type1v2_container(&dev)?;
    let e = Edu::open(&g, &dev.bdf)?;
    Ok((c, g, e))
}

/// Invalidate, keep doing DMA, refuse what must wait for valid vaddrs,
/// hand the mapping to a successor process, invalidate everything at once,
/// and release a container whose vaddrs are invalid.
pub fn update_vaddr(_ctx: &Ctx) -> CaseResult {
    let (c, _g, edu) = edu_container(0)?;
    check_eq!(c.check_extension(VFIO_UPDATE_VADDR)?, 1, "UPDATE_VADDR with a real-IOMMU group");
    let mem = Memfd::new()?;
    let (a, b) = (mem.view()?, mem.view()?);
    let size = PAGES * PAGE;
    let base = vm_locked_kb();
    c.map_rw(a.vaddr(), IOVA, size)?;
    check_eq!(vm_locked_kb(), base + size / 1024, "pinned and charged at MAP_DMA");

    check_eq!(invalidate(&c, 0, IOVA, size)?, size, "invalidated size");
    check_eq!(vm_locked_kb(), base + size / 1024, "pins kept while the vaddr is invalid");
    // The IOMMU still translates: the device copies page 0 to page 1.
    a.write(0, &[0x3c; 200]);
    copy(&edu, IOVA, IOVA + PAGE)?;
    check_eq!(b.read(PAGE, 200), vec![0x3c; 200], "DMA while the vaddr is invalid");

    check_eq!(invalidate(&c, 0, IOVA, size).err(), Some(Errno(libc::EINVAL)), "invalidating twice");
    check_eq!(c.map_rw(b.vaddr(), IOVA, size).err(), Some(Errno(libc::EEXIST)), "plain MAP_DMA over it");
    let rw_vaddr = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE | VFIO_DMA_MAP_FLAG_VADDR;
    check_eq!(update_flags(&c, rw_vaddr, b.vaddr(), IOVA, size).err(), Some(Errno(libc::EINVAL)), "VADDR with READ|WRITE");
    check_eq!(update(&c, b.vaddr(), IOVA, size - PAGE).err(), Some(Errno(libc::EINVAL)), "VADDR with another size");
    check_eq!(update(&c, b.vaddr(), IOVA2, size).err(), Some(Errno(libc::ENOENT)), "VADDR where nothing is mapped");
    if let Some(dev) = pci::find(pci::EDU_ID).into_iter().nth(1) {
        // Attaching may pin: refused while any vaddr is invalid.
        let g2 = Group::open(dev.group)?;
        check_eq!(g2.set_container(&c).err(), Some(Errno(libc::EBUSY)), "second group attached while a vaddr is invalid");
    }

    // A successor (here a child) maps the same memory and takes the
    // mapping over: the locked memory moves to it.
    let (up, down) = (Pipe::new()?, Pipe::new()?);
    // SAFETY: the case is single-threaded; the child makes system calls
    // and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(fail("fork failed"));
    }
    if pid == 0 {
        let ok = mem.view().ok().is_some_and(|v| {
            let ok = update(&c, v.vaddr(), IOVA, size).is_ok();
            std::mem::forget(v);
            ok
        });
        up.send(if ok { b'u' } else { b'e' });
        let _ = down.recv();
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    check_eq!(up.recv(), Some(b'u'), "the child's VADDR update");
    check_eq!(vm_locked_kb_of(&pid.to_string()), size / 1024, "the successor is charged");
    check_eq!(vm_locked_kb(), base, "the predecessor is not any more");
    a.write(2 * PAGE, &[0x7e; 200]);
    copy(&edu, IOVA + 2 * PAGE, IOVA + 3 * PAGE)?;
    check_eq!(b.read(3 * PAGE, 200), vec![0x7e; 200], "DMA after the update");
    down.send(b'x');
    let mut status = 0;
    // SAFETY: waits for the child created above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    check!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
    // The owner is gone; unmapping still releases the pins.
    check_eq!(c.unmap_range(IOVA, size)?, size, "unmap of the successor's mapping");
    check_eq!(vm_locked_kb(), base, "parent's locked memory");

    // UNMAP_ALL with VADDR invalidates every mapping at once; a VADDR map
    // per mapping makes them valid again.
    c.map_rw(a.vaddr(), IOVA, size / 2)?;
    c.map_rw(a.vaddr() + size / 2, IOVA2, size / 2)?;
    check_eq!(invalidate(&c, VFIO_DMA_UNMAP_FLAG_ALL, 0, 0)?, size, "UNMAP_ALL|VADDR size");
    update(&c, b.vaddr(), IOVA, size / 2)?;
    check_eq!(invalidate(&c, VFIO_DMA_UNMAP_FLAG_ALL, 0, 0).err(), Some(Errno(libc::EINVAL)), "ALL|VADDR over an invalid one");
    update(&c, b.vaddr() + size / 2, IOVA2, size / 2)?;
    check_eq!(vm_locked_kb(), base + size / 1024, "charged once, to this process");

    // Release with invalid vaddrs: everything goes, pins and charge included.
    check_eq!(invalidate(&c, VFIO_DMA_UNMAP_FLAG_ALL, 0, 0)?, size, "invalidate before release");
    drop(edu);
    drop(_g);
    drop(c);
    check_eq!(vm_locked_kb(), base, "locked memory after releasing the container");
    // The group is free again: a new container takes it with no mappings.
    let (c, _g, _edu) = edu_container(0)?;
    check_eq!(c.unmap_range(0, 1 << 40)?, 0, "mappings in a new container");
    Ok(())
}

/// Keeps `fd` open across `execve` (Rust opens files with `O_CLOEXEC`).
fn keep_across_exec(fd: std::os::fd::RawFd) -> Result<(), Fail> {
    // SAFETY: F_SETFD on a descriptor this process owns changes only its flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
        return Err(fail(format!("fcntl(F_SETFD) on fd {fd}: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

/// The live-update handover through `exec`: the process that made the
/// mapping invalidates its vaddr and execs a successor program (the same
/// task, a new mm), which inherits the container, the group and the memfd,
/// maps the memfd and hands the new vaddr in. The locked memory must move
/// to the new mm (`VmLck` of the successor: the mapping's size), and its
/// unmap must take exactly that back (`VmLck` 0, no underflow of the new
/// mm's `locked_vm`): C once compared tasks, not mms, and an exec keeps
/// the task. The old mm is gone, so nothing is given back to it.
pub fn vaddr_after_exec(_ctx: &Ctx) -> CaseResult {
    // The edu's group is opened in the child, which execs.
    drop(edu_container(0)?);
    let before = super::pins_held()?;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe() returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(fail(format!("pipe2: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: pipe2 just returned both descriptors; each is owned once.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the case runs single-threaded; the child only sets up the
    // mapping, makes system calls and execs (or `_exit`s).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(fail("fork failed"));
    }
    if pid == 0 {
        drop(read_end);
        let handover = || -> Result<std::convert::Infallible, Fail> {
            let (c, g, _edu) = edu_container(0)?;
            let mem = Memfd::new()?;
            let a = mem.view()?;
            c.map_rw(a.vaddr(), IOVA, PAGES * PAGE)?;
            invalidate(&c, 0, IOVA, PAGES * PAGE)?;
            for fd in [c.file.as_raw_fd(), g.file.as_raw_fd(), mem.0.as_raw_fd(), write_end.as_raw_fd()] {
                keep_across_exec(fd)?;
            }
            let arg = |fd: std::os::fd::RawFd| fd.to_string();
            let err = std::os::unix::process::CommandExt::exec(
                std::process::Command::new("/proc/self/exe").args([
                    "vaddr-exec-successor",
                    "--container",
                    &arg(c.file.as_raw_fd()),
                    "--memfd",
                    &arg(mem.0.as_raw_fd()),
                    "--out",
                    &arg(write_end.as_raw_fd()),
                ]),
            );
            Err(fail(format!("exec: {err}")))
        };
        let Err(e) = handover();
        let msg = format!("error before exec: {e:?}\n");
        // SAFETY: writes our own buffer to the pipe we hold.
        unsafe { libc::write(write_end.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(1) };
    }
    drop(write_end);
    let mut out = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(read_end), &mut out).map_err(|e| fail(format!("read: {e}")))?;
    let mut status = 0;
    // SAFETY: waits for the child created above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    println!("successor: {}", out.trim());
    check!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "successor status {status:#x}: {}", out.trim());
    let nums: Vec<u64> = out.split_whitespace().filter_map(|w| w.split('=').nth(1)?.parse().ok()).collect();
    let size = PAGES * PAGE;
    check_eq!(nums, vec![0, size / 1024, size, 0], "successor's VmLck at start, after the VADDR update, unmapped size, VmLck after the unmap");
    let after = super::pins_held()?;
    check!(after <= before, "{} pages still pinned after the successor exited", after - before);
    Ok(())
}

/// The successor program of [`vaddr_after_exec`] (`vfio-guest
/// vaddr-exec-successor`): takes the mapping over through the inherited
/// descriptors and writes `start=.. updated=.. unmapped=.. end=..` (`VmLck`
/// in kB, bytes) to `out`. Returns the exit code.
pub fn exec_successor(container: i32, memfd: i32, out: i32) -> i32 {
    // SAFETY: the predecessor passed these descriptors across exec for us
    // alone; each is taken over once.
    let (c, mem, mut out) = unsafe {
        (
            Container { file: std::fs::File::from_raw_fd(container) },
            Memfd(OwnedFd::from_raw_fd(memfd)),
            std::fs::File::from_raw_fd(out),
        )
    };
    let run = || -> Result<String, Fail> {
        let start = vm_locked_kb();
        let v = mem.view()?;
        update(&c, v.vaddr(), IOVA, PAGES * PAGE)?;
        let updated = vm_locked_kb();
        let unmapped = c.unmap_range(IOVA, PAGES * PAGE)?;
        Ok(format!("start={start} updated={updated} unmapped={unmapped} end={}", vm_locked_kb()))
    };
    let (line, code) = match run() {
        Ok(l) => (l, 0),
        Err(e) => (format!("error: {e:?}"), 1),
    };
    let _ = std::io::Write::write_all(&mut out, line.as_bytes());
    code
}
