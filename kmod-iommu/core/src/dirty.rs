//! Dirty page tracking: per-mapping bitmaps and `VFIO_IOMMU_DIRTY_PAGES`.
//!
//! While tracking is on, every mapping owns a bitmap with one bit per page
//! of the smallest supported page size (plus one spare word).  Pages pinned
//! through `vfio_pin_pages()` and pages written through `vfio_dma_rw()` are
//! marked; when an IOMMU-backed group has not declared that it only dirties
//! pinned pages, every page of an IOMMU-mapped range is reported dirty.
//! Reporting copies the per-mapping bitmaps into the user bitmap at the bit
//! offset of each mapping, shifting and OR-ing the shared first word exactly
//! like `update_user_bitmap()`.

use super::dma::{find_dma, first_key, next_key, DmaEntry, DmaTree, VfioDma};
use super::errno::{Errno, EACCES, EINVAL};
use super::container::{min_pgshift, VfioIommu};
use super::pin::PfnStore;
use super::uapi::{
    DirtyBitmap, DirtyBitmapGet, DIRTY_BITMAP_GET_SIZE, DIRTY_BITMAP_MINSZ,
    VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP, VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
    VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
};

/// `DIRTY_BITMAP_PAGES_MAX`: `INT_MAX` pages, the limit of `bitmap_set()`.
pub const DIRTY_BITMAP_PAGES_MAX: u64 = i32::MAX as u64;

/// `DIRTY_BITMAP_SIZE_MAX`: bytes of a bitmap of `DIRTY_BITMAP_PAGES_MAX` bits (256 MiB).
pub const DIRTY_BITMAP_SIZE_MAX: u64 = dirty_bitmap_bytes(DIRTY_BITMAP_PAGES_MAX);

/// `DIRTY_BITMAP_BYTES(n)`: bytes of a bitmap of `n` bits rounded up to whole
/// u64 words.  Computed without the C `ALIGN` overflow for huge `n`.
pub const fn dirty_bitmap_bytes(n: u64) -> u64 {
    (n / 64 + if n & 63 != 0 { 1 } else { 0 }) * 8
}

/// Mirrors `verify_bitmap_size()`: `EINVAL` for zero pages, a zero-sized or
/// oversized bitmap, or a bitmap too small for `npages` bits.
pub fn verify_bitmap_size(npages: u64, bitmap_size: u64) -> Result<(), Errno> {
    if npages == 0
        || bitmap_size == 0
        || bitmap_size > DIRTY_BITMAP_SIZE_MAX
        || bitmap_size < dirty_bitmap_bytes(npages)
    {
        return Err(EINVAL);
    }
    Ok(())
}

/// The `pgshift = __ffs(bitmap.pgsize)` used before the page size itself is
/// validated.  For `pgsize == 0` the C shift is undefined; every such request
/// fails later with `EINVAL` anyway, so reporting `EINVAL` here is equivalent.
pub fn user_pgshift(pgsize: u64) -> Result<u32, Errno> {
    min_pgshift(pgsize)
}

/// Mirrors the size computation of `vfio_dma_bitmap_alloc()`: the number of
/// u64 words to allocate for a mapping of `size` bytes, including the spare
/// word used by the shift in `update_user_bitmap()`; `EINVAL` above
/// `DIRTY_BITMAP_PAGES_MAX` pages.
pub fn dma_bitmap_words(size: u64, pgsize: u64) -> Result<usize, Errno> {
    if pgsize == 0 {
        return Err(EINVAL);
    }
    let npages = size / pgsize;
    if npages > DIRTY_BITMAP_PAGES_MAX {
        return Err(EINVAL);
    }
    let words = dirty_bitmap_bytes(npages) / 8 + 1;
    usize::try_from(words).map_err(|_| EINVAL)
}

/// `bitmap_set(map, start, len)` that ignores bits beyond the end of `map`
/// instead of writing out of bounds.
pub fn bitmap_set(map: &mut [u64], start: u64, len: u64) {
    bitmap_fill(map, start, len, true);
}

/// `bitmap_clear(map, start, len)` that ignores bits beyond the end of `map`.
pub fn bitmap_clear(map: &mut [u64], start: u64, len: u64) {
    bitmap_fill(map, start, len, false);
}

