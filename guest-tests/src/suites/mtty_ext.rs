//! Behaviour of the Rust mtty beyond the C sample (see `docs/mtty.md`):
//! level-triggered interrupts, a FIFO that holds 16 bytes, a reset that
//! resets the device, the `description` attribute. Skipped on the sample.

use super::mtty::{bar0, open_device, reg::*};
use super::{CaseResult, Ctx};
use crate::uapi::*;
use crate::vfio::EventFd;
use crate::{check, check_eq};

fn rust_only(ctx: &Ctx) -> CaseResult {
    super::mtty::needs_rust_mtty(ctx, "behaviour of the Rust mtty only")
}

/// Each type has a `description`.
pub fn type_description(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    for t in ["mtty-1", "mtty-2"] {
        let p = ctx.mtty_parent().join("mdev_supported_types").join(t).join("description");
        let d = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        check!(d.contains("16550A"), "{t} description: {d:?}");
    }
    Ok(())
}

/// A still-pending cause fires again when INTx is unmasked, and stops once
/// the guest clears it.
pub fn level_intx_unmask(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    let o = open_device(ctx, "mtty-1")?;
    let d = &o.device;
    let b = bar0(d)?;
    let ev = EventFd::new()?;
    d.set_irq_eventfd(VFIO_PCI_INTX_IRQ_INDEX, ev.raw())?;
    d.write8(b + FCR, FCR_ENABLE_CLEAR)?;
    d.write8(b + IER, IER_RDI)?;
    d.write8(b + THR, b'q')?;
    check_eq!(ev.take(), 1, "received data raises INTx");
    d.set_irq_none(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_UNMASK, 0, 1)?;
    check_eq!(ev.take(), 1, "unmask with the byte still unread re-raises");
    check_eq!(d.read8(b + IIR)?, 0xC4, "IIR: received data");
    check_eq!(d.read8(b + RBR)?, b'q', "the byte");
    d.set_irq_none(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_UNMASK, 0, 1)?;
    check_eq!(ev.take(), 0, "no interrupt once the cause is gone");
    check_eq!(d.read8(b + IIR)?, 0xC1, "IIR: none");
    Ok(())
}

/// Enabling a cause in IER that already holds raises the interrupt (MSI).
pub fn level_ier_enable(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    let o = open_device(ctx, "mtty-1")?;
    let d = &o.device;
    let b = bar0(d)?;
    let ev = EventFd::new()?;
    d.set_irq_eventfd(VFIO_PCI_MSI_IRQ_INDEX, ev.raw())?;
    d.write8(b + FCR, FCR_ENABLE_CLEAR)?;
    d.write8(b + THR, b'1')?;
    check_eq!(ev.take(), 0, "nothing enabled yet");
    d.write8(b + IER, IER_RDI)?;
    check_eq!(ev.take(), 1, "IER.RDI with data waiting raises");
    d.write8(b + THR, b'2')?;
    check_eq!(ev.take(), 0, "a second byte adds no new cause");
    d.write8(b + IER, IER_RDI | IER_RLSI)?;
    check_eq!(ev.take(), 0, "enabling a cause that does not hold");
    Ok(())
}

/// The FIFO holds 16 bytes (the sample reports a full FIFO as empty).
pub fn full_fifo(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    let o = open_device(ctx, "mtty-1")?;
    let d = &o.device;
    let b = bar0(d)?;
    d.write8(b + FCR, FCR_ENABLE_CLEAR)?;
    for i in 0..16u8 {
        d.write8(b + THR, i)?;
    }
    check_eq!(d.read8(b + LSR)?, LSR_DR, "LSR of a full FIFO: data ready, no overrun");
    let back: Vec<u8> = (0..16).map(|_| d.read8(b + RBR)).collect::<Result<_, _>>()?;
    check_eq!(back, (0..16u8).collect::<Vec<_>>(), "all 16 bytes");
    check_eq!(d.read8(b + LSR)?, LSR_THRE | LSR_TEMT, "empty again");
    Ok(())
}

/// VFIO_DEVICE_RESET returns the UARTs to power-on state (the sample's
/// reset only resets its migration state).
pub fn reset_clears_state(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    let o = open_device(ctx, "mtty-1")?;
    reset_clears_uart(&o.device)
}

/// Sets SCR, IER and a FIFO byte, resets the device, and checks the
/// power-on values; however the device was opened (group or cdev).
pub(crate) fn reset_clears_uart(d: &crate::vfio::Device) -> CaseResult {
    let b = bar0(d)?;
    d.write8(b + SCR, 0x77)?;
    d.write8(b + IER, IER_RDI)?;
    d.write8(b + LCR, 0x1b)?;
    d.write8(b + THR, b'z')?;
    d.reset()?;
    check_eq!(d.read8(b + SCR)?, 0, "SCR after reset");
    check_eq!(d.read8(b + IER)?, 0, "IER after reset");
    check_eq!(d.read8(b + LCR)?, 0, "LCR after reset");
    check_eq!(d.read8(b + LSR)?, LSR_THRE | LSR_TEMT, "FIFO empty after reset");
    Ok(())
}

/// Reads and writes of the config space beyond what the sample handles:
/// BAR sizing, the command register.
pub fn config_space(ctx: &Ctx) -> CaseResult {
    let o = open_device(ctx, "mtty-2")?;
    let d = &o.device;
    let cfg = d.region(VFIO_PCI_CONFIG_REGION_INDEX)?.offset;
    check_eq!(d.read32(cfg + 0x08)?, 0x0700_0210, "class code and revision");
    check_eq!(d.read32(cfg + 0x2c)?, 0x3253_4348, "subsystem IDs");
    check_eq!(d.read8(cfg + 0x3d)?, 1, "interrupt pin INTA");
    // BAR sizing: all ones, read back the size mask (the sample does this too).
    for (bar, want) in [(0x10u64, 0xffff_fff9u32), (0x14, 0xffff_fff9)] {
        d.write32(cfg + bar, 0xffff_ffff)?;
        check_eq!(d.read32(cfg + bar)?, want, "BAR at {bar:#x} sizing");
        d.write32(cfg + bar, 0x0000_c000)?;
    }
    check_eq!(d.read32(cfg + 0x10)? & !0x7, 0xc000, "BAR0 address");
    if !ctx.backend.rust_mtty {
        return Ok(());
    }
    // Ours: BAR2 is a 4 KiB memory BAR and the command register is writable.
    d.write32(cfg + 0x18, 0xffff_ffff)?;
    check_eq!(d.read32(cfg + 0x18)?, 0xffff_f000, "BAR2 sizing (4 KiB memory)");
    d.write16(cfg + 0x04, 0x0007)?;
    check_eq!(d.read8(cfg + 0x04)?, 0x07, "command: I/O, memory, bus master");
    check_eq!(d.read32(cfg)?, 0x3253_4348, "IDs are read-only");
    d.write32(cfg, 0)?;
    check_eq!(d.read32(cfg)?, 0x3253_4348, "IDs unchanged by a write");
    Ok(())
}
