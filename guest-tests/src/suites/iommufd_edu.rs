//! vfio-pci on iommufd: an `edu` behind the VM's VT-d opened through its
//! VFIO device cdev (`/dev/vfio/devices/vfioN`), bound to `/dev/iommu`
//! and attached to an IOAS (iommufd allocates the IOMMU domain) or to a
//! hardware page table allocated explicitly (`IOMMU_HWPT_ALLOC`). The
//! same DMA checks as `type1_iommu.*` (crate::pci, `round_trip`), so one
//! kernel shows vfio-pci on iommufd and on the type1 backend side by side.
//!
//! The iommufd part uses no type1 module, so it runs the same in both
//! backend passes; `iommufd.edu.then_type1` also takes the device through
//! a container of the backend under test.

use super::type1_iommu::{bytes, edu, edu_setup, fill, round_trip, Mem};
use super::{CaseResult, Ctx, Fail};
use crate::iommufd::{open_device_cdev, vm_pinned_kb, Iommufd};
use crate::pci::{self, Edu, PciDev};
use crate::vfio::{vm_locked_kb, Errno, Group};
use crate::{check, check_eq};
use std::time::Duration;

const PAGE: u64 = 4096;
const IOVA: u64 = 0x10_0000;
/// The x86 interrupt range, a reserved region of every device behind VT-d.
const MSI: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

/// An edu opened through its cdev, bound to a new iommufd context whose
/// pins are charged to this process's mm (`VmPin`), with a new, empty
/// IOAS. Not attached yet: the device's DMA is blocked until it is.
struct CdevEdu {
    // Declared first so the device closes before the context it is bound to.
    edu: Edu,
    iommufd: Iommufd,
    dev_id: u32,
    ioas: u32,
}

impl CdevEdu {
    fn open(dev: &PciDev) -> Result<CdevEdu, Fail> {
        let iommufd = Iommufd::open()?;
        let device = open_device_cdev(&dev.sysfs())?;
        let dev_id = iommufd.bind(&device)?;
        let ioas = iommufd.ioas_alloc()?;
        let edu = Edu::from_device(device, &dev.bdf)?;
        Ok(CdevEdu { edu, iommufd, dev_id, ioas })
    }
}

/// What the device is attached to.
#[derive(Clone, Copy, Debug)]
enum Pt {
    /// The IOAS itself: iommufd allocates (or reuses) a domain for it.
    Ioas,
    /// A page table from `IOMMU_HWPT_ALLOC` on the IOAS.
    Hwpt,
}

fn allows(ranges: &[(u64, u64)], (start, last): (u64, u64)) -> bool {
    ranges.iter().any(|&(a, b)| a <= start && last <= b)
}

fn overlaps(ranges: &[(u64, u64)], (start, last): (u64, u64)) -> bool {
    ranges.iter().any(|&(a, b)| a <= last && start <= b)
}

/// A DMA to `IOVA + PAGE`, which is not mapped any more, must change
/// nothing and be reported by the IOMMU.
fn dma_faults_after_unmap(e: &Edu, buf: &Mem, what: &str) -> CaseResult {
    fill(buf, PAGE, &[0x5a; 256]);
    let target = IOVA + PAGE;
    let faults = pci::FaultWatch::start(target);
    e.dma_to_ram(0, target, 256)?;
    check!(bytes(buf, PAGE, 256).iter().all(|&b| b == 0x5a), "{what}: the buffer changed after its IOVA was unmapped");
    check!(
        faults.wait(Duration::from_secs(5)),
        "{what}: no IOMMU fault reported at {target:#x} after a DMA to an unmapped IOVA"
    );
    Ok(())
}

