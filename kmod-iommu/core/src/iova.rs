//! The list of allowed IOVA ranges (`iommu->iova_list`) and its maintenance
//! on group attach/detach.
//!
//! The list starts *empty* when the container is opened, and an empty list
//! allows every iova (a container holding only mdev devices never gets a
//! list).  The first IOMMU-backed group sets it to the domain aperture
//! minus the group's reserved regions; later groups shrink the aperture and
//! punch more holes; a detach recomputes it.
//!
//! The kernel works on a copy (as the C code does) held in an
//! [`IovaList`], a fixed-capacity view over a caller-allocated buffer, so
//! no function here allocates.  [`exclude_capacity`] tells how large the
//! buffer must be.

use super::dma::{find_dma, DmaTree};
use super::errno::{Errno, EINVAL, ENOMEM};

/// `struct vfio_iova`: an allowed range, both ends inclusive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VfioIova {
    /// First allowed iova.
    pub start: u64,
    /// Last allowed iova (inclusive).
    pub end: u64,
}

/// `enum iommu_resv_type` (`include/linux/iommu.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResvType {
    /// `IOMMU_RESV_DIRECT`: must be mapped 1:1 at all times.
    Direct,
    /// `IOMMU_RESV_DIRECT_RELAXABLE`: 1:1 but relaxable for assignment; ignored by type1.
    DirectRelaxable,
    /// `IOMMU_RESV_RESERVED`: never map this.
    Reserved,
    /// `IOMMU_RESV_MSI`: hardware MSI region.
    Msi,
    /// `IOMMU_RESV_SW_MSI`: software-managed MSI window.
    SwMsi,
}

/// `struct iommu_resv_region` minus the list and free callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResvRegion {
    /// First address of the region.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Kind of region.
    pub kind: ResvType,
}

/// A list of IOVA ranges stored in a caller-provided buffer.
#[derive(Debug)]
pub struct IovaList<'a> {
    buf: &'a mut [VfioIova],
    len: usize,
}

impl<'a> IovaList<'a> {
    /// Wraps `buf`, whose first `len` elements are the current list (`len`
    /// is clamped to the buffer length).
    pub fn new(buf: &'a mut [VfioIova], len: usize) -> Self {
        let len = len.min(buf.len());
        Self { buf, len }
    }

    /// The ranges in order.
    pub fn as_slice(&self) -> &[VfioIova] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `list_empty(iova)`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes every range (`vfio_iommu_iova_free()`).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends a range (`vfio_iommu_iova_insert()` at the tail); `ENOMEM`
    /// when the buffer is full, standing for the C `kmalloc()` failure.
    pub fn push(&mut self, start: u64, end: u64) -> Result<(), Errno> {
        self.insert(self.len, VfioIova { start, end })
    }

    /// Inserts `r` before index `idx` (`list_add_tail(&new, &node->list)`).
    fn insert(&mut self, idx: usize, r: VfioIova) -> Result<(), Errno> {
        if self.len >= self.buf.len() || idx > self.len {
            return Err(ENOMEM);
        }
        let tail = self.buf.get_mut(idx..=self.len).ok_or(ENOMEM)?;
        tail.rotate_right(1);
        if let Some(slot) = self.buf.get_mut(idx) {
            *slot = r;
        }
        self.len += 1;
        Ok(())
    }

    /// Removes the range at `idx`.
    fn remove(&mut self, idx: usize) {
        if idx >= self.len {
            return;
        }
        if let Some(tail) = self.buf.get_mut(idx..self.len) {
            tail.rotate_left(1);
        }
        self.len -= 1;
    }

    fn get(&self, idx: usize) -> Option<VfioIova> {
        self.as_slice().get(idx).copied()
    }

    fn get_mut(&mut self, idx: usize) -> Option<&mut VfioIova> {
        if idx >= self.len {
            return None;
        }
        self.buf.get_mut(idx)
    }
}

/// Buffer size that is always enough for [`aper_resize`] followed by
/// [`resv_exclude`] with `nr_resv` regions on a list of `cur_len` ranges:
/// each region splits at most one range into two.
pub fn exclude_capacity(cur_len: usize, nr_resv: usize) -> usize {
    cur_len.max(1).saturating_add(nr_resv)
}

