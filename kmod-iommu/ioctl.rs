// SPDX-License-Identifier: GPL-2.0

//! The container ioctls of the type1 uAPI (`include/uapi/linux/vfio.h`):
//! user copies here, rules in `type1_core`, state in [`Container`].
//!
//! Every ioctl copies its arguments in before taking the container lock and
//! copies results out after dropping it, except where the reference copies
//! dirty bitmaps out under the lock (UNMAP_DMA with GET_DIRTY_BITMAP and
//! DIRTY_PAGES GET_BITMAP), which we do the same way.

#![deny(unsafe_code)]

use crate::container::{err, Container, State};
use crate::store::{Dma, Mappings};
use crate::type1_core::dirty::{self as cdirty, DirtyOp, UserBitmap};
use crate::type1_core::dma::{self as cdma, DmaTree};
use crate::type1_core::errno::{Errno, EFAULT as C_EFAULT};
use crate::type1_core::map::{self as cmap, MapPlan};
use crate::type1_core::uapi::{self as u, Type1Ioctl};
use crate::type1_core::unmap::{self as cunmap, UnmapPlan, UnmapStep};
use crate::type1_core::{container as ccontainer, info as cinfo};
use crate::mm::{self, Owner};
use core::sync::atomic::{AtomicBool, Ordering};
use kernel::prelude::*;
use kernel::uaccess::UserSlice;

/// Dispatches a container ioctl; `c` is `None` before `VFIO_SET_IOMMU`.
///
/// Inlined into the C trampoline (`OpsTable::ioctl`), so that an ioctl
/// enters one Rust function, as it enters one C function in the reference.
#[inline(always)]
pub(crate) fn ioctl(c: Option<&Container>, cmd: u32, arg: usize) -> Result<isize> {
    // One match on the command (one jump table, as the C switch). The VFIO
    // core passes no container only for CHECK_EXTENSION.
    match u::classify_ioctl(cmd) {
        Ok(Type1Ioctl::MapDma) => map_dma(c.ok_or(EINVAL)?, arg).map(|()| 0),
        Ok(Type1Ioctl::UnmapDma) => unmap_dma(c.ok_or(EINVAL)?, arg).map(|()| 0),
        Ok(Type1Ioctl::CheckExtension) => Ok(check_extension(c, arg)),
        Ok(Type1Ioctl::GetInfo) => get_info(c.ok_or(EINVAL)?, arg).map(|()| 0),
        Ok(Type1Ioctl::DirtyPages) => dirty_pages(c.ok_or(EINVAL)?, arg).map(|()| 0),
        Err(e) => Err(err(e)),
    }
}

/// `VFIO_CHECK_EXTENSION`, taking the container lock only for the answers
/// that depend on the state.
///
/// This and the other ioctls are functions of their own (as `map_dma` and
/// `unmap_dma` are), so that the dispatch in the trampoline saves no
/// registers for any of them.
#[inline(never)]
fn check_extension(c: Option<&Container>, arg: usize) -> isize {
    let state = || {
        c.map(|c| {
            let st = c.state.lock();
            // With no IOMMU domain every domain enforces coherency, vacuously.
            (st.iommu.has_emulated_groups, st.domains.all_enforce_cc())
        })
    };
    ccontainer::check_extension_with(arg as u64, state) as isize
}

/// Reads `N` bytes of the argument at `offset`; `EFAULT` if they are not readable.
///
/// `read::<[u8; N]>` is generic, so it is built here and calls
/// `_copy_from_user` directly, as the C `copy_from_user` of a fixed size
/// does (`read_slice` goes through two more functions).
#[inline]
fn read_arg<const N: usize>(arg: usize, offset: usize) -> Result<[u8; N]> {
    let addr = arg.checked_add(offset).ok_or(EFAULT)?;
    UserSlice::new(addr, N).reader().read::<[u8; N]>()
}

fn access_ok(addr: u64, size: u64) -> bool {
    mm::access_ok(addr, size)
}

#[inline(never)]
fn get_info(c: &Container, arg: usize) -> Result {
    let raw: [u8; u::IOMMU_INFO_MINSZ as usize] = read_arg(arg, 0)?;
    let argsz = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    // An emulated-only container has no IOVA ranges to report. The reply
    // is built under the lock, which is a mutex: allocating there may sleep.
    let (out, n) = {
        let st = c.state.lock();
        let iovas = st.domains.iovas();
        let mut out = KVec::from_elem(0u8, cinfo::info_reply_len(iovas.len()), GFP_KERNEL)?;
        let n = cinfo::build_info(&st.iommu, iovas, argsz, &mut out).map_err(err)?;
        (out, n)
    };
    // The capability chain first, then the fixed part, as C copies them:
    // if the chain faults, the header the caller reads is left untouched.
    let head = n.min(u::IOMMU_INFO_SIZE as usize);
    if n > head {
        UserSlice::new(arg.wrapping_add(head), n - head).writer().write_slice(&out[head..n])?;
    }
    UserSlice::new(arg, head).writer().write_slice(&out[..head])
}

