//! Tests of the migration stream and the whole-device state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

mod common;

use common::{Sim, PAGE};
use mtty_core::dma_engine::{self, Descriptor};
use mtty_core::migration::*;
use mtty_core::pci_config::PortCount;
use mtty_core::uart::{self, IrqChange, Uart};
use mtty_core::wire::crc32;
use proptest::prelude::*;

fn sample_state(ports: PortCount) -> MttyState {
    let mut st = MttyState::new(ports);
    for b in b"migrate" {
        st.ports[0].write(uart::THR, *b);
    }
    st.ports[0].write(uart::IER, uart::IER_RDI);
    st.ports[1].write(uart::SCR, 0x42);
    st.config.write(0x10, 4, 0xC000).unwrap();
    st.config.write(0x04, 2, 0x0007).unwrap();
    st.dma.write(dma_engine::REG_INT_ENABLE, 4, 3).unwrap();
    st.dma.write(dma_engine::REG_TX_RING + dma_engine::RING_BASE, 8, 0x10_000).unwrap();
    st
}

fn saved(st: &MttyState) -> Vec<u8> {
    let mut buf = vec![0u8; STATE_SIZE];
    assert_eq!(st.save(&mut buf), Ok(STATE_SIZE));
    buf
}

/// What a restore must reproduce: everything except transient flags and
/// host-side pins.
fn normalized(st: &MttyState) -> MttyState {
    let mut n = st.clone();
    for p in n.ports.iter_mut() {
        let _ = p.take_rx_activity();
    }
    let _ = n.dma.take_all_pins();
    n
}

