//! The mdev pin paths with a pin type that owns its pin, as the kernel's
//! does (kmod-common/mm.rs `PinnedPage`): every pin `PinOps` hands out ends
//! in a mapping's pin list or at `PinOps::unpin`, exactly once, on every
//! path, the failures of a run included; none is dropped on the way.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use proptest::prelude::*;
use type1_core::container::VfioIommu;
use type1_core::dma::{DmaEntry, DmaPartsMut, VfioDma};
use type1_core::errno::{Errno, EFAULT, ENOMEM};
use type1_core::pin::{pin_pages, unpin_pages, PagePin, PfnStore, PinOps, VfioPfn};
use type1_core::uapi::{IOMMU_READ, VFIO_TYPE1V2_IOMMU};

const PG: u64 = 4096;
/// A page's pfn is its vaddr's, which is its iova's plus this.
const VADDR_OFFSET: u64 = 0x1000_0000;

/// Pins held per pfn, and how many pins were dropped.
#[derive(Default)]
struct Book {
    held: BTreeMap<u64, i64>,
    dropped: u64,
}

/// A pin that gives itself back when dropped, like the kernel's.
struct OwnedPin {
    pfn: u64,
    book: Rc<RefCell<Book>>,
}

impl PagePin for OwnedPin {
    fn pfn(&self) -> u64 {
        self.pfn
    }
}

impl Drop for OwnedPin {
    fn drop(&mut self) {
        let mut b = self.book.borrow_mut();
        *b.held.entry(self.pfn).or_default() -= 1;
        b.dropped += 1;
    }
}

#[derive(Default)]
struct Pins(BTreeMap<u64, VfioPfn<OwnedPin>>);

impl PfnStore for Pins {
    type Slot = ();
    type Pin = OwnedPin;
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn get(&self, iova: u64) -> Option<&VfioPfn<OwnedPin>> {
        self.0.get(&iova)
    }
    fn get_mut(&mut self, iova: u64) -> Option<&mut VfioPfn<OwnedPin>> {
        self.0.get_mut(&iova)
    }
    fn insert(&mut self, _slot: (), iova: u64, vpfn: VfioPfn<OwnedPin>) {
        assert!(self.0.insert(iova, vpfn).is_none(), "iova {iova:#x} pinned twice");
    }
    fn remove(&mut self, iova: u64) -> Option<VfioPfn<OwnedPin>> {
        self.0.remove(&iova)
    }
    fn for_each<F: FnMut(u64, &VfioPfn<OwnedPin>)>(&self, mut f: F) {
        for (k, v) in &self.0 {
            f(*k, v);
        }
    }
}

struct Entry {
    dma: VfioDma,
    pins: Pins,
}

impl DmaEntry for Entry {
    type Pfns = Pins;
    fn dma(&self) -> &VfioDma {
        &self.dma
    }
    fn pfn_list(&self) -> &Pins {
        &self.pins
    }
    fn parts_mut(&mut self) -> DmaPartsMut<'_, Pins> {
        DmaPartsMut { dma: &mut self.dma, pfn_list: &mut self.pins, bitmap: None }
    }
    fn alloc_bitmap(&mut self, _words: usize) -> Result<(), Errno> {
        Err(ENOMEM)
    }
    fn free_bitmap(&mut self) {}
}

/// The mappings, as the other tests keep theirs.
type Tree = common::HostTree<Entry>;

/// Pins runs of up to 4 pages; fails at `fail_page`, and runs out of tree
/// nodes after `slots`.
struct Ops {
    book: Rc<RefCell<Book>>,
    locked: i64,
    unpins: u64,
    fail_page: Option<u64>,
    slots: usize,
}

impl Ops {
    fn pin(&mut self, vaddr: u64, do_accounting: bool) -> OwnedPin {
        let pfn = vaddr / PG;
        *self.book.borrow_mut().held.entry(pfn).or_default() += 1;
        if do_accounting {
            self.locked += 1;
        }
        OwnedPin { pfn, book: self.book.clone() }
    }