/// Reads the first `N` 64-bit words of the argument (a fixed-size
/// `copy_from_user`, see [`read_arg`]).
#[inline]
fn read_words<const N: usize>(arg: usize) -> Result<[u64; N]> {
    UserSlice::new(arg, N * 8).reader().read::<[u64; N]>()
}

// The two hot ioctls are functions of their own (`ioctl` is inlined into
// the trampoline), each with its lookups inlined: one function per ioctl,
// as the C reference has, without making one frame serve all of them.
#[inline(never)]
fn map_dma(c: &Container, arg: usize) -> Result {
    const _: () = assert!(u::DMA_MAP_MINSZ == 32);
    let map = u::DmaMap::from_words(read_words::<4>(arg)?);
    cmap::check_map_args(&map).map_err(err)?;
    let mut st = c.state.lock();
    let State { iommu, dmas, domains, .. } = &mut *st;
    match cmap::validate_map(dmas, iommu, domains.iovas(), &map).map_err(err)? {
        MapPlan::New(new) => {
            // Taken only for a map that passed every check (the C code
            // allocates there): refused maps, such as an EEXIST lookup,
            // allocate nothing. A spare node of a removed mapping if there
            // is one, else an allocation (the container lock is a mutex, so
            // this may sleep).
            let node = dmas.slot()?;
            let (owner, lock_cap) = Owner::current()?;
            let iova = new.iova;
            let mut info = new.commit(iommu);
            info.lock_cap = lock_cap;
            if domains.is_empty() {
                // No IOMMU domain: nothing to pin or map, the mapping is whole.
                info.size = map.size;
                dmas.insert(node, Dma::new(info, owner));
            } else {
                // Linked with size 0, it grows as it is pinned and mapped.
                dmas.insert(node, Dma::new(info, owner));
                crate::real_iommu::map_new(iommu, dmas, domains, iova, map.size)?;
            }
            if iommu.dirty_page_tracking {
                let entry = dmas.get_mut(iova).ok_or(EINVAL)?;
                if let Err(e) = cdirty::dma_bitmap_alloc(entry, iommu) {
                    if let Some(d) = cdma::remove_dma(dmas, iommu, iova) {
                        crate::real_iommu::remove_dma(domains, dmas, d);
                    }
                    return Err(err(e));
                }
            }
            Ok(())
        }
        MapPlan::UpdateVaddr { key, vaddr } => {
            let entry = dmas.get_mut(key).ok_or(EINVAL)?;
            change_dma_owner(entry)?;
            cmap::apply_update_vaddr(dmas, iommu, key, vaddr).map_err(err)
        }
    }
}

/// `vfio_change_dma_owner`: a vaddr update from another process moves the
/// mapping's locked-memory charge and ownership to that process.
fn change_dma_owner(dma: &mut crate::store::Dma) -> Result {
    if dma.owner.mm().is_current() {
        return Ok(());
    }
    let (new_owner, lock_cap) = Owner::current()?;
    let npage = dma.info.locked_vm as i64;
    new_owner.mm().account_locked(new_owner.task(), npage, lock_cap)?;
    // Nothing to give back if the old process is gone (`ESRCH`).
    let _ = dma.owner.mm().account_locked(dma.owner.task(), -npage, dma.info.lock_cap);
    dma.owner = new_owner;
    dma.info.lock_cap = lock_cap;
    Ok(())
}

/// A user-space bitmap at `base`, written in place.
struct UserBitmapAt(u64);

impl UserBitmap for UserBitmapAt {
    fn read_word(&mut self, index: u64) -> core::result::Result<u64, Errno> {
        let addr = index.checked_mul(8).and_then(|o| self.0.checked_add(o)).ok_or(C_EFAULT)?;
        let mut b = [0u8; 8];
        UserSlice::new(addr as usize, 8).reader().read_slice(&mut b).map_err(|_| C_EFAULT)?;
        Ok(u64::from_ne_bytes(b))
    }

