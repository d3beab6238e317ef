//! Test harness: a simulated driver around the DMA engine.
//!
//! `Sim` plays the kernel module's role: it owns guest memory (a map of
//! 4 KiB pages standing in for the IOMMU mappings), UART port 0 and the
//! engine, performs every `Action` the engine plans and checks on the way
//! that each action respects the engine's contract (accesses stay inside one
//! pinned page, pins and unpins pair up, transfers fit the FIFO).
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

pub mod rings;

use mtty_core::dma_engine::*;
use mtty_core::uart::Uart;
use std::collections::{BTreeMap, HashMap, HashSet};

pub const PAGE: u64 = 4096;

pub struct Sim {
    pub mem: BTreeMap<u64, Vec<u8>>,
    pub uart: Uart,
    pub dma: DmaEngine,
    pub bus_master: bool,
    /// Driver-side record of what it pinned, per slot.
    pub pinned: HashMap<usize, PinRange>,
    pub pin_calls: usize,
    pub unpin_calls: usize,
    /// Make the next copies fail (to test ACCESS_FAULT).
    pub fail_copies: bool,
    /// Pages mapped read-only (device writes fail), by page number.
    pub read_only: HashSet<u64>,
    /// Copy commands performed (each one read and at most one write).
    pub copy_calls: usize,
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

impl Sim {
    pub fn new() -> Self {
        Sim {
            mem: BTreeMap::new(),
            uart: Uart::new(),
            dma: DmaEngine::new(),
            bus_master: true,
            pinned: HashMap::new(),
            pin_calls: 0,
            unpin_calls: 0,
            fail_copies: false,
            read_only: HashSet::new(),
            copy_calls: 0,
        }
    }

    pub fn map(&mut self, iova: u64, len: u64) {
        let first = iova / PAGE;
        let last = (iova + len - 1) / PAGE;
        for p in first..=last {
            self.mem.entry(p).or_insert_with(|| vec![0; PAGE as usize]);
        }
    }

    /// IOMMU unmap: the backend first tells the driver, which unpins what
    /// the engine returns, then the mapping goes away.
    pub fn unmap(&mut self, iova: u64, len: u64) -> UnpinList {
        let list = self.dma.dma_unmap(iova, len);
        for (slot, range) in list.iter() {
            let held = self.pinned.remove(&slot.index());
            assert_eq!(held, Some(range), "engine returned a range the driver did not pin");
            self.unpin_calls += 1;
        }
        if len > 0 {
            let first = iova / PAGE;
            let last = iova.saturating_add(len - 1) / PAGE;
            let doomed: Vec<u64> = self.mem.range(first..=last).map(|(k, _)| *k).collect();
            for p in doomed {
                self.mem.remove(&p);
                self.read_only.remove(&p);
            }
        }
        list
    }

    /// Maps read-only: the device may read but not write these pages.
    pub fn map_ro(&mut self, iova: u64, len: u64) {
        self.map(iova, len);
        for p in iova / PAGE..=(iova + len - 1) / PAGE {
            self.read_only.insert(p);
        }
    }

    /// Whether every byte of `[iova, iova + len)` is mapped (and writable
    /// if `write`), as `vfio_dma_rw` needs.
    pub fn accessible(&self, iova: u64, len: u64, write: bool) -> bool {
        (iova / PAGE..=(iova + len - 1) / PAGE)
            .all(|p| self.mem.contains_key(&p) && !(write && self.read_only.contains(&p)))
    }

    pub fn mapped(&self, iova: u64) -> bool {
        self.mem.contains_key(&(iova / PAGE))
    }

    pub fn write_mem(&mut self, iova: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let a = iova + i as u64;
            let page = self.mem.get_mut(&(a / PAGE)).expect("write to unmapped memory");
            page[(a % PAGE) as usize] = *b;
        }
    }

