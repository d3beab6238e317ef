//! Emulated PCI configuration space of the mtty device.
//!
//! The image is the one `mtty_create_config_space` builds in mtty.c:
//! vendor/device 0x4348:0x3253, revision 0x10, class 0x070002 (16550
//! compatible serial controller), no capability list, subsystem
//! 0x4348:0x3253, interrupt pin INTA, and the vendor bytes at 0x40 and the
//! "PCI Serial/UART" string at 0x60.
//!
//! BAR layout:
//!
//! | BAR | type                          | size   | present            | decodes                |
//! |-----|-------------------------------|--------|--------------------|------------------------|
//! | 0   | I/O                           | 8      | always             | UART port 0 registers  |
//! | 1   | I/O                           | 8      | two-port type only | UART port 1 registers  |
//! | 2   | memory, 32-bit, non-prefetch  | 4096   | always             | DMA engine registers   |
//! | 3-5 | none (read as zero)           | -      | -                  | -                      |
//!
//! BAR2 is new in this port; it sits at the same index for both types so a
//! driver finds the DMA engine without looking at the port count, and its
//! 4 KiB size is one page so the register block could later be mmap'able.
//!
//! Writes are applied through a per-byte write mask, as real hardware (and
//! QEMU) do: the bits a write may change are the BAR address bits, the
//! command bits I/O space, memory space, bus master and INTx disable, and the
//! interrupt line. All other bytes are read-only. Accesses of 1, 2 or 4 bytes
//! at any offset are allowed as long as they stay inside the 256-byte space;
//! values are little-endian.
//!
//! Differences from mtty.c:
//!
//! * The space is 256 bytes; the sample declares 0xff (255) bytes.
//! * The command register's I/O, memory, bus-master and INTx-disable bits are
//!   writable, because the device now has a memory BAR and does DMA; the
//!   sample ignores command writes. It still resets to 0x0001 (I/O enabled).
//! * A BAR write keeps only the address bits the BAR size allows, for any
//!   value. The sample masks only the all-ones sizing write and stores other
//!   values unmasked (so low address bits could read back as written).
//! * Writes of any width at any offset hit the registers they cover. The
//!   sample only handles writes starting exactly at a register's offset and
//!   reads four bytes from the caller's buffer for BAR writes of any size.

/// Size of the configuration space in bytes.
pub const CONFIG_SIZE: usize = 256;

/// Vendor ID (WCH), as in mtty.c.
pub const VENDOR_ID: u16 = 0x4348;
/// Device ID, as in mtty.c.
pub const DEVICE_ID: u16 = 0x3253;
/// Subsystem vendor ID, as in mtty.c.
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x4348;
/// Subsystem ID, as in mtty.c.
pub const SUBSYSTEM_ID: u16 = 0x3253;
/// Revision ID, as in mtty.c.
pub const REVISION: u8 = 0x10;
/// Class code: simple communication controller, serial, 16550 compatible.
pub const CLASS_CODE: u32 = 0x07_00_02;

/// Offset of the vendor ID.
pub const PCI_VENDOR_ID: u16 = 0x00;
/// Offset of the device ID.
pub const PCI_DEVICE_ID: u16 = 0x02;
/// Offset of the command register.
pub const PCI_COMMAND: u16 = 0x04;
/// Offset of the status register.
pub const PCI_STATUS: u16 = 0x06;
/// Offset of the revision ID.
pub const PCI_REVISION_ID: u16 = 0x08;
/// Offset of the programming interface byte (start of the class code).
pub const PCI_CLASS_PROG: u16 = 0x09;
/// Offset of BAR0; BAR n is at `PCI_BASE_ADDRESS_0 + 4 * n`.
pub const PCI_BASE_ADDRESS_0: u16 = 0x10;
/// Offset of the subsystem vendor ID.
pub const PCI_SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
/// Offset of the subsystem ID.
pub const PCI_SUBSYSTEM_ID: u16 = 0x2e;
/// Offset of the capability pointer.
pub const PCI_CAPABILITY_LIST: u16 = 0x34;
/// Offset of the interrupt line.
pub const PCI_INTERRUPT_LINE: u16 = 0x3c;
/// Offset of the interrupt pin.
pub const PCI_INTERRUPT_PIN: u16 = 0x3d;

