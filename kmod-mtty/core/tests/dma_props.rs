//! Property tests of the DMA engine: descriptor encoding, the unmap
//! decision against a brute-force model, robustness of the engine under
//! arbitrary register traffic and unmaps, and end-to-end data integrity
//! (including migration in the middle of transfers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

mod common;

use common::{Sim, PAGE};
use mtty_core::dma_engine::*;
use mtty_core::uart::{Uart, RBR, THR};
use proptest::prelude::*;

/// Independent statement of descriptor validity.
fn valid(d: &Descriptor) -> bool {
    d.len >= 1
        && d.len <= 4096
        && d.flags & !1 == 0
        && (u128::from(d.addr) + u128::from(d.len)) <= (1u128 << 64)
}

fn any_desc() -> impl Strategy<Value = Descriptor> {
    let addr = prop_oneof![
        4 => 0x40_000u64..0x48_000,
        1 => any::<u64>(),
        1 => (0u64..8192).prop_map(|o| u64::MAX - o),
    ];
    let len = prop_oneof![4 => 1u32..=4096, 1 => Just(0u32), 1 => 4097u32..=8192, 1 => any::<u32>()];
    let flags = prop_oneof![6 => Just(0u32), 1 => Just(DESC_DONE), 1 => any::<u32>()];
    (addr, len, flags).prop_map(|(addr, len, flags)| Descriptor { addr, len, flags })
}

// ---------------------------------------------------------------------
// (e) unmap decision against brute force.

/// Lowest address in `[u, u + len)` (clipped at 2^64) that lies in one of
/// the ranges, found by walking the addresses (or, for long unmaps, by
/// checking the only possible minima: `u` and each range start).
fn brute_unmap(pins: &[Option<PinRange>; MAX_PINS], u: u64, len: u64) -> ([bool; MAX_PINS], Option<u64>) {
    let u_end = (u128::from(u) + u128::from(len)).min(1u128 << 64);
    let inside = |a: u128, r: &PinRange| {
        let start = u128::from(r.iova);
        a >= start && a < start + u128::from(r.pages) * u128::from(PAGE)
    };
    let mut hit = [false; MAX_PINS];
    let mut first: Option<u128> = None;
    for (i, p) in pins.iter().enumerate() {
        let Some(r) = p else { continue };
        let r_end = u128::from(r.iova) + u128::from(r.pages) * u128::from(PAGE);
        let lo = u128::from(u).max(u128::from(r.iova));
        if len <= 3 * PAGE {
            // Exhaustive walk over the unmapped bytes.
            let mut a = u128::from(u);
            while a < u_end {
                if inside(a, r) {
                    hit[i] = true;
                    first = Some(first.map_or(a, |f| f.min(a)));
                    break;
                }
                a += 1;
            }
        } else if lo < u_end && lo < r_end {
            hit[i] = true;
            first = Some(first.map_or(lo, |f| f.min(lo)));
        }
    }
    (hit, first.map(|f| f as u64))
}

fn window() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(1u64 << 63), Just(u64::MAX - 63 * PAGE + 1)]
}

fn pin_table(base: u64) -> impl Strategy<Value = [Option<PinRange>; MAX_PINS]> {
    let one = prop::option::of((0u64..60, 1u32..=2)).prop_map(move |o| {
        o.and_then(|(page, pages)| {
            let r = PinRange { iova: base.wrapping_add(page * PAGE), pages };
            r.last().map(|_| r)
        })
    });
    [one.clone(), one.clone(), one.clone(), one]
}

fn unmap_len() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..=3 * PAGE,
        1 => Just(u64::MAX),
        1 => any::<u64>(),
        1 => (3 * PAGE)..(70 * PAGE),
    ]
}

// ---------------------------------------------------------------------
// (f) arbitrary traffic.

const TXR: u64 = 0x10_000;
const RXR: u64 = 0x20_000;

