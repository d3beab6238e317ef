//! Tests of the emulated PCI configuration space.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use mtty_core::pci_config::*;
use proptest::prelude::*;

fn rd(c: &ConfigSpace, off: u16, w: u8) -> u32 {
    c.read(off, w).unwrap()
}

#[test]
fn identity_matches_mtty_c() {
    for ports in [PortCount::One, PortCount::Two] {
        let c = ConfigSpace::new(ports);
        assert_eq!(rd(&c, 0x00, 4), 0x3253_4348, "vendor/device as STORE_LE32 in mtty.c");
        assert_eq!(rd(&c, PCI_VENDOR_ID, 2), u32::from(VENDOR_ID));
        assert_eq!(rd(&c, PCI_DEVICE_ID, 2), u32::from(DEVICE_ID));
        assert_eq!(rd(&c, PCI_COMMAND, 2), 0x0001);
        assert_eq!(rd(&c, PCI_STATUS, 2), 0x0200);
        assert_eq!(rd(&c, PCI_REVISION_ID, 1), 0x10);
        assert_eq!(rd(&c, PCI_CLASS_PROG, 1), 0x02);
        assert_eq!(rd(&c, 0x08, 4), CLASS_CODE << 8 | 0x10);
        assert_eq!(rd(&c, 0x0e, 1), 0, "header type 0");
        assert_eq!(rd(&c, PCI_SUBSYSTEM_VENDOR_ID, 4), 0x3253_4348);
        assert_eq!(rd(&c, PCI_CAPABILITY_LIST, 1), 0);
        assert_eq!(rd(&c, PCI_INTERRUPT_LINE, 1), 0);
        assert_eq!(rd(&c, PCI_INTERRUPT_PIN, 1), 1, "INTA#");
        assert_eq!(rd(&c, 0x40, 4), 0x8000_0023);
        assert_eq!(rd(&c, 0x44, 1), 0x23);
        assert_eq!(rd(&c, 0x48, 1), 0x23);
        assert_eq!(rd(&c, 0x4c, 1), 0x23);
        let s: Vec<u8> = (0x60..0x6f).map(|o| rd(&c, o, 1) as u8).collect();
        assert_eq!(s, b"PCI Serial/UART");
        assert_eq!(rd(&c, 0x6f, 1), 0);
        assert_eq!(rd(&c, 0xfc, 4), 0);
        assert!(c.io_enabled() && !c.memory_enabled() && !c.bus_master_enabled());
        assert!(!c.intx_disabled());
        assert_eq!(c.ports(), ports);
    }
}

#[test]
fn bar_reset_values_and_sizing() {
    let mut c = ConfigSpace::new(PortCount::Two);
    assert_eq!(rd(&c, 0x10, 4), 0x1);
    assert_eq!(rd(&c, 0x14, 4), 0x1);
    assert_eq!(rd(&c, 0x18, 4), 0x0);
    for off in (0x10..0x28).step_by(4) {
        c.write(off, 4, 0xFFFF_FFFF).unwrap();
    }
    // Same sizing answer as mtty.c for the I/O BARs: ~8 + 1, I/O flag kept.
    assert_eq!(rd(&c, 0x10, 4), 0xFFFF_FFF9);
    assert_eq!(rd(&c, 0x14, 4), 0xFFFF_FFF9);
    assert_eq!(rd(&c, 0x18, 4), 0xFFFF_F000, "BAR2: 4 KiB mem32");
    for off in [0x1c, 0x20, 0x24] {
        assert_eq!(rd(&c, off, 4), 0, "BAR{} unimplemented", (off - 0x10) / 4);
    }
    let mut one = ConfigSpace::new(PortCount::One);
    one.write(0x14, 4, 0xFFFF_FFFF).unwrap();
    assert_eq!(rd(&one, 0x14, 4), 0, "BAR1 absent on mtty-1");
    assert_eq!(one.bar_address(1), None);
    one.write(0x18, 4, 0xFFFF_FFFF).unwrap();
    assert_eq!(rd(&one, 0x18, 4), 0xFFFF_F000, "DMA BAR present on mtty-1 too");
}

