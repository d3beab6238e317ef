//! The UART character timeout (IIR ID 0xC) of the Rust mtty: data below the
//! FIFO trigger level raises an interrupt once nothing moved through the
//! FIFO for four character times. The C sample has no timeout (it forces
//! the trigger level to 1), so these cases are skipped on it.

use super::mtty::{bar0, open_device, reg::*};
use super::{CaseResult, Ctx};
use crate::uapi::*;
use crate::vfio::{Device, EventFd, VResult};
use crate::{check, check_eq};
use std::time::{Duration, Instant};

/// FIFO enabled and cleared, receive trigger level 8.
const FCR_TRIGGER_8: u8 = 0x87;
/// IIR: FIFO bits with the character-timeout ID.
const IIR_TIMEOUT: u8 = 0xCC;
/// IIR: FIFO bits with the received-data ID.
const IIR_RDI: u8 = 0xC4;
/// IIR: FIFO bits, no interrupt pending.
const IIR_NONE: u8 = 0xC1;

fn rust_only(ctx: &Ctx) -> CaseResult {
    super::mtty::needs_rust_mtty(ctx, "the C sample has no character timeout")
}

/// Waits up to `limit` for `ev` to be signalled; returns the count (0 on
/// timeout) and the time waited.
fn wait(ev: &EventFd, limit: Duration) -> (u64, Duration) {
    let start = Instant::now();
    loop {
        let n = ev.take();
        let waited = start.elapsed();
        if n > 0 || waited >= limit {
            return (n, waited);
        }
        let mut pfd = libc::pollfd { fd: ev.raw(), events: libc::POLLIN, revents: 0 };
        let left = limit.saturating_sub(waited).as_millis().clamp(1, 1000) as i32;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, left) };
    }
}

/// Programs 8N1 at `divisor`, FIFO trigger level 8 and IER.RDI on the port
/// at `base`.
fn setup_port(d: &Device, base: u64, divisor: u16) -> VResult<()> {
    d.write8(base + LCR, LCR_DLAB | 0x03)?;
    d.write8(base + DLL, divisor.to_le_bytes()[0])?;
    d.write8(base + DLM, divisor.to_le_bytes()[1])?;
    d.write8(base + LCR, 0x03)?;
    d.write8(base + FCR, FCR_TRIGGER_8)?;
    d.write8(base + IER, IER_RDI)
}

/// Three bytes below trigger level 8 at 115200 baud: the eventfd fires and
/// IIR reports the character timeout; reading the bytes clears it; eight
/// bytes are "received data", not a timeout.
pub fn fires_below_trigger(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    let o = open_device(ctx, "mtty-1")?;
    let d = &o.device;
    let b = bar0(d)?;
    let ev = EventFd::new()?;
    d.set_irq_eventfd(VFIO_PCI_MSI_IRQ_INDEX, ev.raw())?;
    setup_port(d, b, 1)?;
    check_eq!(ev.take(), 0, "no interrupt with an empty FIFO");
    for c in *b"abc" {
        d.write8(b + THR, c)?;
    }
    let (n, waited) = wait(&ev, Duration::from_secs(10));
    check!(n > 0, "no interrupt within {waited:?} for 3 bytes below trigger level 8");
    check_eq!(d.read8(b + IIR)?, IIR_TIMEOUT, "IIR after the timeout");
    check_eq!(d.read8(b + LSR)? & LSR_DR, LSR_DR, "data ready");
    let back: Vec<u8> = (0..3).map(|_| d.read8(b + RBR)).collect::<Result<_, _>>()?;
    check_eq!(back, b"abc".to_vec(), "the bytes");
    check_eq!(d.read8(b + IIR)?, IIR_NONE, "IIR with the FIFO drained");
    let _ = ev.take();
    for c in 0..8u8 {
        d.write8(b + THR, c)?;
    }
    check_eq!(d.read8(b + IIR)?, IIR_RDI, "8 bytes reach the trigger level: received data");
    check!(wait(&ev, Duration::from_secs(2)).0 > 0, "received-data interrupt");
    Ok(())
}

/// The timeout waits four character times: at 14 baud (divisor 8192) that
/// is about 2.8 s, so IIR shows nothing right after the write and the
/// interrupt comes seconds later; a byte written meanwhile restarts it.
pub fn waits_four_characters(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    let o = open_device(ctx, "mtty-2")?;
    let d = &o.device;
    // Port 1 this time (each port has its own timeout).
    let b = d.region(VFIO_PCI_BAR1_REGION_INDEX)?.offset;
    let ev = EventFd::new()?;
    d.set_irq_eventfd(VFIO_PCI_MSI_IRQ_INDEX, ev.raw())?;
    setup_port(d, b, 8192)?;
    // 4 characters x 10 bits x 8192 / 115200 baud.
    let timeout = Duration::from_micros(40 * 8192 * 1_000_000 / 115_200);
    let start = Instant::now();
    d.write8(b + THR, b'x')?;
    check_eq!(d.read8(b + IIR)?, IIR_NONE, "IIR right after the write");
    std::thread::sleep(timeout / 2);
    d.write8(b + THR, b'y')?;
    let restarted = Instant::now();
    let (n, _) = wait(&ev, timeout * 5);
    let since_second = restarted.elapsed();
    check!(n > 0, "no timeout interrupt within {:?}", start.elapsed());
    check!(
        since_second >= timeout * 9 / 10,
        "interrupt {since_second:?} after the second byte, before the {timeout:?} timeout"
    );
    check_eq!(d.read8(b + IIR)?, IIR_TIMEOUT, "IIR of port 1");
    let port0 = bar0(d)?;
    check_eq!(d.read8(port0 + IIR)?, IIR_NONE, "port 0 has nothing");
    Ok(())
}

/// Reset, close and instance removal with a timeout armed: the timer is
/// cancelled (a reset FIFO raises nothing later) and the device goes away
/// cleanly (the runner checks for KASAN and lockdep reports).
pub fn teardown_while_armed(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    let timeout = Duration::from_micros(40 * 2048 * 1_000_000 / 115_200);
    {
        let o = open_device(ctx, "mtty-1")?;
        let d = &o.device;
        let b = bar0(d)?;
        let ev = EventFd::new()?;
        d.set_irq_eventfd(VFIO_PCI_MSI_IRQ_INDEX, ev.raw())?;
        setup_port(d, b, 2048)?;
        d.write8(b + THR, 1)?;
        d.reset()?;
        let (n, _) = wait(&ev, timeout * 2);
        check_eq!(n, 0, "an interrupt after reset emptied the FIFO");
        check_eq!(d.read8(b + IIR)?, IIR_NONE, "IIR after reset");
        // Armed again, then closed and removed (dropping `o`).
        setup_port(d, b, 2048)?;
        d.write8(b + THR, 2)?;
    }
    // Closed with the timer armed, the instance removed right after; a
    // second device closes in the middle of many short timeouts.
    let o = open_device(ctx, "mtty-1")?;
    let d = &o.device;
    let b = bar0(d)?;
    let ev = EventFd::new()?;
    d.set_irq_eventfd(VFIO_PCI_MSI_IRQ_INDEX, ev.raw())?;
    setup_port(d, b, 1)?;
    for i in 0..200u8 {
        d.write8(b + THR, i)?;
        let _ = d.read8(b + RBR)?;
    }
    d.write8(b + THR, 3)?;
    drop(o);
    std::thread::sleep(timeout);
    Ok(())
}
