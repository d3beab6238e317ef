//! Whole-device state and its migration stream.
//!
//! [`MttyState`] gathers everything the guest can observe of one mtty
//! device: both UART ports, the configuration space and the DMA engine. The
//! driver keeps one per device under its lock, and the VFIO migration data
//! is the fixed-size little-endian image produced by [`MttyState::save`].
//!
//! Stream layout (all fields little-endian):
//!
//! | offset | size | field                                                  |
//! |--------|------|--------------------------------------------------------|
//! | 0      | 8    | magic [`MAGIC`] (the value mtty.c uses)                |
//! | 8      | 4    | major version [`MAJOR_VERSION`]                        |
//! | 12     | 4    | minor version [`MINOR_VERSION`]                        |
//! | 16     | 4    | number of ports (1 or 2)                               |
//! | 20     | 4    | flags, must be 0                                       |
//! | 24     | 4    | total length, [`STATE_SIZE`]                           |
//! | 28     | 4    | CRC-32 of the payload (bytes 32 to the end)            |
//! | 32     | 32   | port 0 (`uart::Uart::save_state`)                      |
//! | 64     | 32   | port 1 (a reset port on one-port devices)              |
//! | 96     | 256  | configuration space                                    |
//! | 352    | 160  | DMA engine (`dma_engine::DmaEngine::save_state`)       |
//!
//! The header mirrors mtty.c's `struct mtty_data` (magic, versions, port
//! count, flags) so tools recognise the stream, but the major version is 2:
//! the sample copies raw C structs, which this format deliberately does not
//! reproduce. A restore checks the header, the length, the checksum and
//! then every invariant of every component, and builds a complete new state
//! or fails as a whole, so a truncated or corrupted stream can never leave
//! the device half-restored.

use super::dma_engine::DmaEngine;
use super::pci_config::{ConfigSpace, PortCount, CONFIG_SIZE};
use super::uart::Uart;

/// Stream magic, `MTTY_MAGIC` of mtty.c.
pub const MAGIC: u64 = 0x7e9d_0989_8c3e_2c4e;
/// Major version of this layout (mtty.c's raw-struct format is version 1).
pub const MAJOR_VERSION: u32 = 2;
/// Minor version of this layout (1: the DMA engine's copy command added 32
/// bytes to its snapshot).
pub const MINOR_VERSION: u32 = 1;
/// Length of the header in bytes.
pub const HEADER_LEN: usize = 32;
/// Length of one port's snapshot.
const PORT_LEN: usize = super::uart::STATE_LEN;
/// Length of the DMA engine's snapshot.
const DMA_LEN: usize = super::dma_engine::STATE_LEN;
/// Total length of the stream in bytes.
pub const STATE_SIZE: usize = HEADER_LEN + 2 * PORT_LEN + CONFIG_SIZE + DMA_LEN;

/// Why a stream could not be produced or loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationError {
    /// The output buffer is smaller than [`STATE_SIZE`].
    BufferTooSmall,
    /// The input is shorter than the header or than [`STATE_SIZE`].
    TooShort,
    /// Wrong magic number.
    BadMagic,
    /// Unsupported major or minor version.
    BadVersion,
    /// Non-zero flags.
    BadFlags,
    /// The length field or the input length is not [`STATE_SIZE`].
    BadLength,
    /// The stream is for a device with a different number of ports.
    PortMismatch,
    /// The payload checksum does not match.
    BadChecksum,
    /// The state of the given port is inconsistent.
    BadPortState(u8),
    /// The configuration space differs from the device type's read-only
    /// contents.
    BadConfig,
    /// The DMA engine state is inconsistent.
    BadDmaState,
}

/// Complete guest-visible state of one mtty device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MttyState {
    /// The UART ports; port 1 stays in reset state on one-port devices.
    pub ports: [Uart; 2],
    /// PCI configuration space (it also records the port count).
    pub config: ConfigSpace,
    /// DMA engine behind BAR2.
    pub dma: DmaEngine,
}

impl MttyState {
    /// Power-on state of a device with `ports` UARTs.
    pub const fn new(ports: PortCount) -> Self {
        MttyState {
            ports: [Uart::new(), Uart::new()],
            config: ConfigSpace::new(ports),
            dma: DmaEngine::new(),
        }
    }

    /// Number of ports of this device.
    pub fn nr_ports(&self) -> PortCount {
        self.config.ports()
    }

    /// Device reset: every register to its power-on value. DMA pins stay
    /// recorded so the driver can still release them (see
    /// `DmaEngine::reset`).
    pub fn reset(&mut self) {
        for p in self.ports.iter_mut() {
            p.reset();
        }
        self.config.reset();
        self.dma.reset();
    }