    fn write_words(&mut self, index: u64, words: &[u64]) -> core::result::Result<(), Errno> {
        let mut addr = index.checked_mul(8).and_then(|o| self.0.checked_add(o)).ok_or(C_EFAULT)?;
        // Copy out through a stack buffer, 64 words at a time.
        let mut buf = [0u8; 512];
        for chunk in words.chunks(64) {
            for (i, w) in chunk.iter().enumerate() {
                buf[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
            }
            let len = chunk.len() * 8;
            UserSlice::new(addr as usize, len).writer().write_slice(&buf[..len]).map_err(|_| C_EFAULT)?;
            addr = addr.checked_add(len as u64).ok_or(C_EFAULT)?;
        }
        Ok(())
    }
}

/// Warns once that a vendor driver keeps pins after being told to drop them.
static STUCK_PINS_WARNED: AtomicBool = AtomicBool::new(false);

#[inline(never)]
fn unmap_dma(c: &Container, arg: usize) -> Result {
    const _: () = assert!(u::DMA_UNMAP_MINSZ == 24);
    let mut unmap = u::DmaUnmap::from_words(read_words::<3>(arg)?);
    cunmap::check_unmap_args(&unmap).map_err(err)?;
    let mut bitmap = None;
    if unmap.flags & u::VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0 {
        cunmap::check_unmap_bitmap(&unmap, None, true).map_err(err)?;
        let raw: [u8; u::VFIO_BITMAP_SIZE as usize] = read_arg(arg, u::DMA_UNMAP_MINSZ as usize)?;
        let bm = u::VfioBitmap::from_bytes(&raw).ok_or(EINVAL)?;
        cunmap::check_unmap_bitmap(&unmap, Some(&bm), access_ok(bm.data, bm.size)).map_err(err)?;
        bitmap = Some(bm);
    }
    let mut user = bitmap.map(|b| UserBitmapAt(b.data));
    let mut st = c.state.lock();
    let mut plan = UnmapPlan::new(&st.iommu, &unmap, bitmap.map_or(0, |b| b.pgsize)).map_err(err)?;
    loop {
        let State { iommu, dmas, domains, .. } = &mut *st;
        match plan.step(dmas, iommu, user.as_mut()) {
            UnmapStep::Removed(dma) => crate::real_iommu::remove_dma(domains, dmas, dma),
            UnmapStep::NotifyUnmap { iova, size } => {
                // Devices unpin through the container lock: drop it first.
                drop(st);
                c.notify_dma_unmap(iova, size);
                st = c.state.lock();
            }
            UnmapStep::Done => break,
            UnmapStep::Failed(e) => {
                if e == cunmap::UNMAP_PINS_STUCK_ERRNO && !STUCK_PINS_WARNED.swap(true, Ordering::Relaxed) {
                    pr_warn!("a device kept its pins after dma_unmap; failing the unmap with EBUSY\n");
                }
                return Err(err(e));
            }
        }
    }
    drop(st);
    unmap.size = plan.unmapped();
    // A fixed-size `write`, like `read_arg`: one `_copy_to_user`.
    UserSlice::new(arg, u::DMA_UNMAP_MINSZ as usize).writer().write(&unmap.to_words())
}

#[inline(never)]
fn dirty_pages(c: &Container, arg: usize) -> Result {
    cdirty::dirty_pages_v2_check(&c.state.lock().iommu).map_err(err)?;
    let raw: [u8; u::DIRTY_BITMAP_MINSZ as usize] = read_arg(arg, 0)?;
    let d = u::DirtyBitmap::from_bytes(&raw).ok_or(EINVAL)?;
    match cdirty::check_dirty_args(&d).map_err(err)? {
        DirtyOp::Start => {
            let mut st = c.state.lock();
            let State { iommu, dmas, .. } = &mut *st;
            cdirty::dirty_pages_start(dmas, iommu).map_err(err)
        }
        DirtyOp::Stop => {
            let mut st = c.state.lock();
            let State { iommu, dmas, .. } = &mut *st;
            cdirty::dirty_pages_stop(dmas, iommu);
            Ok(())
        }
        DirtyOp::GetBitmap => {
            cdirty::check_get_bitmap_unlocked(d.argsz, None, true).map_err(err)?;
            let raw: [u8; u::DIRTY_BITMAP_GET_SIZE as usize] = read_arg(arg, u::DIRTY_BITMAP_MINSZ as usize)?;
            let range = u::DirtyBitmapGet::from_bytes(&raw).ok_or(EINVAL)?;
            let ok = access_ok(range.bitmap.data, range.bitmap.size);
            cdirty::check_get_bitmap_unlocked(d.argsz, Some(&range), ok).map_err(err)?;
            let mut user = UserBitmapAt(range.bitmap.data);
            let mut st = c.state.lock();
            let State { iommu, dmas, .. } = &mut *st;
            let dmas: &mut Mappings = dmas;
            cdirty::iova_dirty_bitmap(dmas, iommu, &mut user, &range).map_err(err)
        }
    }
}