#[derive(Debug, Clone)]
enum Op {
    Reg(u32, u64, bool),
    Ctrl(u32),
    Rings(u32, u32),
    Doorbell(u32),
    Tail(bool, u32),
    Post(bool, u32, Descriptor),
    Run,
    Steps(u8),
    GuestRead,
    GuestWrite(u8),
    Unmap(u64, u64),
    Map(u64, u64),
    BusMaster(bool),
    Migrate,
    /// Program COPY_SRC, COPY_DST, COPY_LEN and ring the copy doorbell.
    Copy(u64, u64, u32),
}

fn op() -> impl Strategy<Value = Op> {
    let reg_off = prop_oneof![
        (0u32..0x28).prop_map(|i| i * 4),
        (0u32..1024).prop_map(|i| i * 4),
    ];
    // Mostly small, valid descriptors inside the mapped buffer area, so that
    // transfers really complete; sometimes anything at all.
    let traffic_desc = prop_oneof![
        5 => (0x40_000u64..0x47_000, 1u32..100)
            .prop_map(|(addr, len)| Descriptor { addr, len, flags: 0 }),
        1 => any_desc(),
    ];
    let ctrl = prop_oneof![4 => Just(CTRL_ENABLE), 2 => Just(0u32), 1 => 2u32..4];
    prop_oneof![
        1 => (reg_off, any::<u64>(), any::<bool>()).prop_map(|(o, v, w)| Op::Reg(o, v, w)),
        3 => ctrl.prop_map(Op::Ctrl),
        1 => (0u32..5, 0u32..5).prop_map(|(t, r)| Op::Rings(1 << t, 1 << r)),
        3 => (0u32..8).prop_map(Op::Doorbell),
        1 => (any::<bool>(), prop_oneof![4 => 0u32..=2, 1 => 0u32..40]).prop_map(|(t, v)| Op::Tail(t, v)),
        6 => (any::<bool>(), prop_oneof![6 => Just(0u32), 1 => 0u32..16], traffic_desc)
            .prop_map(|(t, i, d)| Op::Post(t, i, d)),
        4 => Just(Op::Run),
        2 => any::<u8>().prop_map(Op::Steps),
        2 => Just(Op::GuestRead),
        2 => any::<u8>().prop_map(Op::GuestWrite),
        1 => (0x0u64..0x50_000, unmap_len()).prop_map(|(a, l)| Op::Unmap(a, l)),
        1 => (0x0u64..0x50_000, 1u64..0x8000).prop_map(|(a, l)| Op::Map(a, l)),
        1 => prop_oneof![2 => Just(true), 1 => Just(false)].prop_map(Op::BusMaster),
        1 => Just(Op::Migrate),
        2 => (copy_addr(), copy_addr(), copy_len()).prop_map(|(a, b, l)| Op::Copy(a, b, l)),
    ]
}

/// Copy addresses: mostly in or near the mapped areas, sometimes anywhere.
fn copy_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0x38_000u64..0x50_000,
        1 => any::<u64>(),
        1 => (0u64..0x20_000).prop_map(|d| u64::MAX - d),
    ]
}

/// Copy lengths: valid ones of every size, and the edges around the limits.
fn copy_len() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 1u32..=MAX_COPY_LEN,
        1 => prop_oneof![Just(0u32), Just(1), Just(MAX_COPY_LEN), Just(MAX_COPY_LEN + 1), any::<u32>()],
    ]
}

fn migrate(s: &mut Sim) {
    let img = s.dma.save_state();
    let uimg = s.uart.save_state();
    // The source driver releases its pins; the destination starts unpinned.
    let list = s.dma.take_all_pins();
    for (slot, range) in list.iter() {
        assert_eq!(s.pinned.remove(&slot.index()), Some(range));
        s.unpin_calls += 1;
    }
    assert!(s.pinned.is_empty());
    let restored = DmaEngine::restore_state(&img).expect("own snapshot refused");
    assert_eq!(restored.save_state(), img);
    s.dma = restored;
    s.uart = Uart::restore_state(&uimg).expect("own UART snapshot refused");
}