#[test]
fn bar_addresses_keep_only_address_bits() {
    let mut c = ConfigSpace::new(PortCount::Two);
    c.write(0x10, 4, 0xC007).unwrap();
    assert_eq!(rd(&c, 0x10, 4), 0xC001);
    assert_eq!(c.bar_address(0), Some(0xC000));
    c.write(0x14, 2, 0xC00A).unwrap();
    assert_eq!(rd(&c, 0x14, 4), 0xC009);
    assert_eq!(c.bar_address(1), Some(0xC008));
    c.write(0x18, 4, 0xFEBF_1234).unwrap();
    assert_eq!(rd(&c, 0x18, 4), 0xFEBF_1000);
    assert_eq!(c.bar_address(DMA_BAR), Some(0xFEBF_1000));
    // Byte-wise programming works too (the sample only handles offset 0x10).
    c.write(0x1b, 1, 0xAB).unwrap();
    assert_eq!(c.bar_address(DMA_BAR), Some(0xABBF_1000));
    assert_eq!(c.bar_address(3), None);
    assert_eq!(c.bar_address(200), None);
}

#[test]
fn bar_info_describes_the_layout() {
    let io = BarInfo { kind: BarKind::Io, size: 8 };
    assert_eq!(bar_info(PortCount::One, 0), Some(io));
    assert_eq!(bar_info(PortCount::One, 1), None);
    assert_eq!(bar_info(PortCount::Two, 1), Some(io));
    let mem = bar_info(PortCount::One, DMA_BAR).unwrap();
    assert_eq!(mem, BarInfo { kind: BarKind::Mem32, size: DMA_BAR_SIZE });
    assert_eq!(mem.flags(), 0);
    assert_eq!(io.flags(), PCI_BASE_ADDRESS_SPACE_IO);
    for i in 3..NUM_BARS {
        assert_eq!(bar_info(PortCount::Two, i), None);
    }
}

#[test]
fn command_register_writable_bits() {
    let mut c = ConfigSpace::new(PortCount::One);
    c.write(PCI_COMMAND, 2, 0xFFFF).unwrap();
    assert_eq!(c.command(), COMMAND_WRITABLE);
    assert!(c.io_enabled() && c.memory_enabled() && c.bus_master_enabled() && c.intx_disabled());
    c.write(PCI_COMMAND, 2, 0).unwrap();
    assert_eq!(c.command(), 0);
    // A 4-byte write to the command/status dword leaves status alone.
    c.write(PCI_COMMAND, 4, 0xFFFF_0006).unwrap();
    assert_eq!(rd(&c, PCI_COMMAND, 4), 0x0200_0006);
    c.write(0x05, 1, 0x04).unwrap();
    assert!(c.intx_disabled());
}

#[test]
fn interrupt_line_is_writable_and_pin_is_not() {
    let mut c = ConfigSpace::new(PortCount::One);
    c.write(PCI_INTERRUPT_LINE, 2, 0x0AFF).unwrap();
    assert_eq!(rd(&c, PCI_INTERRUPT_LINE, 1), 0xFF);
    c.write(PCI_INTERRUPT_LINE, 1, 0x0B).unwrap();
    assert_eq!(rd(&c, PCI_INTERRUPT_LINE, 1), 0x0B);
    assert_eq!(rd(&c, PCI_INTERRUPT_PIN, 1), 0x01);
}

#[test]
fn read_only_fields_ignore_writes() {
    let mut c = ConfigSpace::new(PortCount::Two);
    let before = *c.as_bytes();
    for (off, w) in [(0x00, 4), (0x02, 2), (0x06, 2), (0x08, 4), (0x0c, 4), (0x2c, 4)] {
        c.write(off, w, 0xFFFF_FFFF).unwrap();
    }
    for off in [0x30, 0x34, 0x38, 0x3d, 0x40, 0x60, 0xfc] {
        c.write(off, if off == 0x3d { 1 } else { 4 }, 0xFFFF_FFFF).unwrap();
    }
    assert_eq!(*c.as_bytes(), before);
}

