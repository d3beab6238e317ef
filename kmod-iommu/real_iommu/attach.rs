// SPDX-License-Identifier: GPL-2.0

//! Attaching a group behind a real IOMMU to a domain, detaching it, and
//! what follows: the domain list, the valid IOVA ranges, and the mappings
//! that go with the last domain.

#![deny(unsafe_code)]

use super::replay::replay;
use super::unmap::{lock_acct, remove_dma, unmap_unpin};
use super::Domains;
use crate::container::{err, State};
use crate::iommu_domain::{self as kiommu, Domain, ResvKind};
use crate::kvec_ext::VecExt;
use crate::mm;
use crate::params;
use crate::type1_core::dma::{first_key, next_key, remove_dma as core_remove_dma, DmaTree};
use crate::type1_core::iova::{self as ciova, IovaList, ResvRegion, ResvType, VfioIova};
use crate::type1_core::pin::PfnStore;
use crate::vfio_iommu_devices::{GroupKey, IommuGroup};
use kernel::prelude::*;
use kernel::rbtree::RBTreeNodeReservation;

fn to_core(r: &kiommu::ResvRegion) -> ResvRegion {
    let kind = match r.kind {
        ResvKind::Direct => ResvType::Direct,
        ResvKind::DirectRelaxable => ResvType::DirectRelaxable,
        ResvKind::Reserved => ResvType::Reserved,
        ResvKind::Msi => ResvType::Msi,
        ResvKind::SwMsi => ResvType::SwMsi,
    };
    ResvRegion { start: r.start, length: r.length, kind }
}

/// A working copy of the IOVA list with room for `extra` more ranges
/// (the C code edits a copy and installs it only on success).
struct IovaCopy {
    buf: KVec<VfioIova>,
    len: usize,
}

impl IovaCopy {
    fn new(cur: &[VfioIova], extra: usize) -> Result<Self> {
        let cap = ciova::exclude_capacity(cur.len(), extra).saturating_add(1);
        let mut buf = KVec::from_elem(VfioIova::default(), cap, GFP_KERNEL)?;
        buf[..cur.len()].copy_from_slice(cur);
        Ok(IovaCopy { buf, len: cur.len() })
    }