fn check_status(s: &Sim, had_error: bool) {
    let status = s.reg_read(REG_STATUS);
    let ctrl = s.reg_read(REG_CTRL);
    let err = s.reg_read(REG_ERROR_CODE);
    assert_eq!(DmaError::from_u32(err), Some(s.dma.error()));
    assert_eq!(status & STATUS_ERROR != 0, err != 0);
    assert_eq!(status & STATUS_RUNNING != 0, ctrl & CTRL_ENABLE != 0 && err == 0);
    assert_eq!(s.dma.running(), status & STATUS_RUNNING != 0);
    if s.dma.pins().iter().any(Option::is_some) {
        assert_ne!(status & STATUS_BUSY, 0);
    }
    if status & STATUS_COPY != 0 {
        // A busy copy counts as BUSY and never survives a halt.
        assert_ne!(status & STATUS_BUSY, 0);
        assert_eq!(err, 0);
    }
    let ints = s.reg_read(REG_INT_STATUS) & s.reg_read(REG_INT_ENABLE);
    assert_eq!(s.dma.irq_asserted(), ints != 0);
    assert_eq!(s.dma.pending_mask(), ints);
    if err != 0 && !had_error {
        // A new halt always raises INT_ERROR (the guest may clear it later).
        assert_ne!(s.reg_read(REG_INT_STATUS) & INT_ERROR, 0);
    }
    assert!(s.uart.rx_len() <= 16);
}

// ---------------------------------------------------------------------
// (g) data integrity.

#[derive(Debug, Clone)]
struct Transfer {
    ring_order: u32,
    tx: Vec<(u64, Vec<u8>)>,
    rx_caps: Vec<(u64, u32)>,
    migrate_every: Option<u8>,
}

fn transfer() -> impl Strategy<Value = Transfer> {
    let chunk = (0u64..4096, prop::collection::vec(any::<u8>(), 1..300));
    (
        0u32..5,
        prop::collection::vec(chunk, 1..15),
        prop::collection::vec((0u64..4096, 1u32..200), 1..8),
        prop::option::of(1u8..20),
    )
        .prop_map(|(ring_order, tx, rx_caps, migrate_every)| Transfer {
            ring_order,
            tx,
            rx_caps,
            migrate_every,
        })
}

