//! Externally pinned pages (`struct vfio_pfn`) and the mdev pin/unpin/dma_rw paths.
//!
//! Emulated-IOMMU devices (mdevs) pin guest pages through
//! `vfio_pin_pages()`; type1 records each pinned iova in the mapping's
//! `pfn_list` with a reference count so that repeated pins of the same
//! iova share one page reference.  The algorithms of
//! `vfio_iommu_type1_pin_pages()` / `vfio_iommu_type1_unpin_pages()` live
//! here, with everything that touches struct pages or mm accounting behind
//! the [`PinOps`] trait.
//!
//! Pins are values: [`PinOps`] hands out each page's pin as a
//! [`PfnStore::Pin`], which the store keeps in the page's [`VfioPfn`] and
//! which goes back to [`PinOps::unpin`] when the last reference goes. The
//! kernel's pin type owns the page's pin (it is not `Copy`, and gives the
//! pin back if dropped), so these paths can only give back pins they were
//! given, each once; the host models use a bare frame number.

use super::dirty::bitmap_set;
use super::dma::{DmaEntry, DmaTree, VfioDma};
use super::errno::{Errno, E2BIG, EACCES, EBUSY, EFAULT, EINVAL, EPERM};
use super::container::{VfioIommu, PAGE_SIZE};
use super::uapi::{IOMMU_READ, IOMMU_WRITE};

/// `VFIO_PIN_PAGES_MAX_ENTRIES`: `PAGE_SIZE / sizeof(unsigned long)`.
pub const VFIO_PIN_PAGES_MAX_ENTRIES: i32 = (PAGE_SIZE / 8) as i32;

/// The pin of one page, as [`PinOps`] makes it and a [`PfnStore`] keeps it.
pub trait PagePin {
    /// The page's frame number.
    fn pfn(&self) -> u64;
}

/// A bare frame number, for models that pin nothing (the host tests).
impl PagePin for u64 {
    fn pfn(&self) -> u64 {
        *self
    }
}

/// `struct vfio_pfn` without the rbtree node; the iova is the container key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VfioPfn<P = u64> {
    /// The pin of the page (the C struct's `pfn`).
    pub pin: P,
    /// Number of outstanding pins of this iova (`ref_count`).
    pub ref_count: u32,
}

impl<P: PagePin> VfioPfn<P> {
    /// Host page frame number of the pinned page.
    #[inline]
    pub fn pfn(&self) -> u64 {
        self.pin.pfn()
    }
}

/// A mapping's `pfn_list`: pinned pages keyed by iova.
///
/// Kernel implementation over `kernel::rbtree::RBTree<u64, VfioPfn>`: `Slot`
/// is an `RBTreeNodeReservation<u64, VfioPfn>` obtained before taking the
/// container lock, and `insert` is `tree.insert(slot.into_node(iova, vpfn))`.
pub trait PfnStore {
    /// A preallocated node, so that insertion itself never allocates.
    type Slot;

    /// The pin of one page, kept with its entry.
    type Pin: PagePin;

    /// `RB_EMPTY_ROOT(&dma->pfn_list)`.
    fn is_empty(&self) -> bool;

    /// `vfio_find_vpfn()`.
    fn get(&self, iova: u64) -> Option<&VfioPfn<Self::Pin>>;

    /// `vfio_find_vpfn()`, mutably.
    fn get_mut(&mut self, iova: u64) -> Option<&mut VfioPfn<Self::Pin>>;

    /// `vfio_link_pfn()` using a preallocated node.
    fn insert(&mut self, slot: Self::Slot, iova: u64, vpfn: VfioPfn<Self::Pin>);

    /// `vfio_unlink_pfn()`.
    fn remove(&mut self, iova: u64) -> Option<VfioPfn<Self::Pin>>;

    /// Drops one reference of the pin at `iova` and unlinks the entry when
    /// that was the last one ([`put_vfio_pfn`]), keeping the entry's node if
    /// the store can: the unpin path hands it to [`PinOps::recycle_slot`]
    /// so that a later pin can use it again. The default searches twice and
    /// frees the node; a store may do it with one search.
    fn put_ref(&mut self, iova: u64) -> (PutPfn<Self::Pin>, Option<Self::Slot>) {
        (put_vfio_pfn(self, iova), None)
    }