    fn edit<R>(&mut self, f: impl FnOnce(&mut IovaList<'_>) -> R) -> R {
        let mut list = IovaList::new(&mut self.buf, self.len);
        let r = f(&mut list);
        self.len = list.len();
        r
    }

    fn install(mut self, into: &mut KVec<VfioIova>) {
        self.buf.truncate(self.len);
        *into = self.buf;
    }
}

/// `attach_group` for a group behind a real IOMMU. On success the group is
/// recorded in `st.groups` (outside pinned dirty scope) using `node`.
pub(crate) fn attach(st: &mut State, group: &IommuGroup, node: RBTreeNodeReservation<GroupKey, bool>) -> Result {
    let key = group.key();
    let mut new = Domain::alloc_for_group(group)?;
    if st.iommu.nesting {
        new.enable_nesting()?;
    }
    new.attach(group)?;
    // From here on, dropping `new` detaches the group and frees the domain.

    let (astart, aend) = new.aperture();
    if ciova::aper_conflict(&mut st.dmas, &st.domains.iovas, astart, aend) {
        return Err(EINVAL);
    }
    let resv = kiommu::group_resv_regions(group)?;
    if ciova::resv_conflict(&mut st.dmas, resv.iter().map(to_core)) {
        return Err(EINVAL);
    }
    let mut copy = IovaCopy::new(&st.domains.iovas, resv.len())?;
    copy.edit(|l| ciova::aper_resize(l, astart, aend)).map_err(err)?;
    copy.edit(|l| ciova::resv_exclude(l, resv.iter().map(to_core))).map_err(err)?;
    let sw_msi = ciova::has_sw_msi(resv.iter().map(to_core));

    if !params::allow_unsafe_interrupts() && !kiommu::group_has_isolated_msi(group) {
        pr_warn!(
            "No interrupt remapping support. Use the module param \"allow_unsafe_interrupts\" to enable VFIO IOMMU support on this platform\n"
        );
        return Err(EPERM);
    }
    // An IOMMU that can block no-snoop DMA always gets it blocked.
    let enforce_cc = new.enforce_cache_coherency();

    // A compatible domain takes the group, and the new one goes.
    let mut joined = false;
    for i in 0..st.domains.set.domains().len() {
        let d = &st.domains.set.domains()[i];
        if d.ops_id() != new.ops_id() || d.enforces_cc() != enforce_cc {
            continue;
        }
        new.detach(key);
        if st.domains.set.attach_group(i, group).is_ok() {
            joined = true;
            break;
        }
        new.attach(group)?;
    }

    if !joined {
        if let Some(base) = sw_msi {
            match new.get_msi_cookie(base) {
                Ok(()) => {}
                Err(e) if e == ENODEV => {}
                Err(e) => return Err(e),
            }
        }
        let State { dmas, domains, .. } = &mut *st;
        domains.set.add(new, |r| replay(dmas, r))?;
        st.iommu.pgsize_bitmap = st.domains.pgsize_bitmap();
    }
    copy.install(&mut st.domains.iovas);
    st.iommu.has_domains = true;
    // An IOMMU-backed group can dirty any page it can reach: outside the
    // pinned dirty scope until its devices pin.
    drop(st.groups.insert(node.into_node(key, false)));
    st.iommu.group_attached(false);
    Ok(())
}

/// `detach_group` for a group behind a real IOMMU; false if `key` is not
/// attached to any domain (an mdev group). The caller has removed it from
/// `st.groups` already and settles its dirty scope.
pub(crate) fn detach(st: &mut State, key: GroupKey) -> bool {
    let Some(i) = st.domains.set.detach_group(key) else {
        return false;
    };
    let removed_domain = st.domains.set.domains().get(i).is_some_and(|d| d.group_count() == 0);
    if removed_domain {
        // Group ownership gave the right to map: with the last IOMMU group
        // the mappings go, unless mdev groups remain, which keep them but
        // lose the IOMMU pins.
        if st.domains.set.domains().len() == 1 {
            let emulated_left = count_groups(st) > st.domains.group_count();
            if emulated_left {
                unmap_unpin_reaccount(st);
            } else {
                unmap_unpin_all(st);
            }
        }
        st.domains.set.remove(i);
        st.iommu.pgsize_bitmap = st.domains.pgsize_bitmap();
        st.iommu.has_domains = !st.domains.is_empty();
    }
    // The IOVA ranges are rebuilt on a copy from the remaining apertures and
    // the remaining groups' reserved regions (the detached group's may be
    // valid IOVAs now). If that fails, the old ranges stay, as in C.
    let Ok(resv) = remaining_resv(&st.domains) else { return true };
    let Ok(mut copy) = IovaCopy::new(&st.domains.iovas, resv.len()) else { return true };
    if removed_domain {
        let apertures = collect_apertures(&st.domains);
        copy.edit(|l| ciova::aper_expand(l, apertures.iter().copied()));
    }
    if copy.edit(|l| ciova::resv_refresh(l, resv.iter().map(to_core))).is_ok() {
        copy.install(&mut st.domains.iovas);
    }
    true
}

fn count_groups(st: &State) -> usize {
    st.groups.iter().count()
}

fn collect_apertures(domains: &Domains) -> KVec<(u64, u64)> {
    let mut v = KVec::new();
    for d in domains.set.domains().iter() {
        if v.push(d.aperture(), GFP_KERNEL).is_err() {
            break;
        }
    }
    v
}

/// The reserved regions of every group still attached to a domain.
fn remaining_resv(domains: &Domains) -> Result<KVec<kiommu::ResvRegion>> {
    let mut all = KVec::new();
    for d in domains.set.domains().iter() {
        d.for_each_group(|g| {
            for r in kiommu::group_resv_regions(g)?.iter() {
                all.push(*r, GFP_KERNEL)?;
            }
            Ok(())
        })?;
    }
    Ok(all)
}

/// `vfio_iommu_unmap_unpin_all`.
fn unmap_unpin_all(st: &mut State) {
    let State { iommu, dmas, domains, .. } = st;
    while let Some(k) = first_key(dmas) {
        match core_remove_dma(dmas, iommu, k) {
            Some(d) => remove_dma(domains, dmas, d),
            None => break,
        }
    }
}

/// `vfio_iommu_unmap_unpin_reaccount`: the last domain goes but mdev groups
/// stay; the mappings lose their IOMMU pins and are charged again for the
/// pages devices pinned.
fn unmap_unpin_reaccount(st: &mut State) {
    let State { dmas, domains, .. } = st;
    let mut k = first_key(dmas);
    while let Some(key) = k {
        if let Some(dma) = dmas.get_mut(key) {
            let unlocked = unmap_unpin(domains, dma, false);
            let mut locked = 0i64;
            dma.pfns.for_each(|_, vpfn| {
                if mm::pfn_is_accountable(vpfn.pfn()) {
                    locked += 1;
                }
            });
            lock_acct(dma, locked - unlocked);
        }
        k = next_key(dmas, key);
    }
}

