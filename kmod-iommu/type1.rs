// SPDX-License-Identifier: GPL-2.0

//! A VFIO type1 IOMMU backend in Rust (work in progress; see docs/).

use kernel::{c_str, prelude::*};

#[path = "../kmod-common/bindings.rs"]
mod bindings;
#[path = "../kmod-common/vfio_iommu.rs"]
mod vfio_iommu;

use vfio_iommu::{GroupType, IommuDriver, IommuGroup, Registration};

module! {
    type: Type1Module,
    name: "vfio_iommu_type1_rs",
    author: "vfio-rs developers",
    description: "VFIO type1 IOMMU backend in Rust",
    license: "GPL v2",
}

struct Container {
    v2: bool,
}

struct Type1;

#[vtable]
impl IommuDriver for Type1 {
    type Data = Container;

    fn open(kind: u64) -> Result<Pin<KBox<Container>>> {
        let v2 = match kind {
            1 => false,
            3 | 6 => true,
            _ => return Err(EINVAL),
        };
        Ok(KBox::pin(Container { v2 }, GFP_KERNEL)?)
    }

    fn ioctl(data: Option<&Container>, cmd: u32, _arg: usize) -> Result<isize> {
        let _ = data.map(|d| d.v2);
        let _ = cmd;
        Err(ENOTTY)
    }

    fn attach_group(_data: &Container, _group: &IommuGroup, _kind: GroupType) -> Result {
        Err(ENODEV)
    }

    fn detach_group(_data: &Container, _group: &IommuGroup) {}
}

struct Type1Module {
    _reg: Pin<KBox<Registration<Type1>>>,
}

impl kernel::Module for Type1Module {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let reg = KBox::try_pin_init(Registration::new(c_str!("vfio-iommu-type1-rs"), module), GFP_KERNEL)?;
        Ok(Type1Module { _reg: reg })
    }
}