    /// Pending interrupt causes of the whole device in one mask: port 0 in
    /// bits 7:0, port 1 in bits 15:8, the DMA engine in bits 23:16. Compare
    /// two of these with `IrqChange::between` to drive the single INTx/MSI.
    pub fn pending_mask(&self) -> u32 {
        let [p0, p1] = &self.ports;
        let p1_bits = match self.nr_ports() {
            PortCount::One => 0,
            PortCount::Two => u32::from(p1.pending_mask()),
        };
        u32::from(p0.pending_mask()) | p1_bits << 8 | (self.dma.pending_mask() & 0xFF) << 16
    }

    /// Level of the device's interrupt line.
    pub fn irq_asserted(&self) -> bool {
        self.pending_mask() != 0
    }

    /// Writes the stream into `out`, returning its length ([`STATE_SIZE`]).
    pub fn save(&self, out: &mut [u8]) -> Result<usize, MigrationError> {
        let out = out
            .get_mut(..STATE_SIZE)
            .ok_or(MigrationError::BufferTooSmall)?;
        let (header, payload) = out.split_at_mut(HEADER_LEN);
        let mut w = super::wire::Writer::new(payload);
        for p in &self.ports {
            w.bytes(&p.save_state());
        }
        w.bytes(self.config.as_bytes());
        w.bytes(&self.dma.save_state());
        if w.finish() != Some(STATE_SIZE - HEADER_LEN) {
            return Err(MigrationError::BufferTooSmall);
        }
        let crc = super::wire::crc32(payload);
        let mut h = super::wire::Writer::new(header);
        h.u64(MAGIC);
        h.u32(MAJOR_VERSION);
        h.u32(MINOR_VERSION);
        h.u32(u32::from(self.nr_ports().get()));
        h.u32(0);
        h.u32(STATE_SIZE as u32);
        h.u32(crc);
        h.finish()
            .filter(|&n| n == HEADER_LEN)
            .ok_or(MigrationError::BufferTooSmall)?;
        Ok(STATE_SIZE)
    }

    /// Validates just the header, as soon as its bytes have arrived, so a
    /// stream for the wrong device is refused early (as mtty.c does in
    /// `mtty_resume_write`).
    pub fn check_header(buf: &[u8], expected: PortCount) -> Result<(), MigrationError> {
        let header = buf.get(..HEADER_LEN).ok_or(MigrationError::TooShort)?;
        let mut r = super::wire::Reader::new(header);
        let magic = r.u64();
        let major = r.u32();
        let minor = r.u32();
        let nr_ports = r.u32();
        let flags = r.u32();
        let length = r.u32();
        let _crc = r.u32();
        if r.finish().is_none() {
            return Err(MigrationError::TooShort);
        }
        if magic != MAGIC {
            return Err(MigrationError::BadMagic);
        }
        if major != MAJOR_VERSION || minor != MINOR_VERSION {
            return Err(MigrationError::BadVersion);
        }
        if flags != 0 {
            return Err(MigrationError::BadFlags);
        }
        if usize::try_from(length).ok() != Some(STATE_SIZE) {
            return Err(MigrationError::BadLength);
        }
        if nr_ports != u32::from(expected.get()) {
            return Err(MigrationError::PortMismatch);
        }
        Ok(())
    }

    /// Loads a complete stream for a device with `expected` ports. The
    /// input must be exactly [`STATE_SIZE`] bytes.
    pub fn restore(buf: &[u8], expected: PortCount) -> Result<Self, MigrationError> {
        Self::check_header(buf, expected)?;
        if buf.len() < STATE_SIZE {
            return Err(MigrationError::TooShort);
        }
        if buf.len() > STATE_SIZE {
            return Err(MigrationError::BadLength);
        }
        let (header, payload) = buf.split_at(HEADER_LEN);
        let stored_crc = header
            .get(28..32)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .ok_or(MigrationError::TooShort)?;
        if super::wire::crc32(payload) != stored_crc {
            return Err(MigrationError::BadChecksum);
        }
        let mut r = super::wire::Reader::new(payload);
        let port0: [u8; PORT_LEN] = r.array();
        let port1: [u8; PORT_LEN] = r.array();
        let config: [u8; CONFIG_SIZE] = r.array();
        let dma: [u8; DMA_LEN] = r.array();
        if r.finish().is_none() {
            return Err(MigrationError::TooShort);
        }
        let p0 = Uart::restore_state(&port0).ok_or(MigrationError::BadPortState(0))?;
        let p1 = Uart::restore_state(&port1).ok_or(MigrationError::BadPortState(1))?;
        let config = ConfigSpace::from_bytes(expected, &config).ok_or(MigrationError::BadConfig)?;
        let dma = DmaEngine::restore_state(&dma).ok_or(MigrationError::BadDmaState)?;
        Ok(MttyState {
            ports: [p0, p1],
            config,
            dma,
        })
    }
}