fn dma_on_iommufd(dev: &PciDev, pt: Pt) -> CaseResult {
    // Outlives the device and the context, so it is unmapped after they unpin it.
    let buf = Mem::anon(4 * PAGE)?;
    let c = CdevEdu::open(dev)?;
    let fd = &c.iommufd;
    let base = vm_pinned_kb();
    match pt {
        Pt::Ioas => {
            check!(allows(&fd.iova_ranges(c.ioas)?, MSI), "a new IOAS must allow the MSI range");
            fd.attach_pt(&c.edu.dev, c.ioas)?;
            // The attach brings the device's reserved regions into the IOAS.
            let ranges = fd.iova_ranges(c.ioas)?;
            check!(!overlaps(&ranges, MSI), "IOVA ranges {ranges:x?} after the attach must leave out the MSI range");
            check!(allows(&ranges, (IOVA, IOVA + 4 * PAGE - 1)), "IOVA ranges {ranges:x?} must allow the buffer");
            fd.map(c.ioas, buf.vaddr(), IOVA, 4 * PAGE)?;
            check_eq!(vm_pinned_kb(), base + 16, "VmPin after IOMMU_IOAS_MAP into an IOAS with a domain (pinned at map time)");
        }
        Pt::Hwpt => {
            fd.map(c.ioas, buf.vaddr(), IOVA, 4 * PAGE)?;
            check_eq!(vm_pinned_kb(), base, "VmPin after IOMMU_IOAS_MAP into an IOAS without a domain (nothing pinned yet)");
            let hwpt = fd.hwpt_alloc(c.dev_id, c.ioas)?;
            check!(hwpt != c.ioas, "HWPT id {hwpt} must be a new object, not the IOAS {}", c.ioas);
            check_eq!(vm_pinned_kb(), base + 16, "VmPin after IOMMU_HWPT_ALLOC filled the new domain from the IOAS");
            fd.attach_pt(&c.edu.dev, hwpt)?;
        }
    }
    // Within a page, across a page boundary, and between pages.
    round_trip(&c.edu, &buf, IOVA, 0, PAGE, 256, 1)?;
    round_trip(&c.edu, &buf, IOVA, PAGE - 100, 3 * PAGE - 50, 1000, 2)?;
    round_trip(&c.edu, &buf, IOVA, 2 * PAGE, 3 * PAGE, 4000, 3)?;
    check_eq!(fd.unmap(c.ioas, IOVA, 4 * PAGE)?, 4 * PAGE, "IOMMU_IOAS_UNMAP length ({pt:?})");
    check_eq!(vm_pinned_kb(), base, "VmPin after IOMMU_IOAS_UNMAP ({pt:?})");
    dma_faults_after_unmap(&c.edu, &buf, &format!("{pt:?}"))
}

/// edu #0 through its cdev: attached to the IOAS (iommufd's own domain),
/// then, opened anew, to a page table from `IOMMU_HWPT_ALLOC`. Each time:
/// the map pins the buffer once a domain is there (`VmPin`), the device
/// copies RAM -> device -> RAM byte for byte, and after `IOMMU_IOAS_UNMAP`
/// the pins are gone and a DMA to the IOVA faults in the VT-d.
pub fn dma_round_trip(_ctx: &Ctx) -> CaseResult {
    let dev = edu(0)?;
    dma_on_iommufd(&dev, Pt::Ioas)?;
    dma_on_iommufd(&dev, Pt::Hwpt)
}

/// One short use of the edu through iommufd, left by closing the files.
fn iommufd_leg(dev: &PciDev, buf: &Mem, seed: u8) -> CaseResult {
    let base = vm_pinned_kb();
    {
        let c = CdevEdu::open(dev)?;
        c.iommufd.attach_pt(&c.edu.dev, c.ioas)?;
        c.iommufd.map(c.ioas, buf.vaddr(), IOVA, 4 * PAGE)?;
        check_eq!(vm_pinned_kb(), base + 16, "VmPin after IOMMU_IOAS_MAP");
        round_trip(&c.edu, buf, IOVA, PAGE - 100, 3 * PAGE - 50, 1000, seed)?;
        // An open cdev keeps the group (and with it type1) away.
        check_eq!(Group::open(dev.group).err(), Some(Errno(libc::EBUSY)), "open /dev/vfio/{} while the cdev is open", dev.group);
    }
    // Closing the context without an unmap releases the pins too.
    check_eq!(vm_pinned_kb(), base, "VmPin after closing the cdev and /dev/iommu");
    Ok(())
}

/// The same edu, in one process: through iommufd (cdev, IOAS), closed;
/// then through a type1v2 container of the backend under test (group
/// `/dev/vfio/N`); then through iommufd again. DMA works each time, each
/// framework's pins come and go (`VmPin`, `VmLck`), and while one holds
/// the device the other's way in is refused (`EBUSY`: opening the group
/// while the cdev is bound, binding the cdev while the group is open).
pub fn then_type1(_ctx: &Ctx) -> CaseResult {
    let dev = edu(0)?;
    let buf = Mem::anon(4 * PAGE)?;
    iommufd_leg(&dev, &buf, 21)?;
    let base = vm_locked_kb();
    {
        let s = edu_setup(0)?;
        s.container.map_rw(buf.vaddr(), IOVA, 4 * PAGE)?;
        check_eq!(vm_locked_kb(), base + 16, "VmLck after type1 MAP_DMA");
        round_trip(&s.edu, &buf, IOVA, PAGE - 100, 3 * PAGE - 50, 1000, 22)?;
        // The cdev opens, but an open group keeps iommufd from binding it.
        let cdev = open_device_cdev(&dev.sysfs())?;
        check_eq!(Iommufd::open()?.try_bind(&cdev).err(), Some(Errno(libc::EBUSY)), "BIND_IOMMUFD while the group is open");
        drop(cdev);
        check_eq!(s.container.unmap_range(IOVA, 4 * PAGE)?, 4 * PAGE, "type1 UNMAP_DMA size");
        check_eq!(vm_locked_kb(), base, "VmLck after type1 UNMAP_DMA");
    }
    iommufd_leg(&dev, &buf, 23)
}
