// SPDX-License-Identifier: GPL-2.0

//! The mdev side: the `mtty` parent with its two types, and the probe and
//! remove of instances.
//!
//! Types `mtty-1` and `mtty-2` have one and two ports; all instances share
//! [`MAX_PORTS`](crate::device::MAX_PORTS) ports, so `available_instances`
//! of each type is the free ports divided by the type's port count.
#![deny(unsafe_code)]

use crate::device::{available, Mtty, Reservation};
use crate::mdev::{MdevDevice, MdevDriver, TypeDesc};
use crate::mtty_core::pci_config::PortCount;
use crate::vfio_device::{Device, Registration};
use kernel::c_str;
use kernel::prelude::*;

/// The mtty mdev driver.
pub(crate) struct MttyDriver;

/// Port counts of the types, by type index.
const TYPE_PORTS: [PortCount; 2] = [PortCount::One, PortCount::Two];

#[vtable]
impl MdevDriver for MttyDriver {
    type Shared = ();
    type Instance = Registration<Mtty>;

    const NAME: &'static CStr = c_str!("mtty");
    const DEVICE_API: &'static CStr = c_str!("vfio-pci");
    const TYPES: &'static [TypeDesc] = &[
        TypeDesc {
            sysfs_name: c_str!("1"),
            pretty_name: c_str!("Single port serial"),
            description: Some(c_str!("One 16550A UART (BAR0) and a DMA engine (BAR2)\n")),
        },
        TypeDesc {
            sysfs_name: c_str!("2"),
            pretty_name: c_str!("Dual port serial"),
            description: Some(c_str!("Two 16550A UARTs (BAR0, BAR1) and a DMA engine (BAR2)\n")),
        },
    ];

    fn probe(_shared: &(), mdev: &MdevDevice, type_index: usize) -> Result<KBox<Registration<Mtty>>> {
        let ports = *TYPE_PORTS.get(type_index).ok_or(EINVAL)?;
        let reservation = Reservation::take(u32::from(ports.get()))?;
        let dev = Device::new(mdev, Mtty::new(ports, reservation))?;
        let reg = Registration::new(dev)?;
        Ok(KBox::new(reg, GFP_KERNEL)?)
    }

    fn get_available(_shared: &(), type_index: usize) -> u32 {
        TYPE_PORTS.get(type_index).map_or(0, |p| available(u32::from(p.get())))
    }
}