/// Mirrors `vfio_iommu_iova_dma_valid()`: true if `[start, end]` lies inside
/// one range, or if the list is empty (container without IOMMU domain).
pub fn iova_dma_valid(iovas: &[VfioIova], start: u64, end: u64) -> bool {
    iovas.is_empty() || iovas.iter().any(|n| start >= n.start && end <= n.end)
}

/// Mirrors `vfio_iommu_aper_conflict()`: true if a new domain aperture
/// `[start, end]` is disjoint from the current list, or would leave an
/// existing mapping outside it.
///
/// The C code queries `vfio_find_dma(end + 1, last->end - end)`, whose
/// `start + size` wraps to 0 when the current list ends at `U64_MAX`, so it
/// misses mappings above the new end; we test the range in exact arithmetic.
pub fn aper_conflict<T: DmaTree + ?Sized>(
    tree: &mut T,
    iovas: &[VfioIova],
    start: u64,
    end: u64,
) -> bool {
    let (Some(first), Some(last)) = (iovas.first(), iovas.last()) else {
        return false;
    };
    // Disjoint sets: conflict.
    if start > last.end || end < first.start {
        return true;
    }
    // Existing mappings below the new start.
    if start > first.start && find_dma(tree, first.start, start - first.start).is_some() {
        return true;
    }
    // Existing mappings beyond the new end.
    if end < last.end && find_dma(tree, end + 1, last.end - end).is_some() {
        return true;
    }
    false
}

/// Mirrors `vfio_iommu_aper_resize()`: clips the list to `[start, end]`, or
/// creates it with that single range when it is empty.
///
/// Edge cases are kept from C: a range whose *last* address equals the new
/// start, or whose *first* address equals the new end, is dropped entirely.
pub fn aper_resize(list: &mut IovaList<'_>, start: u64, end: u64) -> Result<(), Errno> {
    if list.is_empty() {
        return list.push(start, end);
    }

    // Adjust the list start.
    while let Some(node) = list.get(0) {
        if start < node.start {
            break;
        }
        if start >= node.start && start < node.end {
            if let Some(n) = list.get_mut(0) {
                n.start = start;
            }
            break;
        }
        // Delete ranges before the new start.
        list.remove(0);
    }

    // Adjust the list end.
    let mut i = 0;
    while let Some(node) = list.get(i) {
        if end > node.end {
            i += 1;
            continue;
        }
        if end > node.start && end <= node.end {
            if let Some(n) = list.get_mut(i) {
                n.end = end;
            }
            i += 1;
            continue;
        }
        // Delete ranges after the new end.
        list.remove(i);
    }
    Ok(())
}

/// Mirrors `vfio_iommu_resv_conflict()`: true if a non-relaxable reserved
/// region overlaps an existing mapping (with the `vfio_find_dma()` semantics,
/// so a zero-length region only conflicts when strictly inside a mapping).
pub fn resv_conflict<T, I>(tree: &mut T, resv: I) -> bool
where
    T: DmaTree + ?Sized,
    I: IntoIterator<Item = ResvRegion>,
{
    resv.into_iter()
        .filter(|r| r.kind != ResvType::DirectRelaxable)
        .any(|r| find_dma(tree, r.start, r.length).is_some())
}