    /// Calls `f` with every pinned iova and its entry, in iova order.
    fn for_each<F: FnMut(u64, &VfioPfn<Self::Pin>)>(&self, f: F);
}

/// The pin type of a mapping's [`PfnStore`].
pub type PinOf<E> = <<E as DmaEntry>::Pfns as PfnStore>::Pin;

/// The kernel services the pin paths need; each method names the C helper it stands for.
pub trait PinOps<E: DmaEntry> {
    /// Room for the pins of one [`PinOps::pin_run_external`] call, which
    /// the caller keeps on its stack while it takes them out (so that the
    /// pins themselves are small to move).
    type Room: Default;

    /// The pins of one [`PinOps::pin_run_external`] call, in page order.
    type Pins<'r>: Iterator<Item = PinOf<E>>
    where
        Self: 'r;

    /// `vfio_pin_page_external()`: pins the single page at `vaddr` in the
    /// mapping's mm and, if `do_accounting`, charges it to `locked_vm`
    /// (not for reserved pfns).  Returns the pin.
    fn pin_page_external(
        &mut self,
        entry: &mut E,
        vaddr: u64,
        do_accounting: bool,
    ) -> Result<PinOf<E>, Errno>;

    /// Pins a run of `npage` (at least 1) pages of the mapping that are
    /// contiguous from `vaddr`, none of them pinned yet; returns the pins
    /// of the pages from the start of the run it pinned (at least 1, at
    /// most `npage`), or the error of the first page.
    ///
    /// Every page it pins must end up exactly as if `pin_page_external` had
    /// pinned it (same pin, same accounting), so that an implementation can
    /// pin the run with one `pin_user_pages_remote` and one locked-memory
    /// charge where the C code goes page by page. When the run cannot be
    /// done as a whole (a partial pin, a charge over the limit) it may pin
    /// fewer pages: the caller continues page by page, which then finds the
    /// exact page and errno of a failure.
    fn pin_run_external<'r>(
        &mut self,
        entry: &mut E,
        vaddr: u64,
        npage: usize,
        do_accounting: bool,
        room: &'r mut Self::Room,
    ) -> Result<Self::Pins<'r>, Errno>;

    /// `pfn_valid()`.
    fn pfn_valid(&self, pfn: u64) -> bool;

    /// `put_pfn()`: gives back a pin; true if it was of a real
    /// (non-reserved) page, which is then uncharged.
    fn unpin(&mut self, pin: PinOf<E>) -> bool;

    /// `vfio_lock_acct(dma, npage, async)` for a non-zero `npage`.
    fn lock_acct(&mut self, entry: &mut E, npage: i64, is_async: bool) -> Result<(), Errno>;

    /// Hands out a preallocated node for `vfio_add_to_pfn_list()`;
    /// `ENOMEM` stands for the C `kzalloc()` failure.
    fn take_slot(&mut self) -> Result<<E::Pfns as PfnStore>::Slot, Errno>;

    /// Takes back the node of an unpinned page for a later `take_slot`;
    /// the default frees it.
    fn recycle_slot(&mut self, slot: <E::Pfns as PfnStore>::Slot) {
        drop(slot);
    }

    /// Sets `pinned_page_dirty_scope` on the calling device's group and
    /// returns true if it was not set before (the C code then decrements
    /// `num_non_pinned_groups`).
    fn promote_pinned_scope(&mut self) -> bool;
}

/// The checks of `vfio_pin_pages()` and `vfio_device_container_pin_pages()`
/// that run before the type1 callback: `EINVAL` for no page array, zero
/// pages or a device without `dma_unmap`, then `E2BIG` above
/// `VFIO_PIN_PAGES_MAX_ENTRIES`.  (The `ENOTTY` for a backend without
/// `pin_pages` cannot happen with type1.)
pub fn vfio_pin_pages_check(
    npage: i32,
    have_pages: bool,
    device_has_dma_unmap: bool,
) -> Result<(), Errno> {
    if !have_pages || npage == 0 {
        return Err(EINVAL);
    }
    if !device_has_dma_unmap {
        return Err(EINVAL);
    }
    if npage > VFIO_PIN_PAGES_MAX_ENTRIES {
        return Err(E2BIG);
    }
    Ok(())
}

