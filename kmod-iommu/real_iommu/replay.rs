// SPDX-License-Identifier: GPL-2.0

//! Replay (`vfio_iommu_replay`): a new domain is made to map every
//! existing mapping, copied from the first domain's page tables or pinned
//! now, and a failed replay is undone.

#![deny(unsafe_code)]

use super::pin_map::{pin_map, Targets};
use super::unmap::{lock_acct, mapped_run, unpin_run};
use crate::container::State;
use crate::iommu_domain::{Domain, IOMMU_CACHE};
use crate::mm;
use crate::store::{Dma, Mappings};
use crate::type1_core::container::{PAGE_SHIFT, PAGE_SIZE};
use crate::type1_core::dma::{first_key, next_key, DmaTree};
use kernel::prelude::*;

/// `vfio_iommu_replay`: makes `new` map every existing mapping.
pub(super) fn replay(st: &mut State, new: &Domain) -> Result {
    let State { dmas, domains, .. } = st;
    let first = domains.first();
    let mut k = first_key(dmas);
    while let Some(key) = k {
        let Some(dma) = dmas.get_mut(key) else { break };
        let r = if dma.info.iommu_mapped {
            // Another domain has it: copy its translations.
            match first {
                Some(f) => copy_mappings(f, new, dma),
                None => Err(EINVAL),
            }
        } else {
            let npage = dma.info.size >> PAGE_SHIFT;
            pin_map(dma, Targets::One(new), npage, false)
        };
        if let Err(e) = r {
            replay_unwind(dmas, new, key);
            return Err(e);
        }
        k = next_key(dmas, key);
    }
    let mut k = first_key(dmas);
    while let Some(key) = k {
        if let Some(dma) = dmas.get_mut(key) {
            dma.info.iommu_mapped = true;
        }
        k = next_key(dmas, key);
    }
    Ok(())
}

fn copy_mappings(from: &Domain, to: &Domain, dma: &Dma) -> Result {
    let end = dma.info.iova + dma.info.size;
    let mut iova = dma.info.iova;
    while iova < end {
        let Some((phys, len)) = mapped_run(from, iova, end) else {
            pr_warn!("mapping at iova {iova:#x} is missing from the first IOMMU domain\n");
            iova += PAGE_SIZE;
            continue;
        };
        to.map(iova, phys, len, dma.info.prot | IOMMU_CACHE)?;
        iova += len;
        mm::cond_resched();
    }
    Ok(())
}

/// Undoes a failed replay up to and including the mapping at `last`.
fn replay_unwind(dmas: &mut Mappings, new: &Domain, last: u64) {
    let mut k = first_key(dmas);
    while let Some(key) = k {
        if key > last {
            break;
        }
        if let Some(dma) = dmas.get_mut(key) {
            if dma.info.iommu_mapped {
                new.unmap(dma.info.iova, dma.info.size);
            } else {
                // Pinned for `new` alone: unmap and unpin what it maps.
                let end = dma.info.iova + dma.info.size;
                let mut iova = dma.info.iova;
                let mut unlocked = 0i64;
                while iova < end {
                    let Some((phys, len)) = mapped_run(new, iova, end) else {
                        iova += PAGE_SIZE;
                        continue;
                    };
                    new.unmap(iova, len);
                    unlocked += unpin_run(dma, phys >> PAGE_SHIFT, len >> PAGE_SHIFT);
                    iova += len;
                }
                lock_acct(dma, -unlocked);
            }
        }
        k = next_key(dmas, key);
    }
}