/// Sets or clears the bit range `[start, start + len)`, clipped to `map`.
fn bitmap_fill(map: &mut [u64], start: u64, len: u64, set: bool) {
    let total = (map.len() as u64).saturating_mul(64);
    if start >= total {
        return;
    }
    let end = start.saturating_add(len).min(total);
    let mut bit = start;
    while bit < end {
        let word = (bit / 64) as usize;
        let off = bit % 64;
        let n = (64 - off).min(end - bit);
        let mask = if n == 64 {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << off
        };
        if let Some(w) = map.get_mut(word) {
            if set {
                *w |= mask;
            } else {
                *w &= !mask;
            }
        }
        bit += n;
    }
}

/// Tests one bit, false beyond the end of `map`.
pub fn test_bit(map: &[u64], bit: u64) -> bool {
    usize::try_from(bit / 64)
        .ok()
        .and_then(|w| map.get(w))
        .is_some_and(|w| w & (1u64 << (bit % 64)) != 0)
}

/// Mirrors `vfio_dma_populate_bitmap()`: marks every pinned page of the mapping.
pub fn populate_bitmap<P: PfnStore + ?Sized>(
    bitmap: &mut [u64],
    dma_iova: u64,
    pgshift: u32,
    pfns: &P,
) {
    pfns.for_each(|iova, _| {
        if let Some(off) = iova.checked_sub(dma_iova) {
            bitmap_set(bitmap, off >> pgshift, 1);
        }
    });
}

/// The user bitmap written by `update_user_bitmap()`, addressed in u64 words.
///
/// The kernel implements it over the `__user` pointer of `struct
/// vfio_bitmap` (`copy_from_user` / `copy_to_user`, `EFAULT` on failure); the
/// host tests over a `Vec<u64>`.
pub trait UserBitmap {
    /// Reads word `index` (`copy_from_user(&leftover, bitmap + index, 8)`).
    fn read_word(&mut self, index: u64) -> Result<u64, Errno>;

    /// Writes `words` starting at word `index` (`copy_to_user(bitmap + index, ..)`).
    fn write_words(&mut self, index: u64, words: &[u64]) -> Result<(), Errno>;
}

/// Mirrors `update_user_bitmap()`: copies the mapping's bitmap into the user
/// bitmap whose bit 0 is `base_iova`.
///
/// `mark_all` is `iommu->num_non_pinned_groups && dma->iommu_mapped`: the
/// whole mapping is then reported dirty (and stays marked in `dma_bitmap`,
/// as in C).  When the mapping does not start on a 64-page boundary the
/// bitmap is shifted left in place and the existing user word at the
/// destination is OR-ed in as a whole word (the C `bitmap_or()` works on
/// whole longs); the copy then writes `DIRTY_BITMAP_BYTES(nbits + shift)`
/// bytes, i.e. whole words, so bits of the last written word above the
/// mapping are overwritten with zero exactly as in C.
///
/// `dma_bitmap` must be the mapping's bitmap as sized by [`dma_bitmap_words`];
/// a shorter one is reported as `EINVAL` instead of being overrun.
pub fn update_user_bitmap<U: UserBitmap + ?Sized>(
    user: &mut U,
    dma_bitmap: &mut [u64],
    dma: &VfioDma,
    base_iova: u64,
    pgshift: u32,
    mark_all: bool,
) -> Result<(), Errno> {
    if pgshift >= 64 {
        return Err(EINVAL);
    }
    let nbits = dma.size >> pgshift;
    let bit_offset = dma.iova.checked_sub(base_iova).ok_or(EINVAL)? >> pgshift;
    let copy_offset = bit_offset / 64;
    let shift = (bit_offset % 64) as u32;
    let total_bits = nbits + u64::from(shift);
    let words = usize::try_from(dirty_bitmap_bytes(total_bits) / 8).map_err(|_| EINVAL)?;
    if words > dma_bitmap.len() {
        return Err(EINVAL);
    }

    if mark_all {
        bitmap_set(dma_bitmap, 0, nbits);
    }

    if shift != 0 {
        // __bitmap_shift_left(dst, src, shift, nbits + shift) in place:
        // walk from the top word down so every source word is read before
        // it is overwritten.
        let mut k = words;
        while k > 0 {
            k -= 1;
            let upper = dma_bitmap.get(k).copied().unwrap_or(0) << shift;
            let lower = if k > 0 {
                dma_bitmap.get(k - 1).copied().unwrap_or(0) >> (64 - shift)
            } else {
                0
            };
            if let Some(w) = dma_bitmap.get_mut(k) {
                *w = upper | lower;
            }
        }
        let leftover = user.read_word(copy_offset)?;
        if let Some(w) = dma_bitmap.get_mut(0) {
            *w |= leftover;
        }
    }

    let src = dma_bitmap.get(..words).ok_or(EINVAL)?;
    user.write_words(copy_offset, src)
}