    pub fn read_mem(&self, iova: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                let a = iova + i as u64;
                self.mem.get(&(a / PAGE)).expect("read of unmapped memory")[(a % PAGE) as usize]
            })
            .collect()
    }

    pub fn env(&self) -> EngineEnv {
        EngineEnv {
            bus_master: self.bus_master,
            rx_fifo_len: self.uart.rx_len(),
            rx_fifo_space: self.uart.rx_space(),
        }
    }

    pub fn reg_write(&mut self, off: u32, val: u32) {
        self.dma.write(off, 4, u64::from(val)).unwrap();
    }

    pub fn reg_write64(&mut self, off: u32, val: u64) {
        self.dma.write(off, 8, val).unwrap();
    }

    pub fn reg_read(&self, off: u32) -> u32 {
        self.dma.read(off, 4).unwrap() as u32
    }

    pub fn reg_read64(&self, off: u32) -> u64 {
        self.dma.read(off, 8).unwrap()
    }

    /// Checks that `at` names bytes inside the pinned range of its slot and
    /// that `len` bytes from there stay inside one page.
    fn check_location(&self, at: &Location, len: u64) {
        let range = self
            .pinned
            .get(&at.slot.index())
            .copied()
            .unwrap_or_else(|| panic!("access through unpinned slot {:?}", at.slot));
        assert_eq!(self.dma.pins()[at.slot.index()], Some(range));
        assert!(at.iova >= range.iova);
        let rel = at.iova - range.iova;
        assert_eq!(u64::from(at.page), rel / PAGE);
        assert_eq!(u64::from(at.offset), rel % PAGE);
        assert!(at.page < range.pages);
        assert!(len >= 1);
        assert!(u64::from(at.offset) + len <= PAGE, "access crosses a page");
    }

    /// Performs one planned action; returns false when the engine is idle.
    pub fn step(&mut self) -> bool {
        let env = self.env();
        let action = self.dma.plan(&env);
        // `plan` must be pure.
        assert_eq!(action, self.dma.plan(&env));
        let result = match action {
            Action::Idle => return false,
            Action::Pin { slot, range, .. } => {
                assert!(!self.pinned.contains_key(&slot.index()), "pin into a held slot");
                assert!(range.pages >= 1 && range.pages <= MAX_PIN_PAGES);
                assert_eq!(range.iova % PAGE, 0);
                let ok = (0..u64::from(range.pages)).all(|i| self.mapped(range.iova + i * PAGE));
                if ok {
                    self.pinned.insert(slot.index(), range);
                    self.pin_calls += 1;
                    Completion::Pinned
                } else {
                    Completion::PinFailed
                }
            }
            Action::Unpin { slot, range } => {
                assert_eq!(self.pinned.remove(&slot.index()), Some(range), "unpin mismatch");
                self.unpin_calls += 1;
                Completion::Unpinned
            }
            Action::ReadDescriptor { at, .. } => {
                self.check_location(&at, DESC_SIZE as u64);
                if self.fail_copies {
                    Completion::Failed
                } else {
                    let v = self.read_mem(at.iova, DESC_SIZE);
                    Completion::DescriptorRead(v.try_into().unwrap())
                }
            }
            Action::WriteDescriptor { at, bytes, .. } => {
                self.check_location(&at, DESC_SIZE as u64);
                if self.fail_copies {
                    Completion::Failed
                } else {
                    self.write_mem(at.iova, &bytes);
                    Completion::DescriptorWritten
                }
            }
            Action::TxToUart { at, len } => {
                self.check_location(&at, u64::from(len));
                assert!(len <= u32::from(env.rx_fifo_space), "TX beyond FIFO space");
                if self.fail_copies {
                    Completion::Failed
                } else {
                    for b in self.read_mem(at.iova, len as usize) {
                        let (ok, _) = self.uart.rx_push(b);
                        assert!(ok, "engine overran the FIFO");
                    }
                    Completion::Transferred(len)
                }
            }
            Action::UartToRx { at, len } => {
                self.check_location(&at, u64::from(len));
                assert!(len <= u32::from(env.rx_fifo_len), "RX beyond FIFO fill");
                if self.fail_copies {
                    Completion::Failed
                } else {
                    let data: Vec<u8> = (0..len).map(|_| self.uart.rx_pop().0.unwrap()).collect();
                    self.write_mem(at.iova, &data);
                    Completion::Transferred(len)
                }
            }
            Action::Copy { src, dst, len, .. } => {
                assert!(env.bus_master, "copy without bus master");
                assert!(check_copy(src, dst, len).is_ok(), "copy of an unchecked range");
                self.copy_calls += 1;
                let n = u64::from(len);
                if self.fail_copies || !self.accessible(src, n, false) {
                    Completion::CopyReadFailed
                } else if !self.accessible(dst, n, true) {
                    Completion::CopyWriteFailed
                } else {
                    let data = self.read_mem(src, len as usize);
                    self.write_mem(dst, &data);
                    Completion::Copied
                }
            }
        };
        self.dma
            .complete(&action, result)
            .expect("completion of the planned action refused");
        true
    }

    /// Runs the engine until idle; panics if it does not settle.
    pub fn run(&mut self) -> usize {
        for n in 0..100_000 {
            if !self.step() {
                self.check_pin_agreement();
                return n;
            }
        }
        panic!("engine did not settle");
    }

    pub fn check_pin_agreement(&self) {
        for slot in PinSlot::ALL {
            assert_eq!(
                self.dma.pins()[slot.index()],
                self.pinned.get(&slot.index()).copied(),
                "pin table disagrees with the driver for {slot:?}"
            );
        }
    }

    pub fn put_desc(&mut self, iova: u64, d: Descriptor) {
        self.write_mem(iova, &d.encode());
    }

    pub fn get_desc(&self, iova: u64) -> Descriptor {
        Descriptor::parse(&self.read_mem(iova, 16).try_into().unwrap())
    }

    /// Programs a ring and its tail (engine must be disabled).
    pub fn setup_ring(&mut self, block: u32, base: u64, size: u32) {
        self.reg_write64(block + RING_BASE, base);
        self.reg_write(block + RING_SIZE, size);
    }
}