    fn fails(&self, vaddr: u64) -> bool {
        self.fail_page == Some((vaddr - VADDR_OFFSET) / PG)
    }
}

impl PinOps<Entry> for Ops {
    type Room = ();
    type Pins<'r>
        = std::vec::IntoIter<OwnedPin>
    where
        Self: 'r;

    fn pin_page_external(&mut self, _e: &mut Entry, vaddr: u64, do_accounting: bool) -> Result<OwnedPin, Errno> {
        if self.fails(vaddr) {
            return Err(EFAULT);
        }
        Ok(self.pin(vaddr, do_accounting))
    }

    fn pin_run_external<'r>(
        &mut self,
        e: &mut Entry,
        vaddr: u64,
        npage: usize,
        do_accounting: bool,
        _room: &'r mut (),
    ) -> Result<Self::Pins<'r>, Errno> {
        let n = (0..npage.min(4) as u64).take_while(|j| !self.fails(vaddr + j * PG)).count() as u64;
        if n == 0 {
            return Ok(vec![self.pin_page_external(e, vaddr, do_accounting)?].into_iter());
        }
        Ok((0..n).map(|j| self.pin(vaddr + j * PG, do_accounting)).collect::<Vec<_>>().into_iter())
    }

    fn pfn_valid(&self, _pfn: u64) -> bool {
        true
    }

    fn unpin(&mut self, pin: OwnedPin) -> bool {
        self.unpins += 1;
        drop(pin);
        true
    }

    fn lock_acct(&mut self, _e: &mut Entry, npage: i64, _is_async: bool) -> Result<(), Errno> {
        self.locked += npage;
        Ok(())
    }

    fn take_slot(&mut self) -> Result<(), Errno> {
        self.slots = self.slots.checked_sub(1).ok_or(ENOMEM)?;
        Ok(())
    }

    fn promote_pinned_scope(&mut self) -> bool {
        false
    }
}

fn mapping(iova_page: u64, npage: u64) -> Entry {
    let iova = iova_page * PG;
    let mut dma = VfioDma::new(iova, iova + VADDR_OFFSET, 3);
    dma.size = npage * PG;
    Entry { dma, pins: Pins::default() }
}

proptest! {
    /// Pins and unpins with failing pages and exhausted nodes: each pin is
    /// held exactly while a pin list holds it, and only `unpin` ends one.
    #[test]
    fn owned_pins_are_kept_or_given_back_once(
        ops in prop::collection::vec(
            (any::<bool>(), 0..16u64, 1..8i32, prop::option::of(0..16u64), 0..10usize),
            1..60,
        ),
    ) {
        // Mapped pages: [0, 6) and [8, 14).
        let mut t = Tree::default();
        t.0.insert(0, mapping(0, 6));
        t.0.insert(8 * PG, mapping(8, 6));
        let mut iommu = VfioIommu::open(VFIO_TYPE1V2_IOMMU, 65535).unwrap();
        iommu.has_devices = true;
        let book = Rc::new(RefCell::new(Book::default()));
        let mut o = Ops { book: book.clone(), locked: 0, unpins: 0, fail_page: None, slots: 0 };
        for (pin, page, n, fail_page, slots) in ops {
            if pin {
                o.fail_page = fail_page;
                o.slots = slots;
                let mut out = vec![0u64; n as usize];
                let _ = pin_pages(&mut t, &mut iommu, &mut o, page * PG, n, IOMMU_READ, &mut out);
            } else {
                unpin_pages(&mut t, &iommu, &mut o, page * PG, n);
            }
            let mut stored: BTreeMap<u64, i64> = BTreeMap::new();
            for e in t.0.values() {
                for v in e.pins.0.values() {
                    *stored.entry(v.pfn()).or_default() += 1;
                }
            }
            let b = book.borrow();
            let held: BTreeMap<u64, i64> = b.held.iter().filter(|(_, n)| **n != 0).map(|(p, n)| (*p, *n)).collect();
            prop_assert_eq!(&held, &stored);
            prop_assert_eq!(b.dropped, o.unpins);
            prop_assert_eq!(o.locked, stored.values().sum::<i64>());
        }
    }
}