/// The `VFIO_IOMMU_DIRTY_PAGES` operation selected by the flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyOp {
    /// `VFIO_IOMMU_DIRTY_PAGES_FLAG_START`.
    Start,
    /// `VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP`.
    Stop,
    /// `VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP`.
    GetBitmap,
}

/// The argument checks of `vfio_iommu_type1_dirty_pages()` before the
/// operation: `EACCES` on a v1 container (checked before the user copy, so
/// the kernel must call [`dirty_pages_v2_check`] first), then `EINVAL` for a
/// short `argsz`, unknown flags, or anything but exactly one flag.
pub fn check_dirty_args(args: &DirtyBitmap) -> Result<DirtyOp, Errno> {
    let mask = VFIO_IOMMU_DIRTY_PAGES_FLAG_START
        | VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP
        | VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;
    if args.argsz < DIRTY_BITMAP_MINSZ || args.flags & !mask != 0 {
        return Err(EINVAL);
    }
    // __ffs(flags) != __fls(flags): exactly one flag; zero flags end in the
    // final "return -EINVAL" of the C function.
    match args.flags {
        VFIO_IOMMU_DIRTY_PAGES_FLAG_START => Ok(DirtyOp::Start),
        VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP => Ok(DirtyOp::Stop),
        VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP => Ok(DirtyOp::GetBitmap),
        _ => Err(EINVAL),
    }
}

/// First check of `vfio_iommu_type1_dirty_pages()`: dirty tracking is a v2-only
/// feature (`EACCES`), tested before the arguments are even copied in.
pub fn dirty_pages_v2_check(iommu: &VfioIommu) -> Result<(), Errno> {
    if !iommu.v2 {
        return Err(EACCES);
    }
    Ok(())
}

/// The GET_BITMAP checks done before the container lock: `argsz` must hold a
/// `struct vfio_iommu_type1_dirty_bitmap_get` (checked before the copy; call
/// with `range == None` to run only that check), the range must not wrap,
/// the user bitmap must pass `access_ok()` (passed in by the kernel), and
/// `verify_bitmap_size()` must accept it.  All failures are `EINVAL`.
pub fn check_get_bitmap_unlocked(
    argsz: u32,
    range: Option<&DirtyBitmapGet>,
    access_ok: bool,
) -> Result<(), Errno> {
    let data_size = argsz.wrapping_sub(DIRTY_BITMAP_MINSZ);
    if data_size == 0 || data_size < DIRTY_BITMAP_GET_SIZE {
        return Err(EINVAL);
    }
    let Some(range) = range else {
        return Ok(());
    };
    // range.iova + range.size < range.iova
    if range.iova.checked_add(range.size).is_none() {
        return Err(EINVAL);
    }
    if !access_ok {
        return Err(EINVAL);
    }
    let pgshift = user_pgshift(range.bitmap.pgsize)?;
    verify_bitmap_size(range.size >> pgshift, range.bitmap.size)
}

/// Mirrors `vfio_dma_bitmap_alloc_all()` + the START branch: allocates and
/// populates a bitmap for every mapping unless tracking is already on.  On
/// failure the bitmaps allocated so far are freed and tracking stays off.
pub fn dirty_pages_start<T: DmaTree + ?Sized>(
    tree: &mut T,
    iommu: &mut VfioIommu,
) -> Result<(), Errno> {
    if iommu.dirty_page_tracking {
        return Ok(());
    }
    let pgshift = iommu.pgshift()?;
    let pgsize = iommu.min_pgsize()?;
    let mut cur = first_key(tree);
    while let Some(k) = cur {
        let res = match tree.get_mut(k) {
            Some(entry) => alloc_and_populate(entry, pgsize, pgshift),
            None => Ok(()),
        };
        if let Err(e) = res {
            // Free every bitmap below the failing mapping, as the C unwind does.
            let mut p = first_key(tree);
            while let Some(pk) = p {
                if pk >= k {
                    break;
                }
                if let Some(entry) = tree.get_mut(pk) {
                    entry.free_bitmap();
                }
                p = next_key(tree, pk);
            }
            return Err(e);
        }
        cur = next_key(tree, k);
    }
    iommu.dirty_page_tracking = true;
    Ok(())
}