/// Recomputes the checksum after editing the payload.
fn reseal(buf: &mut [u8]) {
    let crc = crc32(&buf[HEADER_LEN..]);
    buf[28..32].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn layout_constants() {
    assert_eq!(HEADER_LEN, 32);
    assert_eq!(STATE_SIZE, 32 + 2 * 32 + 256 + 160);
    assert_eq!(MAGIC, 0x7e9d09898c3e2c4e, "same magic as mtty.c");
}

#[test]
fn header_fields() {
    let buf = saved(&sample_state(PortCount::Two));
    assert_eq!(u64::from_le_bytes(buf[0..8].try_into().unwrap()), MAGIC);
    assert_eq!(u32::from_le_bytes(buf[8..12].try_into().unwrap()), MAJOR_VERSION);
    assert_eq!(u32::from_le_bytes(buf[12..16].try_into().unwrap()), MINOR_VERSION);
    assert_eq!(u32::from_le_bytes(buf[16..20].try_into().unwrap()), 2);
    assert_eq!(u32::from_le_bytes(buf[20..24].try_into().unwrap()), 0);
    assert_eq!(u32::from_le_bytes(buf[24..28].try_into().unwrap()) as usize, STATE_SIZE);
    assert_eq!(u32::from_le_bytes(buf[28..32].try_into().unwrap()), crc32(&buf[32..]));
    // Components sit at their documented offsets.
    let st = sample_state(PortCount::Two);
    assert_eq!(&buf[32..64], &st.ports[0].save_state());
    assert_eq!(&buf[64..96], &st.ports[1].save_state());
    assert_eq!(&buf[96..352], st.config.as_bytes());
    assert_eq!(&buf[352..512], &st.dma.save_state());
}

#[test]
fn round_trip_both_port_counts() {
    for ports in [PortCount::One, PortCount::Two] {
        let st = sample_state(ports);
        let buf = saved(&st);
        let back = MttyState::restore(&buf, ports).unwrap();
        assert_eq!(back, normalized(&st));
        assert_eq!(saved(&back), buf);
        let mut p0 = back.ports[0].clone();
        assert_eq!(p0.read(uart::RBR).0, b'm');
    }
}

#[test]
fn header_errors() {
    let buf = saved(&sample_state(PortCount::One));
    assert_eq!(MttyState::restore(&buf, PortCount::Two), Err(MigrationError::PortMismatch));
    assert_eq!(MttyState::check_header(&buf, PortCount::One), Ok(()));
    assert_eq!(MttyState::check_header(&buf[..31], PortCount::One), Err(MigrationError::TooShort));
    let cases: [(usize, u8, MigrationError); 5] = [
        (0, 1, MigrationError::BadMagic),
        (8, 1, MigrationError::BadVersion),
        (12, 1, MigrationError::BadVersion),
        (20, 1, MigrationError::BadFlags),
        (24, 1, MigrationError::BadLength),
    ];
    for (at, x, err) in cases {
        let mut b = buf.clone();
        b[at] ^= x;
        assert_eq!(MttyState::restore(&b, PortCount::One), Err(err), "byte {at}");
    }
    let mut b = buf.clone();
    b[28] ^= 1;
    assert_eq!(MttyState::restore(&b, PortCount::One), Err(MigrationError::BadChecksum));
    let mut b = buf.clone();
    b[400] ^= 0x80;
    assert_eq!(MttyState::restore(&b, PortCount::One), Err(MigrationError::BadChecksum));
    assert_eq!(MttyState::restore(&buf[..STATE_SIZE - 1], PortCount::One), Err(MigrationError::TooShort));
    let mut longer = buf.clone();
    longer.push(0);
    assert_eq!(MttyState::restore(&longer, PortCount::One), Err(MigrationError::BadLength));
    assert_eq!(MttyState::restore(&[], PortCount::One), Err(MigrationError::TooShort));
}

#[test]
fn sealed_but_inconsistent_components_are_refused() {
    let buf = saved(&sample_state(PortCount::Two));
    // Port 0 FIFO count 17.
    let mut b = buf.clone();
    b[32 + 25] = 17;
    reseal(&mut b);
    assert_eq!(MttyState::restore(&b, PortCount::Two), Err(MigrationError::BadPortState(0)));
    // Port 1 trigger level 3.
    let mut b = buf.clone();
    b[64 + 27] = 3;
    reseal(&mut b);
    assert_eq!(MttyState::restore(&b, PortCount::Two), Err(MigrationError::BadPortState(1)));
    // A different device ID in config space.
    let mut b = buf.clone();
    b[96 + 2] ^= 1;
    reseal(&mut b);
    assert_eq!(MttyState::restore(&b, PortCount::Two), Err(MigrationError::BadConfig));
    // Unknown DMA error code.
    let mut b = buf.clone();
    b[352 + 1] = 0x7F;
    reseal(&mut b);
    assert_eq!(MttyState::restore(&b, PortCount::Two), Err(MigrationError::BadDmaState));
}

#[test]
fn save_needs_a_big_enough_buffer() {
    let st = MttyState::new(PortCount::One);
    let mut small = vec![0u8; STATE_SIZE - 1];
    assert_eq!(st.save(&mut small), Err(MigrationError::BufferTooSmall));
    let mut big = vec![0xAAu8; STATE_SIZE + 10];
    assert_eq!(st.save(&mut big), Ok(STATE_SIZE));
    assert_eq!(big[STATE_SIZE], 0xAA, "nothing written past the stream");
    assert!(MttyState::restore(&big[..STATE_SIZE], PortCount::One).is_ok());
}

#[test]
fn device_interrupt_mask_combines_sources() {
    let mut st = MttyState::new(PortCount::One);
    assert!(!st.irq_asserted());
    // Port 1 does not exist on a one-port device and is ignored.
    st.ports[1].write(uart::IER, uart::IER_THRI);
    assert!(!st.irq_asserted());
    let before = st.pending_mask();
    st.ports[0].write(uart::IER, uart::IER_THRI);
    assert_eq!(IrqChange::between(before, st.pending_mask()), IrqChange::Raised);
    assert_eq!(st.pending_mask(), u32::from(uart::IrqCause::ThrEmpty.mask_bit()));

    let mut two = MttyState::new(PortCount::Two);
    two.ports[1].write(uart::IER, uart::IER_THRI);
    assert_eq!(two.pending_mask(), u32::from(uart::IrqCause::ThrEmpty.mask_bit()) << 8);
    // Enabling the engine with a malformed ring halts it with INT_ERROR.
    two.dma.write(dma_engine::REG_INT_ENABLE, 4, 0x7).unwrap();
    two.dma.write(dma_engine::REG_TX_RING + dma_engine::RING_SIZE, 4, 3).unwrap();
    two.dma.write(dma_engine::REG_CTRL, 4, 1).unwrap();
    assert_eq!(two.pending_mask() >> 16, dma_engine::INT_ERROR);
    assert_eq!(two.dma.error(), dma_engine::DmaError::BadRing);
    two.reset();
    assert_eq!(two, MttyState::new(PortCount::Two));
}

// ---------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Port(usize, u8, u8, bool),
    Push(usize, u8),
    Timeout(usize),
    Cfg(u16, u8, u32),
    Dma(u32, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..2, 0u8..8, any::<u8>(), any::<bool>()).prop_map(|(p, o, v, w)| Op::Port(p, o, v, w)),
        2 => (0usize..2, any::<u8>()).prop_map(|(p, v)| Op::Push(p, v)),
        1 => (0usize..2).prop_map(Op::Timeout),
        2 => (0u16..256, prop_oneof![Just(1u8), Just(2), Just(4)], any::<u32>()).prop_map(|(o, w, v)| Op::Cfg(o, w, v)),
        2 => ((0u32..0x20).prop_map(|i| i * 4), any::<u64>()).prop_map(|(o, v)| Op::Dma(o, v)),
    ]
}