/// The iova of page `i` of a pin request: `user_iova + PAGE_SIZE * i` in
/// `dma_addr_t` (wrapping) arithmetic as in C.
fn page_iova(user_iova: u64, i: i32) -> u64 {
    user_iova.wrapping_add(PAGE_SIZE.wrapping_mul(i as u64))
}

/// The mapping used for one page of a pin/unpin request:
/// `vfio_find_dma(iommu, iova, PAGE_SIZE)`.
///
/// Deviation: the C code computes `iova - dma->iova` even if an unaligned
/// `iova` starts below the selected mapping (it only overlaps it), which
/// pins a page outside the mapping.  We refuse such a page (`None`, which
/// the callers turn into the same `EINVAL` as "not mapped").
///
/// That is the mapping that contains `iova`, if any: it is the lowest one
/// selected, and any other starts above `iova`. At most one mapping
/// contains a byte, so [`DmaTree::find_any`] of that byte finds it.
#[inline]
fn pin_lookup<T: DmaTree + ?Sized>(tree: &mut T, iova: u64) -> Option<u64> {
    tree.find_any(iova, 1)
}

/// Mirrors `vfio_unpin_page_external()`: drops one pin of `iova` in the
/// mapping under `key`; returns how many real pages were unpinned (0 or 1).
/// Inlined: it is the body of the unpin loop, and its own frame cost as
/// much as a reference drop.
#[inline(always)]
fn unpin_page_external<T, O>(
    tree: &mut T,
    ops: &mut O,
    key: u64,
    iova: u64,
    do_accounting: bool,
) -> u32
where
    T: DmaTree + ?Sized,
    O: PinOps<T::Entry> + ?Sized,
{
    let Some(entry) = tree.get_mut(key) else {
        return 0;
    };
    let unlocked = {
        let parts = entry.parts_mut();
        // `put_vfio_pfn`, keeping the node of a released entry.
        let (put, slot) = parts.pfn_list.put_ref(iova);
        if let Some(slot) = slot {
            ops.recycle_slot(slot);
        }
        match put {
            PutPfn::NotPinned => return 0,
            PutPfn::StillPinned => 0,
            PutPfn::Released(pin) => u32::from(ops.unpin(pin)),
        }
    };
    if do_accounting && unlocked != 0 {
        // vfio_lock_acct() returns 0 at once for npage == 0, so the call is
        // skipped here; its own failure is ignored by the C caller too.
        let _ = ops.lock_acct(entry, -i64::from(unlocked), true);
    }
    unlocked
}

/// Outcome of dropping one reference of a pinned iova.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutPfn<P = u64> {
    /// No `vfio_pfn` exists for the iova.
    NotPinned,
    /// The reference count dropped but other pins remain.
    StillPinned,
    /// The last reference went away; the entry was removed and its pin
    /// must be given back ([`PinOps::unpin`], the C `put_pfn`).
    Released(P),
}

/// Mirrors `vfio_iova_put_vfio_pfn()` (after `vfio_find_vpfn()`): decrements the
/// reference count and removes the entry at zero.
pub fn put_vfio_pfn<P: PfnStore + ?Sized>(pfns: &mut P, iova: u64) -> PutPfn<P::Pin> {
    let Some(vpfn) = pfns.get_mut(iova) else {
        return PutPfn::NotPinned;
    };
    vpfn.ref_count = vpfn.ref_count.wrapping_sub(1);
    if vpfn.ref_count != 0 {
        return PutPfn::StillPinned;
    }
    match pfns.remove(iova) {
        Some(v) => PutPfn::Released(v.pin),
        None => PutPfn::NotPinned,
    }
}

/// Mirrors `vfio_iova_get_vfio_pfn()`: takes one more reference on an already
/// pinned iova and returns its pfn, or `None` if the iova is not pinned.
pub fn get_vfio_pfn<P: PfnStore + ?Sized>(pfns: &mut P, iova: u64) -> Option<u64> {
    let vpfn = pfns.get_mut(iova)?;
    // The C counter is an unsigned int that wraps; keep the same width.
    vpfn.ref_count = vpfn.ref_count.wrapping_add(1);
    Some(vpfn.pfn())
}

/// Mirrors `vfio_add_to_pfn_list()` with a preallocated node: a new entry with one reference.
pub fn add_to_pfn_list<P: PfnStore + ?Sized>(pfns: &mut P, slot: P::Slot, iova: u64, pin: P::Pin) {
    pfns.insert(slot, iova, VfioPfn { pin, ref_count: 1 });
}