/// `vfio_dma_bitmap_alloc()` followed by `vfio_dma_populate_bitmap()`.
fn alloc_and_populate<E: DmaEntry + ?Sized>(
    entry: &mut E,
    pgsize: u64,
    pgshift: u32,
) -> Result<(), Errno> {
    let words = dma_bitmap_words(entry.dma().size, pgsize)?;
    entry.alloc_bitmap(words)?;
    let parts = entry.parts_mut();
    if let Some(bitmap) = parts.bitmap {
        populate_bitmap(bitmap, parts.dma.iova, pgshift, &*parts.pfn_list);
    }
    Ok(())
}

/// Allocates the bitmap of a mapping created while tracking is on (the tail of
/// `vfio_dma_do_map()`); on `EINVAL`/`ENOMEM` the caller removes the mapping.
pub fn dma_bitmap_alloc<E: DmaEntry + ?Sized>(
    entry: &mut E,
    iommu: &VfioIommu,
) -> Result<(), Errno> {
    let pgshift = iommu.pgshift()?;
    let pgsize = iommu.min_pgsize()?;
    let words = dma_bitmap_words(entry.dma().size, pgsize)?;
    entry.alloc_bitmap(words)?;
    // A new mapping has no pinned page yet; populating keeps the rule uniform.
    let parts = entry.parts_mut();
    if let Some(bitmap) = parts.bitmap {
        populate_bitmap(bitmap, parts.dma.iova, pgshift, &*parts.pfn_list);
    }
    Ok(())
}

/// The STOP branch: turns tracking off and frees every bitmap (`vfio_dma_bitmap_free_all()`).
pub fn dirty_pages_stop<T: DmaTree + ?Sized>(tree: &mut T, iommu: &mut VfioIommu) {
    if !iommu.dirty_page_tracking {
        return;
    }
    iommu.dirty_page_tracking = false;
    let mut cur = first_key(tree);
    while let Some(k) = cur {
        if let Some(entry) = tree.get_mut(k) {
            entry.free_bitmap();
        }
        cur = next_key(tree, k);
    }
}

/// Mirrors `vfio_iommu_populate_bitmap_full()`: marks every page of every
/// mapping dirty (used on group detach when the dirty scope changes while
/// tracking is on).
pub fn populate_bitmap_full<T: DmaTree + ?Sized>(tree: &mut T, iommu: &VfioIommu) {
    let Ok(pgshift) = iommu.pgshift() else {
        return;
    };
    let mut cur = first_key(tree);
    while let Some(k) = cur {
        if let Some(entry) = tree.get_mut(k) {
            let parts = entry.parts_mut();
            let n = parts.dma.size >> pgshift;
            if let Some(bitmap) = parts.bitmap {
                bitmap_set(bitmap, 0, n);
            }
        }
        cur = next_key(tree, k);
    }
}

/// Mirrors the tail of `vfio_iommu_type1_detach_group()`: removing a group
/// that was not in pinned-page dirty scope promotes the container scope
/// (`num_non_pinned_groups--`) and, while tracking, marks every page of every
/// mapping dirty because that group may have written anywhere.
pub fn group_detached<T: DmaTree + ?Sized>(
    tree: &mut T,
    iommu: &mut VfioIommu,
    group_pinned_scope: bool,
) {
    if group_pinned_scope {
        return;
    }
    iommu.num_non_pinned_groups = iommu.num_non_pinned_groups.saturating_sub(1);
    if iommu.dirty_page_tracking {
        populate_bitmap_full(tree, iommu);
    }
}