/// Command: I/O space enable.
pub const PCI_COMMAND_IO: u16 = 0x0001;
/// Command: memory space enable.
pub const PCI_COMMAND_MEMORY: u16 = 0x0002;
/// Command: bus master enable.
pub const PCI_COMMAND_MASTER: u16 = 0x0004;
/// Command: INTx emulation disable.
pub const PCI_COMMAND_INTX_DISABLE: u16 = 0x0400;
/// Command bits the guest may change.
pub const COMMAND_WRITABLE: u16 =
    PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE;

/// BAR flag: the BAR maps I/O space.
pub const PCI_BASE_ADDRESS_SPACE_IO: u32 = 0x01;

/// Index of the DMA engine's BAR.
pub const DMA_BAR: u8 = 2;
/// Size of each UART I/O BAR, as `MTTY_IO_BAR_SIZE`.
pub const IO_BAR_SIZE: u32 = 8;
/// Size of the DMA engine's memory BAR: the engine's register block.
pub const DMA_BAR_SIZE: u32 = super::dma_engine::BAR_SIZE;
/// Number of BARs in a type 0 header.
pub const NUM_BARS: u8 = 6;

/// The two device types of the sample (`mtty-1` and `mtty-2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortCount {
    /// One UART, BAR0 only.
    One,
    /// Two UARTs, BAR0 and BAR1.
    Two,
}

impl PortCount {
    /// Number of ports as an integer.
    pub const fn get(self) -> u8 {
        match self {
            PortCount::One => 1,
            PortCount::Two => 2,
        }
    }

    /// Converts an integer port count; only 1 and 2 exist.
    pub const fn from_u8(n: u8) -> Option<Self> {
        match n {
            1 => Some(PortCount::One),
            2 => Some(PortCount::Two),
            _ => None,
        }
    }
}

/// Why a configuration access was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// Width other than 1, 2 or 4 bytes.
    BadWidth,
    /// The access does not fit inside the 256-byte space.
    OutOfRange,
}

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// I/O space BAR.
    Io,
    /// 32-bit non-prefetchable memory BAR.
    Mem32,
}

/// Static description of an implemented BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarInfo {
    /// Address space the BAR decodes.
    pub kind: BarKind,
    /// Size in bytes (a power of two).
    pub size: u32,
}

/// Describes BAR `index` of a device with `ports` ports, or `None` if that
/// BAR is not implemented (reads as zero, ignores writes).
pub const fn bar_info(ports: PortCount, index: u8) -> Option<BarInfo> {
    match (index, ports) {
        (0, _) | (1, PortCount::Two) => Some(BarInfo {
            kind: BarKind::Io,
            size: IO_BAR_SIZE,
        }),
        (DMA_BAR, _) => Some(BarInfo {
            kind: BarKind::Mem32,
            size: DMA_BAR_SIZE,
        }),
        _ => None,
    }
}

impl BarInfo {
    /// Hard-wired low flag bits of the BAR (space indicator, memory type).
    pub const fn flags(self) -> u32 {
        match self.kind {
            BarKind::Io => PCI_BASE_ADDRESS_SPACE_IO,
            BarKind::Mem32 => 0,
        }
    }
}

/// Bits of a BAR the guest may write: the address bits above the size.
const fn bar_write_mask(info: BarInfo) -> u32 {
    // Sizes are powers of two, so this is the two's complement size mask,
    // like `~(MTTY_IO_BAR_SIZE) + 1` in mtty.c.
    info.size.wrapping_neg()
}