#[test]
fn width_and_range_errors() {
    let mut c = ConfigSpace::new(PortCount::One);
    for w in [0u8, 3, 5, 8, 255] {
        assert_eq!(c.read(0, w), Err(ConfigError::BadWidth));
        assert_eq!(c.write(0, w, 0), Err(ConfigError::BadWidth));
    }
    assert_eq!(c.read(255, 1), Ok(0));
    assert_eq!(c.read(255, 2), Err(ConfigError::OutOfRange));
    assert_eq!(c.read(253, 4), Err(ConfigError::OutOfRange));
    assert_eq!(c.read(256, 1), Err(ConfigError::OutOfRange));
    assert_eq!(c.read(u16::MAX, 4), Err(ConfigError::OutOfRange));
    assert_eq!(c.write(256, 1, 0), Err(ConfigError::OutOfRange));
    // Unaligned accesses inside the space are fine.
    assert_eq!(c.read(0x01, 4), Ok(0x0132_5343));
}

#[test]
fn reset_and_byte_image_round_trip() {
    let mut c = ConfigSpace::new(PortCount::Two);
    c.write(0x10, 4, 0xD000).unwrap();
    c.write(PCI_COMMAND, 2, 7).unwrap();
    let back = ConfigSpace::from_bytes(PortCount::Two, c.as_bytes()).unwrap();
    assert_eq!(back, c);
    // The same bytes do not describe a one-port device (BAR1 differs).
    assert_eq!(ConfigSpace::from_bytes(PortCount::One, c.as_bytes()), None);
    let mut bad = *c.as_bytes();
    bad[0] ^= 1;
    assert_eq!(ConfigSpace::from_bytes(PortCount::Two, &bad), None);
    c.reset();
    assert_eq!(c, ConfigSpace::new(PortCount::Two));
    assert_eq!(PortCount::from_u8(1), Some(PortCount::One));
    assert_eq!(PortCount::from_u8(2), Some(PortCount::Two));
    assert_eq!(PortCount::from_u8(3), None);
    assert_eq!(PortCount::Two.get(), 2);
}

fn ports() -> impl Strategy<Value = PortCount> {
    prop_oneof![Just(PortCount::One), Just(PortCount::Two)]
}

proptest! {
    /// Arbitrary accesses never panic, only change writable bits, and a
    /// wide read equals the little-endian composition of byte reads.
    #[test]
    fn arbitrary_accesses(ports in ports(), ops in prop::collection::vec(
        (any::<u16>(), any::<u8>(), any::<u32>(), any::<bool>()), 0..200)) {
        let mut c = ConfigSpace::new(ports);
        let init = *ConfigSpace::new(ports).as_bytes();
        for (off, w, val, is_write) in ops {
            let off = off % 300;
            let w = [1u8, 2, 4, 3][usize::from(w % 4)];
            let ok = matches!(w, 1 | 2 | 4) && usize::from(off) + usize::from(w) <= 256;
            if is_write {
                prop_assert_eq!(c.write(off, w, val).is_ok(), ok);
            } else {
                let r = c.read(off, w);
                prop_assert_eq!(r.is_ok(), ok);
                if let Ok(v) = r {
                    let mut expect = 0u32;
                    for i in 0..u16::from(w) {
                        expect |= c.read(off + i, 1).unwrap() << (8 * i);
                    }
                    prop_assert_eq!(v, expect);
                }
            }
            // Read-only identity, class, pin and vendor data never change.
            let now = c.as_bytes();
            for i in (0x00..0x04).chain(0x06..0x10).chain(0x28..0x3c).chain(0x3d..0x100) {
                prop_assert_eq!(now[i], init[i], "byte {:#x}", i);
            }
            // BAR flag bits are hard-wired.
            prop_assert_eq!(now[0x10] & 0x07, 0x01);
            prop_assert_eq!(now[0x18], 0x00);
            prop_assert_eq!(now[0x19] & 0x0F, 0x00);
            prop_assert!(ConfigSpace::from_bytes(ports, now).is_some());
        }
    }
}
