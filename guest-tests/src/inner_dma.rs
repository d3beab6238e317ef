//! `vfio-guest inner-dma`: runs INSIDE the nested guest of
//! `qemu.migrate_mtty`, where the mtty instance is an ordinary PCI device.
//! It drives the DMA engine's copy command from the guest's side: BAR2
//! mapped through sysfs `resource2`, bus mastering turned on through sysfs
//! `config`, and the physical addresses of its own locked pages (which are
//! the IOVAs QEMU mapped into the container) read from `/proc/self/pagemap`.
//!
//! Each round fills the source pages with a pattern of that round (CPU
//! writes), has the device copy each one into a destination page that the
//! CPU never writes, waits, and then checks every destination byte. The
//! device writes go through `vfio_dma_rw` in the outer kernel, so QEMU
//! learns about them only through the container's dirty bitmap: if a
//! migration's switch-over falls between a round's copies and its check and
//! the bitmap missed them, the destination guest reads an older round.
//!
//! Stops after the round in which the file given with `--stop` appears.
//! Prints `INNER-DMA round N ok` lines and `INNER-DMA done rounds=N`, or
//! `INNER-DMA FAIL ...` and exits 1.

use crate::mtty_dma_regs as r;
use crate::pci::read_hex;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

const PAGE: usize = 4096;
/// The mtty's PCI IDs (the WCH CH352 its config space describes).
const MTTY_PCI_ID: (u16, u16) = (0x4348, 0x3253);

fn find_mtty() -> Result<std::path::PathBuf, String> {
    let dir = std::fs::read_dir("/sys/bus/pci/devices").map_err(|e| format!("/sys/bus/pci/devices: {e}"))?;
    dir.filter_map(|e| e.ok().map(|e| e.path()))
        .find(|d| read_hex(&d.join("vendor")) == Some(MTTY_PCI_ID.0) && read_hex(&d.join("device")) == Some(MTTY_PCI_ID.1))
        .ok_or_else(|| "no mtty PCI function".to_owned())
}

/// BAR2 mapped into this process.
struct Bar2 {
    base: *mut u32,
}

impl Bar2 {
    fn map(dev: &std::path::Path) -> Result<Bar2, String> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev.join("resource2"))
            .map_err(|e| format!("resource2: {e}"))?;
        // SAFETY: a fresh shared mapping of the 4 KiB BAR file; nothing else
        // in this process refers to that address range.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap resource2: {}", std::io::Error::last_os_error()));
        }
        Ok(Bar2 { base: p.cast() })
    }

    fn read(&self, off: u64) -> u32 {
        // SAFETY: `off` is one of the engine's 4-byte registers inside the
        // mapped 4 KiB; MMIO needs a volatile access.
        unsafe { self.base.add(off as usize / 4).read_volatile() }
    }

    fn write(&self, off: u64, v: u32) {
        // SAFETY: as in `read`.
        unsafe { self.base.add(off as usize / 4).write_volatile(v) }
    }

    fn write64(&self, off: u64, v: u64) {
        self.write(off, v as u32);
        self.write(off + 4, (v >> 32) as u32);
    }
}

/// `pages` page-aligned, locked pages and their physical addresses.
fn locked_pages(pages: usize) -> Result<(*mut u8, Vec<u64>), String> {
    let len = pages * PAGE;
    // SAFETY: a fresh anonymous private mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE | libc::MAP_LOCKED,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    let base = p.cast::<u8>();
    let pagemap = std::fs::File::open("/proc/self/pagemap").map_err(|e| format!("/proc/self/pagemap: {e}"))?;
    let mut phys = Vec::with_capacity(pages);
    for i in 0..pages {
        let va = base as u64 + (i * PAGE) as u64;
        let mut entry = [0u8; 8];
        pagemap.read_exact_at(&mut entry, va / PAGE as u64 * 8).map_err(|e| format!("pagemap: {e}"))?;
        let e = u64::from_le_bytes(entry);
        if e & (1 << 63) == 0 || e & ((1 << 55) - 1) == 0 {
            return Err(format!("page {i} not present in pagemap ({e:#x}); is this root?"));
        }
        phys.push((e & ((1 << 55) - 1)) * PAGE as u64);
    }
    Ok((base, phys))
}