/// Write mask of configuration byte `offset` for a device with `ports`.
const fn byte_write_mask(ports: PortCount, offset: usize) -> u8 {
    let [cmd_lo, cmd_hi] = COMMAND_WRITABLE.to_le_bytes();
    match offset {
        0x04 => cmd_lo,
        0x05 => cmd_hi,
        0x3c => 0xFF,
        0x10..=0x27 => {
            let rel = offset.wrapping_sub(0x10);
            let index = (rel / 4) as u8;
            let byte = rel % 4;
            match bar_info(ports, index) {
                Some(info) => {
                    let [b0, b1, b2, b3] = bar_write_mask(info).to_le_bytes();
                    match byte {
                        0 => b0,
                        1 => b1,
                        2 => b2,
                        _ => b3,
                    }
                }
                None => 0,
            }
        }
        _ => 0,
    }
}

/// Power-on image of the configuration space, as built by
/// `mtty_create_config_space` plus BAR2.
///
/// It is only ever evaluated in the constants below, so every index is
/// checked by the compiler during constant evaluation and cannot fail at run
/// time; that is why the indexing lints are allowed here alone.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
const fn build_image(ports: PortCount) -> [u8; CONFIG_SIZE] {
    let mut c = [0u8; CONFIG_SIZE];
    let [v0, v1] = VENDOR_ID.to_le_bytes();
    let [d0, d1] = DEVICE_ID.to_le_bytes();
    c[0x00] = v0;
    c[0x01] = v1;
    c[0x02] = d0;
    c[0x03] = d1;
    // Command: I/O+, Mem-, BusMaster-, as in the sample.
    c[0x04] = 0x01;
    // Status: DEVSEL medium (0x0200), no capability list.
    c[0x07] = 0x02;
    c[0x08] = REVISION;
    c[0x09] = 0x02;
    c[0x0a] = 0x00;
    c[0x0b] = 0x07;
    // BAR0 (and BAR1 for two ports): I/O space.
    c[0x10] = 0x01;
    if let PortCount::Two = ports {
        c[0x14] = 0x01;
    }
    // BAR2: 32-bit non-prefetchable memory, all flag bits zero.
    let [s0, s1] = SUBSYSTEM_VENDOR_ID.to_le_bytes();
    let [s2, s3] = SUBSYSTEM_ID.to_le_bytes();
    c[0x2c] = s0;
    c[0x2d] = s1;
    c[0x2e] = s2;
    c[0x2f] = s3;
    c[0x34] = 0x00;
    c[0x3d] = 0x01;
    // Vendor specific data, copied from the sample.
    c[0x40] = 0x23;
    c[0x43] = 0x80;
    c[0x44] = 0x23;
    c[0x48] = 0x23;
    c[0x4c] = 0x23;
    let s = b"PCI Serial/UART";
    let mut i = 0;
    while i < s.len() {
        c[0x60 + i] = s[i];
        i += 1;
    }
    c
}

/// Power-on image of a one-port device.
const IMAGE_ONE: [u8; CONFIG_SIZE] = build_image(PortCount::One);
/// Power-on image of a two-port device.
const IMAGE_TWO: [u8; CONFIG_SIZE] = build_image(PortCount::Two);

/// Power-on image for `ports`, taken from the precomputed constants.
const fn initial_image(ports: PortCount) -> [u8; CONFIG_SIZE] {
    match ports {
        PortCount::One => IMAGE_ONE,
        PortCount::Two => IMAGE_TWO,
    }
}

/// The emulated configuration space of one mtty device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSpace {
    ports: PortCount,
    bytes: [u8; CONFIG_SIZE],
}

impl ConfigSpace {
    /// Power-on configuration space for a device with `ports` UARTs.
    pub const fn new(ports: PortCount) -> Self {
        ConfigSpace {
            ports,
            bytes: initial_image(ports),
        }
    }

    /// Restores the power-on contents (device reset).
    pub fn reset(&mut self) {
        *self = ConfigSpace::new(self.ports);
    }

    /// Device type this space describes.
    pub fn ports(&self) -> PortCount {
        self.ports
    }

