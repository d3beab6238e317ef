// SPDX-License-Identifier: GPL-2.0

//! Replay (`vfio_iommu_replay`): a new domain is made to map every
//! existing mapping, copied from the first domain's page tables or pinned
//! now, and a failed replay is undone. The domain set
//! (kmod-common/iommu_domain.rs) does the page-table work through a
//! `Replay` and adds the domain only if this succeeds.

#![deny(unsafe_code)]

use super::pin_map::{pin_map, Targets};
use super::unmap::lock_acct;
use crate::iommu_domain::{Replay, IOMMU_WRITE};
use crate::store::Mappings;
use crate::type1_core::container::PAGE_SHIFT;
use crate::type1_core::dma::{first_key, next_key, DmaTree};
use kernel::prelude::*;

/// `vfio_iommu_replay`: makes the new domain of `r` map every mapping.
pub(super) fn replay(dmas: &mut Mappings, r: &Replay<'_>) -> Result {
    let mut k = first_key(dmas);
    while let Some(key) = k {
        let Some(dma) = dmas.get_mut(key) else { break };
        let res = if dma.info.iommu_mapped {
            // Another domain has it: copy its translations.
            r.copy(dma.info.iova, dma.info.size, dma.info.prot)
        } else {
            let npage = dma.info.size >> PAGE_SHIFT;
            pin_map(dma, Targets::New(r), npage, false)
        };
        if let Err(e) = res {
            replay_unwind(dmas, r, key);
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

/// Undoes a failed replay up to and including the mapping at `last`.
fn replay_unwind(dmas: &mut Mappings, r: &Replay<'_>, last: u64) {
    let mut k = first_key(dmas);
    while let Some(key) = k {
        if key > last {
            break;
        }
        if let Some(dma) = dmas.get_mut(key) {
            if dma.info.iommu_mapped {
                r.uncopy(dma.info.iova, dma.info.size);
            } else {
                // Pinned for the new domain alone: unmap and unpin what it maps.
                let write = dma.info.prot & IOMMU_WRITE != 0;
                let unlocked = r.unmap_unpin(dma.info.iova, dma.info.size, write);
                lock_acct(dma, -(unlocked as i64));
            }
        }
        k = next_key(dmas, key);
    }
}