/// Mirrors `vfio_iommu_resv_exclude()`: punches every non-relaxable reserved
/// region out of the list; `EINVAL` if nothing is left.
///
/// The region end is `start + length - 1` in wrapping arithmetic, as in C.
pub fn resv_exclude<I>(list: &mut IovaList<'_>, resv: I) -> Result<(), Errno>
where
    I: IntoIterator<Item = ResvRegion>,
{
    for r in resv {
        if r.kind == ResvType::DirectRelaxable {
            continue;
        }
        let start = r.start;
        let end = r.start.wrapping_add(r.length).wrapping_sub(1);

        let mut i = 0;
        while let Some(n) = list.get(i) {
            // No overlap.
            if start > n.end || end < n.start {
                i += 1;
                continue;
            }
            // The C code inserts the surviving pieces before the node and
            // then deletes it; replacing the node in place gives the same
            // sorted list without needing room for a transient extra entry.
            let below = (start > n.start).then(|| VfioIova {
                start: n.start,
                end: start - 1,
            });
            let above = (end < n.end).then(|| VfioIova {
                start: end + 1,
                end: n.end,
            });
            match (below, above) {
                (Some(b), Some(a)) => {
                    list.insert(i + 1, a)?;
                    if let Some(slot) = list.get_mut(i) {
                        *slot = b;
                    }
                    i += 2;
                }
                (Some(piece), None) | (None, Some(piece)) => {
                    if let Some(slot) = list.get_mut(i) {
                        *slot = piece;
                    }
                    i += 1;
                }
                (None, None) => list.remove(i),
            }
        }
    }
    if list.is_empty() {
        return Err(EINVAL);
    }
    Ok(())
}

/// Mirrors `vfio_iommu_has_sw_msi()`: the base of the software MSI window,
/// unless a hardware MSI region takes precedence.
pub fn has_sw_msi<I: IntoIterator<Item = ResvRegion>>(resv: I) -> Option<u64> {
    let mut base = None;
    for r in resv {
        match r.kind {
            ResvType::Msi => return None,
            ResvType::SwMsi => base = Some(r.start),
            _ => {}
        }
    }
    base
}

/// Mirrors `vfio_iommu_aper_expand()`: after a domain is removed, the first
/// and last ranges of the copy are widened to the intersection of the
/// remaining domains' apertures (`[0, U64_MAX]` with none left).
pub fn aper_expand<I: IntoIterator<Item = (u64, u64)>>(list: &mut IovaList<'_>, apertures: I) {
    if list.is_empty() {
        return;
    }
    let mut start = 0u64;
    let mut end = u64::MAX;
    for (s, e) in apertures {
        if s > start {
            start = s;
        }
        if e < end {
            end = e;
        }
    }
    if let Some(n) = list.get_mut(0) {
        n.start = start;
    }
    let last = list.len() - 1;
    if let Some(n) = list.get_mut(last) {
        n.end = end;
    }
}

/// Mirrors `vfio_iommu_resv_refresh()`: rebuilds the list from its outer
/// bounds minus the reserved regions of every remaining group; `EINVAL` for
/// an empty list (the caller then keeps the old list, as the C detach does).
pub fn resv_refresh<I>(list: &mut IovaList<'_>, resv: I) -> Result<(), Errno>
where
    I: IntoIterator<Item = ResvRegion>,
{
    let (Some(first), Some(last)) = (list.get(0), list.as_slice().last().copied()) else {
        return Err(EINVAL);
    };
    let start = first.start;
    let end = last.end;
    list.clear();
    aper_resize(list, start, end)?;
    resv_exclude(list, resv)
}

#[cfg(test)]
mod tests {
    use super::super::errno::ENOMEM;
    use super::{IovaList, VfioIova};

    fn r(start: u64, end: u64) -> VfioIova {
        VfioIova { start, end }
    }

    #[test]
    fn list_insert_remove_within_capacity() {
        let mut buf = [VfioIova::default(); 3];
        let mut l = IovaList::new(&mut buf, 0);
        assert!(l.push(10, 20).is_ok());
        assert!(l.insert(0, r(0, 5)).is_ok());
        assert!(l.insert(2, r(30, 40)).is_ok());
        assert_eq!(l.as_slice(), &[r(0, 5), r(10, 20), r(30, 40)]);
        assert_eq!(l.push(50, 60), Err(ENOMEM));
        l.remove(1);
        assert_eq!(l.as_slice(), &[r(0, 5), r(30, 40)]);
        l.remove(7);
        assert_eq!(l.len(), 2);
        l.clear();
        assert!(l.is_empty());
        // A length beyond the buffer is clamped.
        let mut small = [r(1, 2)];
        assert_eq!(IovaList::new(&mut small, 5).len(), 1);
    }
}