/// Mirrors `vfio_iommu_type1_pin_pages()` from the point where the container
/// lock is held (the caller checks `!iommu || !pages` and takes the lock).
///
/// Order of failures: `EACCES` on v1 (checked before the lock in C, which is
/// not observable), `EBUSY` while any vaddr is invalid, `EINVAL` with no
/// registered `dma_unmap` device, then per page `EINVAL` if the page is not
/// mapped, `EPERM` if the mapping lacks `prot`, or the error of the kernel's
/// pin/slot helpers.  On failure every page pinned so far by this call is
/// unpinned again and `pages` is zeroed up to the failing index.  A negative
/// `npage` pins nothing and succeeds with 0, as in C.  `pages` shorter than
/// `npage` is reported as `EINVAL` before anything is pinned.
pub fn pin_pages<T, O>(
    tree: &mut T,
    iommu: &mut VfioIommu,
    ops: &mut O,
    user_iova: u64,
    npage: i32,
    prot: u32,
    pages: &mut [u64],
) -> Result<i32, Errno>
where
    T: DmaTree + ?Sized,
    O: PinOps<T::Entry> + ?Sized,
{
    if !iommu.v2 {
        return Err(EACCES);
    }
    if iommu.vaddr_invalid_count != 0 {
        return Err(EBUSY);
    }
    if !iommu.has_devices {
        return Err(EINVAL);
    }
    if npage > 0 && pages.len() < npage as usize {
        return Err(EINVAL);
    }
    // Accounting is done here only when no IOMMU domain already pinned and
    // accounted every page of every mapping.
    let do_accounting = !iommu.has_domains;
    let pgshift = iommu.pgshift();

    let mut i: i32 = 0;
    let mut err: Option<Errno> = None;
    while i < npage {
        // `pin_run` fills `pages[i..i + n]`; on failure `i + n` is the
        // failing page, and pages `0..i + n` are the ones to unwind, as if
        // the pages had been pinned one at a time.
        match pin_run(tree, iommu, ops, user_iova, i, npage, prot, do_accounting, pgshift, pages) {
            Ok(n) => i += n.max(1),
            Err((n, e)) => {
                i += n;
                err = Some(e);
                break;
            }
        }
    }

    if let Some(e) = err {
        // pin_unwind: release what this call pinned, in order.
        if let Some(slot) = pages.get_mut(i as usize) {
            *slot = 0;
        }
        for j in 0..i {
            let iova = page_iova(user_iova, j);
            if let Some(key) = pin_lookup(tree, iova) {
                unpin_page_external(tree, ops, key, iova, do_accounting);
            }
            if let Some(slot) = pages.get_mut(j as usize) {
                *slot = 0;
            }
        }
        return Err(e);
    }

    if ops.promote_pinned_scope() {
        iommu.num_non_pinned_groups = iommu.num_non_pinned_groups.saturating_sub(1);
    }
    Ok(i)
}