    /// Reads `width` (1, 2 or 4) bytes at `offset`, little-endian.
    pub fn read(&self, offset: u16, width: u8) -> Result<u32, ConfigError> {
        let range = Self::check(offset, width)?;
        let mut val: u32 = 0;
        for (i, pos) in range.enumerate() {
            let b = self.bytes.get(pos).copied().unwrap_or(0);
            val |= u32::from(b).checked_shl((i as u32).saturating_mul(8)).unwrap_or(0);
        }
        Ok(val)
    }

    /// Writes the low `width` (1, 2 or 4) bytes of `val` at `offset`,
    /// changing only writable bits.
    pub fn write(&mut self, offset: u16, width: u8, val: u32) -> Result<(), ConfigError> {
        let range = Self::check(offset, width)?;
        let src = val.to_le_bytes();
        for (new, pos) in src.iter().zip(range) {
            let mask = byte_write_mask(self.ports, pos);
            if let Some(b) = self.bytes.get_mut(pos) {
                *b = (*b & !mask) | (new & mask);
            }
        }
        Ok(())
    }

    /// Current command register.
    pub fn command(&self) -> u16 {
        self.read_u16(usize::from(PCI_COMMAND))
    }

    /// True when the guest enabled I/O decoding (the UART BARs).
    pub fn io_enabled(&self) -> bool {
        self.command() & PCI_COMMAND_IO != 0
    }

    /// True when the guest enabled memory decoding (the DMA BAR).
    pub fn memory_enabled(&self) -> bool {
        self.command() & PCI_COMMAND_MEMORY != 0
    }

    /// True when the guest allowed the device to master the bus (do DMA).
    pub fn bus_master_enabled(&self) -> bool {
        self.command() & PCI_COMMAND_MASTER != 0
    }

    /// True when the guest disabled INTx; the driver must not signal INTx.
    pub fn intx_disabled(&self) -> bool {
        self.command() & PCI_COMMAND_INTX_DISABLE != 0
    }

    /// Guest-programmed base address of BAR `index` with the flag bits
    /// removed, or `None` if the BAR is not implemented (the equivalent of
    /// `mdev_read_base` in mtty.c).
    pub fn bar_address(&self, index: u8) -> Option<u32> {
        let info = bar_info(self.ports, index)?;
        let off = usize::from(PCI_BASE_ADDRESS_0).checked_add(usize::from(index).checked_mul(4)?)?;
        Some(self.read_u32(off) & bar_write_mask(info))
    }

    /// Raw configuration bytes, for migration.
    pub fn as_bytes(&self) -> &[u8; CONFIG_SIZE] {
        &self.bytes
    }

    /// Rebuilds a configuration space from raw bytes, refusing images whose
    /// read-only bits differ from the power-on image of `ports`.
    pub fn from_bytes(ports: PortCount, bytes: &[u8; CONFIG_SIZE]) -> Option<Self> {
        let init = initial_image(ports);
        let consistent = bytes.iter().zip(init.iter()).enumerate().all(|(i, (b, r))| {
            let mask = byte_write_mask(ports, i);
            b & !mask == r & !mask
        });
        consistent.then_some(ConfigSpace {
            ports,
            bytes: *bytes,
        })
    }

    fn check(offset: u16, width: u8) -> Result<core::ops::Range<usize>, ConfigError> {
        if !matches!(width, 1 | 2 | 4) {
            return Err(ConfigError::BadWidth);
        }
        let start = usize::from(offset);
        let end = start
            .checked_add(usize::from(width))
            .ok_or(ConfigError::OutOfRange)?;
        if end > CONFIG_SIZE {
            return Err(ConfigError::OutOfRange);
        }
        Ok(start..end)
    }

    fn read_u16(&self, off: usize) -> u16 {
        let lo = self.bytes.get(off).copied().unwrap_or(0);
        let hi = off
            .checked_add(1)
            .and_then(|o| self.bytes.get(o))
            .copied()
            .unwrap_or(0);
        u16::from_le_bytes([lo, hi])
    }

    fn read_u32(&self, off: usize) -> u32 {
        let lo = self.read_u16(off);
        let hi = off.checked_add(2).map_or(0, |o| self.read_u16(o));
        u32::from(lo) | u32::from(hi) << 16
    }
}