fn run_transfer(t: &Transfer) {
    let size = 1u32 << t.ring_order;
    let mut s = Sim::new();
    s.map(TXR, PAGE);
    s.map(RXR, PAGE);
    let txbuf = |k: usize, off: u64| 0x100_000 + (k as u64) * 2 * PAGE + off;
    let rxbuf = |slot: u32, off: u64| 0x200_000 + u64::from(slot) * 2 * PAGE + off;
    for (k, (off, data)) in t.tx.iter().enumerate() {
        s.map(txbuf(k, *off), data.len() as u64);
        s.write_mem(txbuf(k, *off), data);
    }
    s.map(0x200_000, u64::from(size) * 2 * PAGE);
    s.setup_ring(REG_TX_RING, TXR, size);
    s.setup_ring(REG_RX_RING, RXR, size);
    s.reg_write(REG_CTRL, CTRL_ENABLE);

    let want: Vec<u8> = t.tx.iter().flat_map(|(_, d)| d.clone()).collect();
    let (mut tx_tail, mut tx_seen, mut rx_tail, mut rx_seen) = (0u32, 0u32, 0u32, 0u32);
    let mut rx_posted: Vec<(u64, u32)> = Vec::new();
    let mut got: Vec<u8> = Vec::new();
    let mut rounds = 0u32;
    while got.len() < want.len() {
        rounds += 1;
        assert!(rounds < 10_000, "no progress");
        // Post as many transmit descriptors as the ring holds.
        while (tx_tail as usize) < t.tx.len() && tx_tail - tx_seen < size {
            let k = tx_tail as usize;
            let (off, data) = &t.tx[k];
            let d = Descriptor { addr: txbuf(k, *off), len: data.len() as u32, flags: 0 };
            s.put_desc(TXR + u64::from(tx_tail % size) * 16, d);
            tx_tail += 1;
        }
        while rx_tail - rx_seen < size {
            let (off, cap) = t.rx_caps[rx_tail as usize % t.rx_caps.len()];
            let addr = rxbuf(rx_tail % size, off);
            s.put_desc(RXR + u64::from(rx_tail % size) * 16, Descriptor { addr, len: cap, flags: 0 });
            rx_posted.push((addr, cap));
            rx_tail += 1;
        }
        s.reg_write(REG_TX_RING + RING_TAIL, tx_tail);
        s.reg_write(REG_RX_RING + RING_TAIL, rx_tail);
        s.reg_write(REG_DOORBELL, DOORBELL_TX | DOORBELL_RX);
        match t.migrate_every {
            Some(n) => {
                for _ in 0..n {
                    if !s.step() {
                        break;
                    }
                }
                migrate(&mut s);
                // Settle on the destination so every round makes progress.
                s.run();
            }
            None => {
                s.run();
            }
        }
        assert_eq!(s.dma.error(), DmaError::None);
        s.check_pin_agreement();
        // Reap completions in order.
        let tx_head = s.reg_read(REG_TX_RING + RING_HEAD);
        while tx_seen != tx_head {
            let d = s.get_desc(TXR + u64::from(tx_seen % size) * 16);
            assert_eq!(d.flags, DESC_DONE);
            assert_eq!(d.len as usize, t.tx[tx_seen as usize].1.len());
            tx_seen += 1;
        }
        let rx_head = s.reg_read(REG_RX_RING + RING_HEAD);
        while rx_seen != rx_head {
            let d = s.get_desc(RXR + u64::from(rx_seen % size) * 16);
            let (addr, cap) = rx_posted[rx_seen as usize];
            assert_eq!(d.flags, DESC_DONE);
            assert_eq!(d.addr, addr);
            assert!(d.len >= 1 && d.len <= cap);
            got.extend(s.read_mem(addr, d.len as usize));
            rx_seen += 1;
        }
    }
    assert_eq!(got, want);
    assert_eq!(tx_seen as usize, t.tx.len());
    assert_eq!(s.uart.rx_len(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// (d) encode/parse round-trip both ways and validation agrees with the
    /// independent predicate.
    #[test]
    fn descriptor_round_trip(d in any_desc(), raw in prop::array::uniform16(any::<u8>())) {
        prop_assert_eq!(Descriptor::parse(&d.encode()), d);
        prop_assert_eq!(Descriptor::parse(&raw).encode(), raw);
        prop_assert_eq!(d.validate().is_ok(), valid(&d));
        if valid(&d) {
            let r = d.pin_range().unwrap();
            prop_assert_eq!(r.iova % PAGE, 0);
            prop_assert!(r.iova <= d.addr);
            prop_assert!(r.last().unwrap() >= d.addr + (u64::from(d.len) - 1));
            prop_assert!(r.last().unwrap() - (d.addr + (u64::from(d.len) - 1)) < PAGE);
        }
    }

    /// (d) the engine refuses exactly the invalid descriptors.
    #[test]
    fn engine_rejects_bad_descriptors(d in any_desc()) {
        let mut s = Sim::new();
        s.map(TXR, PAGE);
        s.map(0x40_000, 0x9000);
        s.setup_ring(REG_TX_RING, TXR, 1);
        s.put_desc(TXR, d);
        s.reg_write(REG_TX_RING + RING_TAIL, 1);
        s.reg_write(REG_CTRL, CTRL_ENABLE);
        let mapped = valid(&d) && (d.addr >> 12..=(d.addr + (u64::from(d.len) - 1)) >> 12)
            .all(|p| s.mapped(p * PAGE));
        let mut sent = 0usize;
        for _ in 0..1000 {
            s.run();
            sent += s.uart.rx_len() as usize;
            while s.uart.rx_len() > 0 {
                s.uart.read(RBR);
            }
            if s.dma.error() != DmaError::None || s.reg_read(REG_TX_RING + RING_HEAD) == 1 {
                break;
            }
        }
        let expect = if !valid(&d) {
            DmaError::BadDescriptor
        } else if !mapped {
            DmaError::PinFailed
        } else {
            DmaError::None
        };
        prop_assert_eq!(s.dma.error(), expect);
        if expect == DmaError::BadDescriptor {
            prop_assert_eq!(s.dma.error_iova(), TXR);
        }
        if expect == DmaError::None {
            prop_assert_eq!(sent, d.len as usize);
            prop_assert_eq!(s.get_desc(TXR).flags, DESC_DONE);
        }
    }

    /// (e) the unmap decision equals the brute-force model.
    #[test]
    fn unmap_decision_matches_brute_force(
        (base, pins) in window().prop_flat_map(|b| (Just(b), pin_table(b))),
        off in 0u64..(64 * PAGE),
        len in unmap_len(),
    ) {
        let u = base.wrapping_add(off);
        let decision = unmap_decision(&pins, u, len);
        let (hit, first) = brute_unmap(&pins, u, len);
        for slot in PinSlot::ALL {
            let i = slot.index();
            prop_assert_eq!(decision.unpin.get(slot), if hit[i] { pins[i] } else { None });
        }
        prop_assert_eq!(decision.first_iova, first);
        prop_assert_eq!(decision.unpin.is_empty(), first.is_none());
    }

    /// (f) arbitrary register traffic, guest UART access, unmaps, bus-master
    /// changes and migrations never panic and keep the engine's contract
    /// with the driver (checked inside `Sim::step`) and its status
    /// consistent; a settled, stopped engine holds no pins.
    #[test]
    fn arbitrary_traffic_keeps_the_contract(ops in prop::collection::vec(op(), 0..200)) {
        let mut s = Sim::new();
        s.map(TXR, PAGE);
        s.map(RXR, PAGE);
        s.map(0x40_000, 0x8000);
        s.setup_ring(REG_TX_RING, TXR, 16);
        s.setup_ring(REG_RX_RING, RXR, 16);
        for op in ops {
            let had_error = s.dma.error() != DmaError::None;
            match op {
                Op::Reg(off, v, is_write) => {
                    if is_write {
                        let _ = s.dma.write(off, if v & 1 == 0 { 4 } else { 8 }, v);
                    } else {
                        let _ = s.dma.read(off, if v & 1 == 0 { 4 } else { 8 });
                    }
                }
                Op::Ctrl(v) => s.reg_write(REG_CTRL, v),
                Op::Rings(tx, rx) => {
                    s.setup_ring(REG_TX_RING, TXR, tx);
                    s.setup_ring(REG_RX_RING, RXR, rx);
                }
                Op::Doorbell(v) => s.reg_write(REG_DOORBELL, v),
                Op::Tail(tx, v) => {
                    let block = if tx { REG_TX_RING } else { REG_RX_RING };
                    let head = s.reg_read(block + RING_HEAD);
                    s.reg_write(block + RING_TAIL, head.wrapping_add(v));
                }
                Op::Post(tx, idx, d) => {
                    // Like a guest driver: if the ring has room, write the
                    // entry at TAIL (plus a random skew, to also produce
                    // gaps) and, without skew, advance TAIL.
                    let base = if tx { TXR } else { RXR };
                    let block = if tx { REG_TX_RING } else { REG_RX_RING };
                    let size = s.reg_read(block + RING_SIZE).max(1);
                    let tail = s.reg_read(block + RING_TAIL);
                    let head = s.reg_read(block + RING_HEAD);
                    let slot = u64::from(tail.wrapping_add(idx) % size);
                    // A ring programmed larger than the mapped page puts
                    // the entry outside it: the driver cannot write there.
                    let at = base + slot * 16;
                    if s.mapped(at) && s.mapped(at + 15) && tail.wrapping_sub(head) < size {
                        s.put_desc(at, d);
                    }
                    if idx == 0 && tail.wrapping_sub(head) < size {
                        s.reg_write(block + RING_TAIL, tail.wrapping_add(1));
                    }
                }
                Op::Run => {
                    s.run();
                    if s.bus_master && !s.dma.running() {
                        prop_assert_eq!(s.reg_read(REG_STATUS) & STATUS_BUSY, 0);
                        prop_assert!(s.dma.pins().iter().all(Option::is_none));
                    }
                }
                Op::Steps(n) => {
                    for _ in 0..n {
                        if !s.step() {
                            break;
                        }
                    }
                }
                Op::GuestRead => {
                    s.uart.read(RBR);
                }
                Op::GuestWrite(b) => {
                    s.uart.write(THR, b);
                }
                Op::Unmap(a, l) => {
                    let before = *s.dma.pins();
                    let (hit, first) = brute_unmap(&before, a, l);
                    let had_error = s.dma.error() != DmaError::None;
                    let list = s.unmap(a, l);
                    for slot in PinSlot::ALL {
                        let i = slot.index();
                        prop_assert_eq!(list.get(slot), if hit[i] { before[i] } else { None });
                    }
                    if let Some(f) = first {
                        prop_assert_ne!(s.dma.error(), DmaError::None);
                        if !had_error {
                            prop_assert_eq!(s.dma.error(), DmaError::Unmapped);
                            prop_assert_eq!(s.dma.error_iova(), f);
                        }
                    }
                }
                Op::Map(a, l) => s.map(a, l),
                Op::BusMaster(b) => s.bus_master = b,
                Op::Migrate => migrate(&mut s),
                Op::Copy(src, dst, len) => {
                    let busy = s.reg_read(REG_STATUS) & STATUS_COPY != 0;
                    let before = (s.reg_read64(REG_COPY_SRC), s.reg_read64(REG_COPY_DST), s.reg_read(REG_COPY_LEN));
                    s.reg_write64(REG_COPY_SRC, src);
                    s.reg_write64(REG_COPY_DST, dst);
                    s.reg_write(REG_COPY_LEN, len);
                    let after = (s.reg_read64(REG_COPY_SRC), s.reg_read64(REG_COPY_DST), s.reg_read(REG_COPY_LEN));
                    // Frozen while a copy is busy, plain registers otherwise.
                    prop_assert_eq!(after, if busy { before } else { (src, dst, len) });
                    let running = s.dma.running();
                    s.reg_write(REG_DOORBELL, DOORBELL_COPY);
                    if running && !busy {
                        match check_copy(src, dst, len) {
                            Ok(()) => prop_assert_ne!(s.reg_read(REG_STATUS) & STATUS_COPY, 0),
                            Err(e) => {
                                prop_assert_eq!(s.dma.error(), DmaError::BadCopy);
                                prop_assert_eq!(s.dma.error_iova(), e.iova(src, dst));
                            }
                        }
                    }
                }
            }
            s.check_pin_agreement();
            check_status(&s, had_error);
        }
        // Whatever happened, a reset plus one settle releases everything.
        s.reg_write(REG_CTRL, CTRL_RESET);
        s.run();
        prop_assert_eq!(s.reg_read(REG_STATUS), 0);
        prop_assert!(s.pinned.is_empty());
        prop_assert_eq!(s.pin_calls, s.unpin_calls);
    }

    /// (h) one copy command against a reference: refused exactly when
    /// `check_copy` says so, faults at the source before the destination,
    /// and otherwise moves exactly LEN bytes (read completely before the
    /// write, so overlapping ranges behave like `memmove`) and nothing else.
    #[test]
    fn copy_matches_reference(
        src in copy_addr(),
        dst in copy_addr(),
        len in copy_len(),
        ro in prop::option::of(0x38_000u64..0x50_000),
        bus_master_late in any::<bool>(),
        seed in any::<u8>(),
    ) {
        let mut s = Sim::new();
        // 0x40_000..0x48_000 writable, 0x3c_000 one page, the rest unmapped.
        s.map(0x40_000, 0x8000);
        s.map(0x3c_000, PAGE);
        if let Some(r) = ro {
            s.map_ro(r & !(PAGE - 1), PAGE);
        }
        let pages: Vec<u64> = s.mem.keys().copied().collect();
        for p in &pages {
            let fill: Vec<u8> = (0..PAGE).map(|i| (i as u8).wrapping_mul(7).wrapping_add(*p as u8 ^ seed)).collect();
            s.write_mem(p * PAGE, &fill);
        }
        let before = s.mem.clone();
        s.reg_write(REG_INT_ENABLE, INT_MASK);
        s.reg_write(REG_CTRL, CTRL_ENABLE);
        s.reg_write64(REG_COPY_SRC, src);
        s.reg_write64(REG_COPY_DST, dst);
        s.reg_write(REG_COPY_LEN, len);
        s.bus_master = !bus_master_late;
        s.reg_write(REG_DOORBELL, DOORBELL_COPY);
        s.run();
        if bus_master_late && check_copy(src, dst, len).is_ok() {
            // Nothing happens without bus mastering.
            prop_assert_eq!(s.copy_calls, 0);
            prop_assert_eq!(&s.mem, &before);
            prop_assert_eq!(s.reg_read(REG_STATUS), STATUS_RUNNING | STATUS_BUSY | STATUS_COPY);
            s.bus_master = true;
            s.run();
        }
        let n = u64::from(len);
        let (err, iova) = match check_copy(src, dst, len) {
            Err(e) => (DmaError::BadCopy, e.iova(src, dst)),
            Ok(()) if !s.accessible(src, n, false) => (DmaError::CopyFault, src),
            Ok(()) if !s.accessible(dst, n, true) => (DmaError::CopyFault, dst),
            Ok(()) => (DmaError::None, 0),
        };
        prop_assert_eq!(s.dma.error(), err);
        prop_assert_eq!(s.dma.error_iova(), iova);
        prop_assert_eq!(s.reg_read(REG_STATUS) & (STATUS_COPY | STATUS_BUSY), 0);
        let mut want = before.clone();
        if err == DmaError::None {
            prop_assert_eq!(s.copy_calls, 1);
            prop_assert_eq!(s.reg_read(REG_INT_STATUS), INT_COPY_DONE);
            prop_assert!(s.dma.irq_asserted());
            let data: Vec<u8> = (0..n).map(|i| {
                let x = src + i;
                before[&(x / PAGE)][(x % PAGE) as usize]
            }).collect();
            for (i, b) in data.iter().enumerate() {
                let x = dst + i as u64;
                want.get_mut(&(x / PAGE)).unwrap()[(x % PAGE) as usize] = *b;
            }
        } else {
            prop_assert_eq!(s.reg_read(REG_INT_STATUS), INT_ERROR);
            prop_assert_eq!(s.copy_calls, usize::from(err == DmaError::CopyFault));
        }
        // A refused copy or a failed read or write leaves memory as it was
        // (the simulation checks the whole destination before writing).
        prop_assert_eq!(&s.mem, &want);
    }

    /// (g) everything transmitted arrives, in order, in the receive
    /// buffers, whatever the ring size, buffer placement (including page
    /// straddles) and sizes, also when the device migrates mid-transfer.
    #[test]
    fn loopback_data_integrity(t in transfer()) {
        run_transfer(&t);
    }
}