/// Copies one mapping into the user bitmap based at `base_iova`, as done per
/// mapping by both GET_BITMAP and unmap-with-bitmap.  A mapping without a
/// bitmap while tracking is on cannot happen in the reference; it is
/// reported as `EINVAL` rather than dereferenced.
pub fn copy_dma_to_user<E, U>(
    entry: &mut E,
    iommu: &VfioIommu,
    user: &mut U,
    base_iova: u64,
    pgshift: u32,
) -> Result<(), Errno>
where
    E: DmaEntry + ?Sized,
    U: UserBitmap + ?Sized,
{
    let parts = entry.parts_mut();
    let mark_all = iommu.num_non_pinned_groups != 0 && parts.dma.iommu_mapped;
    let dma = *parts.dma;
    let bitmap = parts.bitmap.ok_or(EINVAL)?;
    update_user_bitmap(user, bitmap, &dma, base_iova, pgshift, mark_all)
}

/// Mirrors the locked part of the GET_BITMAP branch and
/// `vfio_iova_dirty_bitmap()`.
///
/// Order of failures (all `EINVAL` except user copies): bitmap page size
/// other than the smallest supported one, unaligned iova, zero or unaligned
/// size, tracking off, the range bisecting a mapping at its start or end,
/// then `EFAULT` from the user copies.  After each mapping is reported its
/// bitmap is reset to just its pinned pages, so pages written via dma_rw or
/// marked by the "all dirty" rule are reported once.
pub fn iova_dirty_bitmap<T, U>(
    tree: &mut T,
    iommu: &VfioIommu,
    user: &mut U,
    range: &DirtyBitmapGet,
) -> Result<(), Errno>
where
    T: DmaTree + ?Sized,
    U: UserBitmap + ?Sized,
{
    let iommu_pgsize = iommu.min_pgsize()?;
    let pgshift = iommu.pgshift()?;
    if range.bitmap.pgsize != iommu_pgsize {
        return Err(EINVAL);
    }
    if range.iova & (iommu_pgsize - 1) != 0 {
        return Err(EINVAL);
    }
    if range.size == 0 || range.size & (iommu_pgsize - 1) != 0 {
        return Err(EINVAL);
    }
    if !iommu.dirty_page_tracking {
        return Err(EINVAL);
    }
    let iova = range.iova;
    let size = range.size;
    let last = iova.checked_add(size - 1).ok_or(EINVAL)?;

    // The request must fully cover every mapping it touches.
    if let Some(k) = find_dma(tree, iova, 1) {
        if tree.get(k).is_some_and(|e| e.dma().iova != iova) {
            return Err(EINVAL);
        }
    }
    if let Some(k) = find_dma(tree, last, 0) {
        if tree.get(k).is_some_and(|e| !e.dma().ends_at(iova, size)) {
            return Err(EINVAL);
        }
    }

    let mut cur = tree.ceil_key(iova);
    while let Some(k) = cur {
        if k > last {
            break;
        }
        if let Some(entry) = tree.get_mut(k) {
            copy_dma_to_user(entry, iommu, user, iova, pgshift)?;
            let parts = entry.parts_mut();
            let n = parts.dma.size >> pgshift;
            if let Some(bitmap) = parts.bitmap {
                bitmap_clear(bitmap, 0, n);
                populate_bitmap(bitmap, parts.dma.iova, pgshift, &*parts.pfn_list);
            }
        }
        cur = next_key(tree, k);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{bitmap_clear, bitmap_set, test_bit};

    #[test]
    fn bitmap_set_and_clear_ranges() {
        let mut m = [0u64; 3];
        bitmap_set(&mut m, 60, 8);
        assert_eq!(m, [0xf << 60, 0xf, 0]);
        bitmap_set(&mut m, 64, 64);
        assert_eq!(m[1], u64::MAX);
        bitmap_clear(&mut m, 62, 4);
        assert_eq!((m[0], m[1]), (0x3 << 60, u64::MAX << 2));
        // Length 0 and ranges past the end are ignored without panicking.
        bitmap_set(&mut m, 10, 0);
        bitmap_set(&mut m, 190, 100);
        bitmap_set(&mut m, u64::MAX, u64::MAX);
        assert_eq!(m[2], 0b11 << 62);
        assert!(test_bit(&m, 191));
        assert!(!test_bit(&m, 192));
        assert!(!test_bit(&m, u64::MAX));
    }
}