fn pattern(round: u32, page: usize, i: usize) -> u8 {
    (round as usize * 31 + page * 7 + i) as u8
}

/// Copies one page from `src` to `dst` (physical addresses) with the
/// engine's copy command and waits for it.
fn copy_page(bar: &Bar2, src: u64, dst: u64) -> Result<(), String> {
    bar.write(r::INT_STATUS, r::INT_COPY_DONE | r::INT_ERROR);
    bar.write64(r::COPY_SRC, src);
    bar.write64(r::COPY_DST, dst);
    bar.write(r::COPY_LEN, PAGE as u32);
    bar.write(r::DOORBELL, r::DOORBELL_COPY);
    let t = Instant::now();
    loop {
        let status = bar.read(r::STATUS);
        if status & r::STATUS_ERROR != 0 {
            return Err(format!("engine error {} at {:#x}", bar.read(r::ERROR_CODE), bar.read(r::ERROR_IOVA)));
        }
        if status & r::STATUS_COPY == 0 && bar.read(r::INT_STATUS) & r::INT_COPY_DONE != 0 {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(20) {
            return Err(format!("copy not done after 20 s (STATUS {status:#x})"));
        }
        std::thread::yield_now();
    }
}

fn run(pages: usize, stop: &str) -> Result<u32, String> {
    let dev = find_mtty()?;
    // Memory decoding and bus mastering (the engine does no DMA without it).
    let mut config = OpenOptions::new().read(true).write(true).open(dev.join("config")).map_err(|e| format!("config: {e}"))?;
    let mut cmd = [0u8; 2];
    config.seek(SeekFrom::Start(4)).and_then(|_| config.read_exact(&mut cmd)).map_err(|e| format!("config: {e}"))?;
    let cmd = u16::from_le_bytes(cmd) | 0x6;
    config.seek(SeekFrom::Start(4)).and_then(|_| config.write_all(&cmd.to_le_bytes())).map_err(|e| format!("config: {e}"))?;
    let bar = Bar2::map(&dev)?;
    if bar.read(r::ID) != r::ID_VALUE {
        return Err(format!("BAR2 ID reads {:#x}", bar.read(r::ID)));
    }
    // Rings stay disabled (size 0); the copy command needs RUNNING only.
    bar.write(r::CTRL, r::CTRL_ENABLE);
    if bar.read(r::STATUS) & r::STATUS_RUNNING == 0 {
        return Err(format!("engine not running after enable (STATUS {:#x}, ERROR_CODE {})", bar.read(r::STATUS), bar.read(r::ERROR_CODE)));
    }
    let (src, src_phys) = locked_pages(pages)?;
    let (dst, dst_phys) = locked_pages(pages)?;
    let mut round = 0u32;
    loop {
        round += 1;
        for p in 0..pages {
            for i in 0..PAGE {
                // SAFETY: inside the locked mapping of `pages` pages.
                unsafe { src.add(p * PAGE + i).write_volatile(pattern(round, p, i)) };
            }
            copy_page(&bar, src_phys[p], dst_phys[p]).map_err(|e| format!("round {round} page {p}: {e}"))?;
        }
        // The window a switch-over may fall into: device-written, not yet read.
        std::thread::sleep(Duration::from_millis(300));
        for p in 0..pages {
            for i in 0..PAGE {
                // SAFETY: as above; the device wrote these bytes.
                let got = unsafe { dst.add(p * PAGE + i).read_volatile() };
                if got != pattern(round, p, i) {
                    return Err(format!(
                        "round {round} page {p} byte {i}: {got:#04x}, expected {:#04x} (the device's write is missing)",
                        pattern(round, p, i)
                    ));
                }
            }
        }
        println!("INNER-DMA round {round} ok");
        if std::path::Path::new(stop).exists() {
            return Ok(round);
        }
    }
}

/// Entry point of `vfio-guest inner-dma --pages N --stop FILE`.
pub fn main(pages: usize, stop: &str) -> i32 {
    match run(pages, stop) {
        Ok(rounds) => {
            println!("INNER-DMA done rounds={rounds}");
            0
        }
        Err(e) => {
            println!("INNER-DMA FAIL {e}");
            1
        }
    }
}