/// One or more iterations of the pin loop of `vfio_iommu_type1_pin_pages()`,
/// from page `i`: an already pinned page takes one more reference; an
/// unpinned one is pinned together with the following pages of the request
/// that lie in the same mapping and are not pinned yet (one
/// [`PinOps::pin_run_external`] call), and each is then recorded as the C
/// loop records it. Returns how many pages were done, or, on failure, how
/// many were done before the failing page and the errno.
#[allow(clippy::too_many_arguments)]
fn pin_run<T, O>(
    tree: &mut T,
    iommu: &VfioIommu,
    ops: &mut O,
    user_iova: u64,
    i: i32,
    npage: i32,
    prot: u32,
    do_accounting: bool,
    pgshift: Result<u32, Errno>,
    pages: &mut [u64],
) -> Result<i32, (i32, Errno)>
where
    T: DmaTree + ?Sized,
    O: PinOps<T::Entry> + ?Sized,
{
    let iova = page_iova(user_iova, i);
    let key = pin_lookup(tree, iova).ok_or((0, EINVAL))?;
    let entry = tree.get_mut(key).ok_or((0, EINVAL))?;
    let dma: VfioDma = *entry.dma();
    if (dma.prot & prot) != prot {
        return Err((0, EPERM));
    }
    let first = i as usize;
    if let Some(pfn) = get_vfio_pfn(entry.parts_mut().pfn_list, iova) {
        if let Some(slot) = pages.get_mut(first) {
            *slot = pfn;
        }
        return Ok(1);
    }

    // The run: the next pages of the request, while they are in this
    // mapping (so the per-page lookup would pick it too, with the same
    // prot check) and not pinned yet.
    let mut run: i32 = 1;
    while i + run < npage {
        let next = page_iova(user_iova, i + run);
        if !dma.contains(next) || next < iova || entry.pfn_list().get(next).is_some() {
            break;
        }
        run += 1;
    }
    let out = pages.get_mut(first..first + run as usize).ok_or((0, EINVAL))?;
    let remote_vaddr = dma.vaddr.wrapping_add(iova - dma.iova);
    let mut room = O::Room::default();
    let mut pins = ops
        .pin_run_external(entry, remote_vaddr, out.len(), do_accounting, &mut room)
        .map_err(|e| (0, e))?;

    let mut t = 0usize;
    while t < out.len() {
        let Some(pin) = pins.next() else { break };
        let pfn = pin.pfn();
        out[t] = pfn;
        let page_iova_t = page_iova(user_iova, i + t as i32);
        let failed = if !ops.pfn_valid(pfn) {
            // As in C, the page itself is left as it is: pinned and charged
            // (a pinned page always has a valid pfn, so this does not
            // happen; device memory has no pin to leak).
            core::mem::forget(pin);
            Some(EINVAL)
        } else {
            match ops.take_slot() {
                Ok(slot) => {
                    let parts = entry.parts_mut();
                    add_to_pfn_list(parts.pfn_list, slot, page_iova_t, pin);
                    if iommu.dirty_page_tracking {
                        // The bitmap is kept in units of the smallest supported page size.
                        if let (Some(bitmap), Ok(shift)) = (parts.bitmap, pgshift) {
                            bitmap_set(bitmap, (page_iova_t - dma.iova) >> shift, 1);
                        }
                    }
                    None
                }
                Err(e) => {
                    if ops.unpin(pin) && do_accounting {
                        let _ = ops.lock_acct(entry, -1, true);
                    }
                    Some(e)
                }
            }
        };
        if let Some(e) = failed {
            // Give back the pages of the run after the failing one: the
            // page-by-page loop would not have pinned them.
            for (later, pin) in out.iter_mut().skip(t + 1).zip(pins) {
                if ops.unpin(pin) && do_accounting {
                    let _ = ops.lock_acct(entry, -1, true);
                }
                *later = 0;
            }
            return Err((t as i32, e));
        }
        t += 1;
    }
    if t == 0 {
        // `pin_run_external` pinned nothing, against its contract.
        return Err((0, EFAULT));
    }
    Ok(t as i32)
}

/// The check of `vfio_device_container_unpin_pages()`: a request with
/// `npage <= 0` or above `VFIO_PIN_PAGES_MAX_ENTRIES` is dropped with a WARN.
pub fn vfio_unpin_pages_check(npage: i32) -> bool {
    npage > 0 && npage <= VFIO_PIN_PAGES_MAX_ENTRIES
}

/// Mirrors `vfio_iommu_type1_unpin_pages()`: drops one pin per page until a
/// page is not mapped.  Returns the number of pages processed; the C code
/// WARNs when that differs from `npage`, and also WARNs and does nothing on
/// a v1 container (we return 0 then).
pub fn unpin_pages<T, O>(
    tree: &mut T,
    iommu: &VfioIommu,
    ops: &mut O,
    user_iova: u64,
    npage: i32,
) -> i32
where
    T: DmaTree + ?Sized,
    O: PinOps<T::Entry> + ?Sized,
{
    if !iommu.v2 {
        return 0;
    }
    let do_accounting = !iommu.has_domains;
    // Pages released in a row from one mapping are uncharged together, with
    // one `lock_acct` call instead of one per page (the C code charges
    // each page at once; the sum is the same and nothing can look at the
    // charge in between, as the container lock is held throughout).
    let mut pending: Option<(u64, i64)> = None;
    let mut i = 0;
    while i < npage {
        let iova = page_iova(user_iova, i);
        let Some(key) = pin_lookup(tree, iova) else {
            break;
        };
        if let Some((k, n)) = pending.filter(|(k, _)| *k != key) {
            uncharge(tree, ops, k, n);
            pending = None;
        }
        let released = unpin_page_external(tree, ops, key, iova, false);
        if do_accounting && released != 0 {
            let (_, n) = pending.get_or_insert((key, 0));
            *n += i64::from(released);
        }
        i += 1;
    }
    if let Some((k, n)) = pending {
        uncharge(tree, ops, k, n);
    }
    i
}