fn ports() -> impl Strategy<Value = PortCount> {
    prop_oneof![Just(PortCount::One), Just(PortCount::Two)]
}

/// A state with a DMA transfer in flight, built by really running one.
fn in_flight_state(ports: PortCount, len: u32, steps: u8) -> MttyState {
    let mut s = Sim::new();
    s.map(0x10_000, PAGE);
    s.map(0x30_000, 2 * PAGE);
    s.setup_ring(dma_engine::REG_TX_RING, 0x10_000, 4);
    s.write_mem(0x30_000, &vec![0x5A; len as usize]);
    s.put_desc(0x10_000, Descriptor { addr: 0x30_000, len, flags: 0 });
    s.reg_write(dma_engine::REG_TX_RING + dma_engine::RING_TAIL, 1);
    s.reg_write(dma_engine::REG_CTRL, dma_engine::CTRL_ENABLE);
    for _ in 0..steps {
        if !s.step() {
            break;
        }
    }
    let mut st = MttyState::new(ports);
    st.ports[0] = s.uart.clone();
    st.dma = s.dma.clone();
    st
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// (c) save/restore round-trips any reachable state exactly.
    #[test]
    fn round_trip(ports in ports(), len in 1u32..4096, steps in 0u8..12,
                  ops in prop::collection::vec(op(), 0..150)) {
        let mut st = in_flight_state(ports, len, steps);
        for op in ops {
            match op {
                Op::Port(p, o, v, w) => {
                    if w { st.ports[p].write(o, v); } else { st.ports[p].read(o); }
                }
                Op::Push(p, v) => { st.ports[p].rx_push(v); }
                Op::Timeout(p) => { st.ports[p].rx_timeout_expired(); }
                Op::Cfg(o, w, v) => { let _ = st.config.write(o, w, v); }
                Op::Dma(o, v) => { let _ = st.dma.write(o, 4, v); }
            }
        }
        let buf = saved(&st);
        let back = MttyState::restore(&buf, ports).unwrap();
        prop_assert_eq!(&back, &normalized(&st));
        prop_assert_eq!(saved(&back), buf);
    }

    /// (c) any single corrupted byte or any truncation is refused.
    #[test]
    fn corruption_is_detected(ports in ports(), at in 0usize..STATE_SIZE, x in 1u8..=255, cut in 0usize..STATE_SIZE) {
        let buf = saved(&sample_state(ports));
        let mut bad = buf.clone();
        bad[at] ^= x;
        prop_assert!(MttyState::restore(&bad, ports).is_err());
        prop_assert!(MttyState::restore(&buf[..cut], ports).is_err());
    }

    /// Arbitrary payloads behind a valid header and checksum never panic;
    /// what is accepted re-encodes to the same bytes.
    #[test]
    fn arbitrary_sealed_payloads(ports in ports(), payload in prop::collection::vec(any::<u8>(), STATE_SIZE - HEADER_LEN),
                                 keep in prop::collection::vec(any::<bool>(), 4)) {
        // Mix random component images with valid ones so that each
        // component's validation is reached with random data.
        let mut buf = saved(&sample_state(ports));
        let parts = [(32usize, 64usize), (64, 96), (96, 352), (352, 512)];
        for ((lo, hi), k) in parts.iter().zip(keep) {
            if !k {
                buf[*lo..*hi].copy_from_slice(&payload[lo - 32..hi - 32]);
            }
        }
        reseal(&mut buf);
        if let Ok(st) = MttyState::restore(&buf, ports) {
            prop_assert_eq!(saved(&st), buf);
            let mut st = st;
            for o in 0..8 { st.ports[0].read(o); st.ports[1].read(o); }
        }
    }

    /// Arbitrary bytes of any length never panic.
    #[test]
    fn arbitrary_bytes(ports in ports(), bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        prop_assert!(MttyState::restore(&bytes, ports).is_err() || bytes.len() == STATE_SIZE);
        let _ = MttyState::check_header(&bytes, ports);
        let _ = Uart::restore_state(&[0; uart::STATE_LEN]);
    }
}
