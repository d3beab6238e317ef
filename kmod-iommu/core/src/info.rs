//! `VFIO_IOMMU_GET_INFO`: the info structure and its capability chain.
//!
//! `vfio_iommu_type1_get_info()` always builds the migration and DMA-avail
//! capabilities and, when the IOVA list is not empty, the IOVA-range
//! capability, each padded to 8 bytes and chained by `next` offsets that
//! are relative to the start of the info structure.  If `argsz` is too
//! small for the chain, the reply still sets `VFIO_IOMMU_INFO_CAPS` and
//! reports the needed `argsz`, with `cap_offset` left 0 and no capability
//! copied.  Only `min(argsz, sizeof(info))` bytes of the fixed structure are
//! copied back.

use super::dirty::DIRTY_BITMAP_SIZE_MAX;
use super::errno::{Errno, EINVAL, ENOMEM};
use super::container::VfioIommu;
use super::iova::VfioIova;
use super::uapi::{
    IOMMU_INFO_MINSZ, IOMMU_INFO_SIZE, VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_INFO_PGSIZES,
    VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
    VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
};

/// `sizeof(struct vfio_iommu_type1_info_cap_migration)`.
pub const CAP_MIGRATION_SIZE: usize = 32;
/// `ALIGN(sizeof(struct vfio_iommu_type1_info_dma_avail), 8)` (12 bytes padded).
pub const CAP_DMA_AVAIL_SIZE: usize = 16;
/// `sizeof(struct vfio_iommu_type1_info_cap_iova_range)` without ranges.
pub const CAP_IOVA_RANGE_HDR_SIZE: usize = 16;
/// `sizeof(struct vfio_iova_range)`.
pub const IOVA_RANGE_SIZE: usize = 16;

/// Bytes of the IOVA-range capability for `nr_iovas` ranges (0 when the list is empty).
pub fn cap_iova_range_size(nr_iovas: usize) -> usize {
    if nr_iovas == 0 {
        return 0;
    }
    nr_iovas
        .saturating_mul(IOVA_RANGE_SIZE)
        .saturating_add(CAP_IOVA_RANGE_HDR_SIZE)
}

/// `caps.size` of the chain built by `vfio_iommu_type1_get_info()`.
pub fn info_caps_size(nr_iovas: usize) -> usize {
    CAP_MIGRATION_SIZE + CAP_DMA_AVAIL_SIZE + cap_iova_range_size(nr_iovas)
}

/// Bytes of a buffer able to hold the largest reply (`sizeof(info) + caps.size`).
pub fn info_reply_len(nr_iovas: usize) -> usize {
    (IOMMU_INFO_SIZE as usize).saturating_add(info_caps_size(nr_iovas))
}

/// Writes `v` at `off` of `out`, ignoring writes past the end (callers size `out` first).
fn put(out: &mut [u8], off: usize, v: &[u8]) {
    if let Some(dst) = off
        .checked_add(v.len())
        .and_then(|end| out.get_mut(off..end))
    {
        dst.copy_from_slice(v);
    }
}

/// Writes a `struct vfio_info_cap_header`.
fn put_header(out: &mut [u8], off: usize, id: u16, version: u16, next: u32) {
    put(out, off, &id.to_ne_bytes());
    put(out, off + 2, &version.to_ne_bytes());
    put(out, off + 4, &next.to_ne_bytes());
}

/// Mirrors `vfio_iommu_type1_get_info()` after the `copy_from_user()` of the
/// first `offsetofend(iova_pgsizes)` bytes: `argsz` is the user's value.
///
/// Fills `out` with the bytes to copy to the user structure and returns
/// how many of them to copy (a prefix of `out`): `min(argsz, 24)` bytes of
/// the fixed structure, plus the capability chain when `argsz` can hold it.
/// Errors: `EINVAL` for `argsz < 16`, `ENOMEM` if `out` is shorter than
/// [`info_reply_len`] (the analogue of the C `krealloc()` failing), and
/// `EINVAL` for an empty `pgsize_bitmap`, whose `__ffs()` is undefined in C.
pub fn build_info(
    iommu: &VfioIommu,
    iovas: &[VfioIova],
    argsz: u32,
    out: &mut [u8],
) -> Result<usize, Errno> {
    if argsz < IOMMU_INFO_MINSZ {
        return Err(EINVAL);
    }
    let info_size = IOMMU_INFO_SIZE as usize;
    let minsz = (argsz as usize).min(info_size);
    let caps_size = info_caps_size(iovas.len());
    let full = info_reply_len(iovas.len());
    if out.len() < full {
        return Err(ENOMEM);
    }
    let min_pgsize = iommu.min_pgsize()?;
    let nr_iovas = u32::try_from(iovas.len()).map_err(|_| ENOMEM)?;
    if let Some(o) = out.get_mut(..full) {
        o.fill(0);
    }

    let mut flags = VFIO_IOMMU_INFO_PGSIZES;
    let mut reply_argsz = argsz;
    let mut cap_offset = 0u32;
    // The migration capability is always present, so caps.size is never 0.
    flags |= VFIO_IOMMU_INFO_CAPS;
    let caps_fit = (argsz as usize) >= info_size + caps_size;
    if !caps_fit {
        reply_argsz = u32::try_from(info_size + caps_size).map_err(|_| ENOMEM)?;
    } else {
        // Capabilities are laid out right after the fixed structure with the
        // `next` offsets already shifted by sizeof(info)
        // (vfio_info_cap_shift()).
        let mig = info_size;
        let avail = mig + CAP_MIGRATION_SIZE;
        let iova = avail + CAP_DMA_AVAIL_SIZE;

        put_header(
            out,
            mig,
            VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
            1,
            avail as u32,
        );
        put(out, mig + 8, &0u32.to_ne_bytes());
        put(out, mig + 16, &min_pgsize.to_ne_bytes());
        put(out, mig + 24, &DIRTY_BITMAP_SIZE_MAX.to_ne_bytes());

        let avail_next = if iovas.is_empty() { 0 } else { iova as u32 };
        put_header(out, avail, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 1, avail_next);
        put(out, avail + 8, &iommu.dma_avail.to_ne_bytes());

        if !iovas.is_empty() {
            put_header(out, iova, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1, 0);
            put(out, iova + 8, &nr_iovas.to_ne_bytes());
            for (i, r) in iovas.iter().enumerate() {
                let off = iova + CAP_IOVA_RANGE_HDR_SIZE + i * IOVA_RANGE_SIZE;
                put(out, off, &r.start.to_ne_bytes());
                put(out, off + 8, &r.end.to_ne_bytes());
            }
        }
        cap_offset = IOMMU_INFO_SIZE;
    }

    put(out, 0, &reply_argsz.to_ne_bytes());
    put(out, 4, &flags.to_ne_bytes());
    put(out, 8, &iommu.pgsize_bitmap.to_ne_bytes());
    put(out, 16, &cap_offset.to_ne_bytes());

    Ok(if caps_fit {
        info_size + caps_size
    } else {
        minsz
    })
}