/// Removes `npage` released pages from the locked-memory charge of the
/// mapping under `key` (`vfio_lock_acct(dma, -npage, true)`, whose failure
/// the C callers ignore).
#[inline(always)]
fn uncharge<T, O>(tree: &mut T, ops: &mut O, key: u64, npage: i64)
where
    T: DmaTree + ?Sized,
    O: PinOps<T::Entry> + ?Sized,
{
    if let Some(entry) = tree.get_mut(key) {
        let _ = ops.lock_acct(entry, -npage, true);
    }
}

/// `vfio_dma_rw()` argument check: a NULL buffer or zero length is `EINVAL`.
pub fn vfio_dma_rw_check(have_data: bool, len: u64) -> Result<(), Errno> {
    if !have_data || len == 0 {
        return Err(EINVAL);
    }
    Ok(())
}

/// `vfio_iommu_type1_dma_rw()` under the lock: refused with `EBUSY` while a
/// vaddr is invalid.
pub fn dma_rw_check(iommu: &VfioIommu) -> Result<(), Errno> {
    if iommu.vaddr_invalid_count != 0 {
        return Err(EBUSY);
    }
    Ok(())
}

/// One chunk of a `vfio_dma_rw()` copy, confined to a single mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRwChunk {
    /// Key (iova) of the mapping.
    pub key: u64,
    /// Offset of the chunk within the mapping.
    pub offset: u64,
    /// User virtual address to copy to/from.
    pub vaddr: u64,
    /// Bytes to copy in this chunk.
    pub count: u64,
}

/// Mirrors the lookup half of `vfio_iommu_type1_dma_rw_chunk()`: `EINVAL` if
/// no mapping contains `iova`, `EPERM` if a write hits a read-only mapping or
/// the mapping is not readable at all (the C test requires `IOMMU_READ`
/// even for writes).  The kernel then checks the mm (`EPERM` if it is gone),
/// copies `count` bytes, marks them dirty with [`dma_rw_mark_dirty`] on a
/// successful write, and returns `EFAULT` if nothing was copied.
pub fn dma_rw_chunk<T: DmaTree + ?Sized>(
    tree: &mut T,
    iova: u64,
    count: u64,
    write: bool,
) -> Result<DmaRwChunk, Errno> {
    // The one mapping that contains `iova` (`vfio_find_dma(iova, 1)`).
    let key = tree.find_any(iova, 1).ok_or(EINVAL)?;
    dma_rw_chunk_of(tree.get(key).ok_or(EINVAL)?.dma(), iova, count, write)
}

/// [`dma_rw_chunk`] once the mapping `dma` that contains `iova` is found.
#[inline]
pub fn dma_rw_chunk_of(dma: &VfioDma, iova: u64, count: u64, write: bool) -> Result<DmaRwChunk, Errno> {
    if (write && dma.prot & IOMMU_WRITE == 0) || dma.prot & IOMMU_READ == 0 {
        return Err(EPERM);
    }
    // `dma` contains `iova` (caller), so the subtractions do not wrap.
    let offset = iova.wrapping_sub(dma.iova);
    let count = count.min(dma.size.wrapping_sub(offset));
    Ok(DmaRwChunk {
        key: dma.iova,
        offset,
        vaddr: dma.vaddr.wrapping_add(offset),
        count,
    })
}

/// Marks the pages written by a `vfio_dma_rw()` chunk dirty when tracking is on.
pub fn dma_rw_mark_dirty<E: DmaEntry + ?Sized>(
    iommu: &VfioIommu,
    entry: &mut E,
    offset: u64,
    copied: u64,
) {
    if copied == 0 || !iommu.dirty_page_tracking {
        return;
    }
    let Ok(shift) = iommu.pgshift() else {
        return;
    };
    let Some(bitmap) = entry.parts_mut().bitmap else {
        return;
    };
    let first = offset >> shift;
    let last = offset.saturating_add(copied - 1) >> shift;
    bitmap_set(bitmap, first, last - first + 1);
}
