//! 16550A UART (the PC's COM ports), modelled at register level.
//!
//! Transmission is instantaneous: the transmitter is always empty (LSR THRE
//! and TEMT set), so kernels that poll before each byte never wait. Output
//! bytes are buffered and handed to the host writer at each newline, when the
//! buffer grows large, on [`Uart16550::flush`] and on drop, so a guest
//! printing byte by byte does not cost a host write per byte.
//!
//! Register offsets follow the 16550 datasheet; the device decodes the low
//! three port bits, as COM port bases are 8-port aligned.

use std::collections::VecDeque;
use std::io::Write;

use super::{IoEffect, PortDevice};

/// Number of ports (registers) a UART occupies.
pub const UART_PORTS: u16 = 8;

/// Register offsets from the base port.
const REG_DATA: u16 = 0; // RBR (read) / THR (write); DLL when DLAB=1
const REG_IER: u16 = 1; // DLM when DLAB=1
const REG_IIR_FCR: u16 = 2; // IIR (read) / FCR (write)
const REG_LCR: u16 = 3;
const REG_MCR: u16 = 4;
const REG_LSR: u16 = 5;
const REG_MSR: u16 = 6;
const REG_SCR: u16 = 7;
/// Mask selecting the register from a port number.
const REG_MASK: u16 = UART_PORTS - 1;

/// IER bits.
const IER_RDA: u8 = 0x01; // received data available
const IER_THRE: u8 = 0x02; // transmitter holding register empty
const IER_RLS: u8 = 0x04; // receiver line status
const IER_MS: u8 = 0x08; // modem status
/// Only the low four IER bits exist on a 16550A.
const IER_WRITABLE: u8 = 0x0F;

/// IIR values.
const IIR_NO_INT: u8 = 0x01;
const IIR_ID_MODEM_STATUS: u8 = 0x00;
const IIR_ID_THR_EMPTY: u8 = 0x02;
const IIR_ID_RX_DATA: u8 = 0x04;
const IIR_ID_RX_LINE_STATUS: u8 = 0x06;
/// Bits 6-7 read as 1 while the FIFOs are enabled (16550A signature).
const IIR_FIFO_ENABLED: u8 = 0xC0;

/// FCR bits.
const FCR_ENABLE: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;
const FCR_CLEAR_TX: u8 = 0x04;

/// LCR bit 7: divisor latch access.
const LCR_DLAB: u8 = 0x80;

/// MCR bits.
const MCR_DTR: u8 = 0x01;
const MCR_RTS: u8 = 0x02;
const MCR_OUT1: u8 = 0x04;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOPBACK: u8 = 0x10;
/// Bits 5-7 of MCR are always 0 on a 16550A.
const MCR_WRITABLE: u8 = 0x1F;

/// LSR bits.
const LSR_DR: u8 = 0x01; // data ready
const LSR_OE: u8 = 0x02; // overrun error
const LSR_THRE: u8 = 0x20; // transmitter holding register empty
const LSR_TEMT: u8 = 0x40; // transmitter empty

/// MSR bits: deltas in the low nibble, line states in the high nibble.
const MSR_DCTS: u8 = 0x01;
const MSR_DDSR: u8 = 0x02;
const MSR_TERI: u8 = 0x04;
const MSR_DDCD: u8 = 0x08;
const MSR_CTS: u8 = 0x10;
const MSR_DSR: u8 = 0x20;
const MSR_RI: u8 = 0x40;
const MSR_DCD: u8 = 0x80;
/// Line states when not in loopback: a connected peer (carrier, data set
/// ready, clear to send), as QEMU reports for an attached character device.
const MSR_CONNECTED: u8 = MSR_DCD | MSR_DSR | MSR_CTS;

/// Divisor latch after reset: 0x000C (9600 baud from 1.8432 MHz), the value
/// QEMU uses; the datasheet leaves it undefined.
const RESET_DIVISOR: u16 = 0x000C;
/// Receive FIFO depth with FIFOs enabled, and the single holding register
/// without.
const RX_FIFO_DEPTH: usize = 16;
const RX_HOLDING_DEPTH: usize = 1;
/// Output is handed to the host once this much is buffered, even without a
/// newline.
const TX_BUFFER_LIMIT: usize = 4096;

/// A 16550A UART whose transmitter writes to a host `Write`.
pub struct Uart16550 {
    out: Box<dyn Write + Send>,
    tx_buf: Vec<u8>,
    /// Set after the first host write error so it is logged only once.
    out_failed: bool,
    rx: VecDeque<u8>,
    divisor: u16,
    ier: u8,
    fcr: u8,
    lcr: u8,
    mcr: u8,
    /// Sticky LSR error bits (cleared by reading LSR).
    lsr_errors: u8,
    /// MSR delta bits (cleared by reading MSR).
    msr_delta: u8,
    scr: u8,
    /// THR-empty interrupt armed; cleared by reading IIR while it is shown.
    thr_int: bool,
    /// Rising edges of the interrupt line made by register accesses since
    /// the chipset last looked (`take_rises`).
    rises: u32,
}

impl Uart16550 {
    /// A UART in its reset state sending transmitted bytes to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            tx_buf: Vec::with_capacity(TX_BUFFER_LIMIT),
            out_failed: false,
            rx: VecDeque::with_capacity(RX_FIFO_DEPTH),
            divisor: RESET_DIVISOR,
            ier: 0,
            fcr: 0,
            lcr: 0,
            mcr: 0,
            lsr_errors: 0,
            msr_delta: 0,
            scr: 0,
            thr_int: false,
            rises: 0,
        }
    }

    /// Hands buffered output to the host writer and flushes it.
    pub fn flush(&mut self) {
        if !self.tx_buf.is_empty() {
            let result = self.out.write_all(&self.tx_buf);
            self.tx_buf.clear();
            self.note_output_error(result);
        }
        let result = self.out.flush();
        self.note_output_error(result);
    }

    fn note_output_error(&mut self, result: std::io::Result<()>) {
        if let Err(err) = result {
            // Losing serial output must not stop the guest; say so once.
            if !self.out_failed {
                log::warn!("serial output failed, further output may be lost: {err}");
                self.out_failed = true;
            }
        }
    }

    /// Queues a byte arriving on the serial line (e.g. from host stdin).
    /// A full receive FIFO sets the overrun error and drops the byte; bytes
    /// are also dropped in loopback mode, where the line input is
    /// disconnected.
    pub fn push_input(&mut self, byte: u8) {
        if self.mcr & MCR_LOOPBACK != 0 {
            log::debug!("uart: input byte {byte:#x} dropped in loopback mode");
            return;
        }
        self.receive(byte);
    }

    /// Whether [`push_input`](Self::push_input) can take a byte without
    /// overrunning the receive FIFO.
    pub fn can_accept_input(&self) -> bool {
        self.rx.len() < self.rx_capacity()
    }

    /// Whether the UART is asserting its interrupt line. (On a PC the line is
    /// additionally gated by MCR OUT2; like QEMU, this is not modelled.)
    pub fn irq_pending(&self) -> bool {
        self.interrupt_id().is_some()
    }

    /// Rising edges of the interrupt line since the last call. The chipset
    /// samples the line only when it looks; an access from another vCPU can
    /// drop and raise it in between (an ISR reads IIR, writes THR, and the
    /// transmitter empties at once), and an edge-triggered input must still
    /// see that edge.
    pub fn take_rises(&mut self) -> u32 {
        std::mem::take(&mut self.rises)
    }

    fn rx_capacity(&self) -> usize {
        if self.fcr & FCR_ENABLE != 0 { RX_FIFO_DEPTH } else { RX_HOLDING_DEPTH }
    }

    fn receive(&mut self, byte: u8) {
        if self.can_accept_input() {
            self.rx.push_back(byte);
        } else {
            self.lsr_errors |= LSR_OE;
            log::debug!("uart: receive overrun, byte {byte:#x} lost");
        }
    }

    fn transmit(&mut self, byte: u8) {
        if self.mcr & MCR_LOOPBACK != 0 {
            self.receive(byte);
        } else {
            self.tx_buf.push(byte);
            if byte == b'\n' || self.tx_buf.len() >= TX_BUFFER_LIMIT {
                self.flush();
            }
        }
        // The byte left the holding register at once.
        self.thr_int = true;
    }

    /// Highest-priority pending interrupt's IIR identification, if any.
    fn interrupt_id(&self) -> Option<u8> {
        if self.ier & IER_RLS != 0 && self.lsr_errors != 0 {
            Some(IIR_ID_RX_LINE_STATUS)
        } else if self.ier & IER_RDA != 0 && !self.rx.is_empty() {
            Some(IIR_ID_RX_DATA)
        } else if self.ier & IER_THRE != 0 && self.thr_int {
            Some(IIR_ID_THR_EMPTY)
        } else if self.ier & IER_MS != 0 && self.msr_delta != 0 {
            Some(IIR_ID_MODEM_STATUS)
        } else {
            None
        }
    }

    /// Current modem line states (MSR high nibble).
    fn modem_lines(&self) -> u8 {
        if self.mcr & MCR_LOOPBACK == 0 {
            return MSR_CONNECTED;
        }
        // Loopback wires the modem control outputs back to the inputs.
        let mut lines = 0;
        for (out_bit, in_bit) in [(MCR_RTS, MSR_CTS), (MCR_DTR, MSR_DSR), (MCR_OUT1, MSR_RI), (MCR_OUT2, MSR_DCD)] {
            if self.mcr & out_bit != 0 {
                lines |= in_bit;
            }
        }
        lines
    }

    fn write_mcr(&mut self, value: u8) {
        let before = self.modem_lines();
        self.mcr = value & MCR_WRITABLE;
        let after = self.modem_lines();
        let changed = before ^ after;
        for (line, delta) in [(MSR_CTS, MSR_DCTS), (MSR_DSR, MSR_DDSR), (MSR_DCD, MSR_DDCD)] {
            if changed & line != 0 {
                self.msr_delta |= delta;
            }
        }
        // TERI flags only the trailing edge of ring indicator.
        if before & MSR_RI != 0 && after & MSR_RI == 0 {
            self.msr_delta |= MSR_TERI;
        }
    }

    fn write_fcr(&mut self, value: u8) {
        // Toggling FIFO enable resets both FIFOs, as do the clear bits.
        if (value ^ self.fcr) & FCR_ENABLE != 0 || value & FCR_CLEAR_RX != 0 {
            self.rx.clear();
        }
        if value & FCR_CLEAR_TX != 0 {
            // Transmission is immediate, so the transmit FIFO is always empty.
        }
        // The clear bits self-reset; keep enable and trigger level.
        self.fcr = value & !(FCR_CLEAR_RX | FCR_CLEAR_TX);
    }

    fn read_register(&mut self, reg: u16) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match reg {
            REG_DATA if dlab => self.divisor.to_le_bytes()[0],
            REG_DATA => self.rx.pop_front().unwrap_or(0),
            REG_IER if dlab => self.divisor.to_le_bytes()[1],
            REG_IER => self.ier,
            REG_IIR_FCR => {
                let id = self.interrupt_id();
                if id == Some(IIR_ID_THR_EMPTY) {
                    // Reading IIR while it reports THR empty acknowledges it.
                    self.thr_int = false;
                }
                let fifo = if self.fcr & FCR_ENABLE != 0 { IIR_FIFO_ENABLED } else { 0 };
                id.unwrap_or(IIR_NO_INT) | fifo
            }
            REG_LCR => self.lcr,
            REG_MCR => self.mcr,
            REG_LSR => {
                let data_ready = if self.rx.is_empty() { 0 } else { LSR_DR };
                let value = LSR_THRE | LSR_TEMT | data_ready | self.lsr_errors;
                self.lsr_errors = 0;
                value
            }
            REG_MSR => {
                let value = self.modem_lines() | self.msr_delta;
                self.msr_delta = 0;
                value
            }
            REG_SCR => self.scr,
            // Unreachable: `reg` is masked to 0..=7 by the caller.
            _ => 0,
        }
    }

    fn write_register(&mut self, reg: u16, value: u8) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match reg {
            REG_DATA if dlab => self.divisor = (self.divisor & 0xFF00) | u16::from(value),
            REG_DATA => self.transmit(value),
            REG_IER if dlab => self.divisor = (self.divisor & 0x00FF) | (u16::from(value) << 8),
            REG_IER => {
                let enabling_thre = value & IER_THRE != 0 && self.ier & IER_THRE == 0;
                self.ier = value & IER_WRITABLE;
                // The transmitter is always empty, so enabling the THRE
                // interrupt raises it immediately, as on the real chip.
                if enabling_thre {
                    self.thr_int = true;
                }
            }
            REG_IIR_FCR => self.write_fcr(value),
            REG_LCR => self.lcr = value,
            REG_MCR => self.write_mcr(value),
            REG_LSR | REG_MSR => {
                // Status registers; writes are ignored (factory test only).
            }
            REG_SCR => self.scr = value,
            // Unreachable: `reg` is masked to 0..=7 by the caller.
            _ => {}
        }
    }
}

impl PortDevice for Uart16550 {
    fn read(&mut self, port: u16, _size: u8) -> u32 {
        let before = self.irq_pending();
        // Wider accesses see only the addressed byte register.
        let v = u32::from(self.read_register(port & REG_MASK));
        self.rises += u32::from(!before && self.irq_pending());
        v
    }

    fn write(&mut self, port: u16, _size: u8, value: u32) -> IoEffect {
        let before = self.irq_pending();
        self.write_register(port & REG_MASK, value.to_le_bytes()[0]);
        self.rises += u32::from(!before && self.irq_pending());
        IoEffect::None
    }

    fn flush(&mut self) {
        Uart16550::flush(self);
    }
}

impl Drop for Uart16550 {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const BASE: u16 = 0x3F8;

    /// Output sink recording what reached the host and how often it flushed.
    #[derive(Clone, Default)]
    struct Sink {
        data: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
        flushes: Arc<Mutex<usize>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.data.lock().unwrap().extend_from_slice(buf);
            *self.writes.lock().unwrap() += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            *self.flushes.lock().unwrap() += 1;
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> Vec<u8> {
            self.data.lock().unwrap().clone()
        }
    }

    /// A writer that always fails.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("broken pipe"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::other("broken pipe"))
        }
    }

    fn uart() -> (Uart16550, Sink) {
        let sink = Sink::default();
        (Uart16550::new(Box::new(sink.clone())), sink)
    }

    fn rd(u: &mut Uart16550, reg: u16) -> u32 {
        u.read(BASE + reg, 1)
    }

    fn wr(u: &mut Uart16550, reg: u16, value: u32) {
        assert_eq!(u.write(BASE + reg, 1, value), IoEffect::None);
    }

    #[test]
    fn reset_values() {
        let (mut u, _) = uart();
        assert_eq!(rd(&mut u, REG_IER), 0);
        assert_eq!(rd(&mut u, REG_IIR_FCR), 0x01);
        assert_eq!(rd(&mut u, REG_LCR), 0);
        assert_eq!(rd(&mut u, REG_MCR), 0);
        assert_eq!(rd(&mut u, REG_LSR), 0x60);
        assert_eq!(rd(&mut u, REG_MSR), 0xB0);
        assert_eq!(rd(&mut u, REG_SCR), 0);
        assert!(!u.irq_pending());
    }

    #[test]
    fn output_is_buffered_until_newline() {
        let (mut u, sink) = uart();
        for &b in b"hello" {
            wr(&mut u, REG_DATA, u32::from(b));
        }
        assert!(sink.text().is_empty(), "no host write before newline");
        wr(&mut u, REG_DATA, u32::from(b'\n'));
        assert_eq!(sink.text(), b"hello\n");
        assert_eq!(*sink.writes.lock().unwrap(), 1, "one host write per line");
        wr(&mut u, REG_DATA, u32::from(b'!'));
        u.flush();
        assert_eq!(sink.text(), b"hello\n!");
    }

    #[test]
    fn output_flushed_on_drop_and_when_large() {
        let (mut u, sink) = uart();
        for _ in 0..TX_BUFFER_LIMIT {
            wr(&mut u, REG_DATA, u32::from(b'x'));
        }
        assert_eq!(sink.text().len(), TX_BUFFER_LIMIT);
        wr(&mut u, REG_DATA, u32::from(b'y'));
        drop(u);
        assert_eq!(sink.text().last(), Some(&b'y'));
        assert!(*sink.flushes.lock().unwrap() >= 2);
    }

    #[test]
    fn host_write_errors_are_not_fatal() {
        let mut u = Uart16550::new(Box::new(Broken));
        for &b in b"lost\n" {
            assert_eq!(u.write(BASE, 1, u32::from(b)), IoEffect::None);
        }
        u.flush();
    }

    #[test]
    fn wide_accesses_use_the_low_byte() {
        let (mut u, sink) = uart();
        assert_eq!(u.write(BASE, 4, 0x1234_5641), IoEffect::None);
        assert_eq!(u.write(BASE + REG_SCR, 2, 0xABCD), IoEffect::None);
        assert_eq!(u.read(BASE + REG_SCR, 2), 0xCD);
        assert_eq!(u.read(BASE + REG_LSR, 4), 0x60);
        u.flush();
        assert_eq!(sink.text(), b"A");
    }

    #[test]
    fn divisor_latch_behind_dlab() {
        let (mut u, sink) = uart();
        wr(&mut u, REG_LCR, 0x83);
        assert_eq!(rd(&mut u, REG_DATA), 0x0C);
        assert_eq!(rd(&mut u, REG_IER), 0x00);
        wr(&mut u, REG_DATA, 0x01);
        wr(&mut u, REG_IER, 0x02);
        assert_eq!(rd(&mut u, REG_DATA), 0x01);
        assert_eq!(rd(&mut u, REG_IER), 0x02);
        wr(&mut u, REG_LCR, 0x03);
        assert_eq!(rd(&mut u, REG_LCR), 0x03);
        assert_eq!(rd(&mut u, REG_IER), 0, "IER untouched by DLM writes");
        u.flush();
        assert!(sink.text().is_empty(), "DLL writes are not transmitted");
        wr(&mut u, REG_LCR, 0x80);
        assert_eq!(rd(&mut u, REG_IER), 0x02, "divisor kept");
    }

    #[test]
    fn scratch_register_and_writable_masks() {
        let (mut u, _) = uart();
        wr(&mut u, REG_SCR, 0x5A);
        assert_eq!(rd(&mut u, REG_SCR), 0x5A);
        wr(&mut u, REG_IER, 0xFF);
        assert_eq!(rd(&mut u, REG_IER), 0x0F);
        wr(&mut u, REG_MCR, 0xE3);
        assert_eq!(rd(&mut u, REG_MCR), 0x03);
        wr(&mut u, REG_LSR, 0);
        assert_eq!(rd(&mut u, REG_LSR), 0x60);
    }

    #[test]
    fn input_sets_data_ready_and_reads_in_order() {
        let (mut u, _) = uart();
        u.push_input(b'a');
        assert_eq!(rd(&mut u, REG_LSR) & 0x01, 0x01);
        assert_eq!(rd(&mut u, REG_DATA), u32::from(b'a'));
        assert_eq!(rd(&mut u, REG_LSR) & 0x01, 0);
        // Without FIFOs only one byte is held; the next one overruns.
        u.push_input(b'b');
        assert!(!u.can_accept_input());
        u.push_input(b'c');
        assert_eq!(rd(&mut u, REG_LSR), 0x63);
        assert_eq!(rd(&mut u, REG_LSR), 0x61, "overrun cleared by reading LSR");
        assert_eq!(rd(&mut u, REG_DATA), u32::from(b'b'));
    }

    #[test]
    fn fifo_mode_holds_sixteen_bytes_and_shows_in_iir() {
        let (mut u, _) = uart();
        wr(&mut u, REG_IIR_FCR, 0x07);
        assert_eq!(rd(&mut u, REG_IIR_FCR), 0xC1);
        for b in 0..16u8 {
            u.push_input(b);
        }
        assert!(!u.can_accept_input());
        for b in 0..16u8 {
            assert_eq!(rd(&mut u, REG_DATA), u32::from(b));
        }
        u.push_input(1);
        wr(&mut u, REG_IIR_FCR, 0x03);
        assert_eq!(rd(&mut u, REG_LSR) & 0x01, 0, "FCR clear-RX empties the FIFO");
    }

    #[test]
    fn receive_interrupt_when_enabled() {
        let (mut u, _) = uart();
        u.push_input(b'z');
        assert!(!u.irq_pending(), "IER disables it");
        wr(&mut u, REG_IER, u32::from(IER_RDA));
        assert!(u.irq_pending());
        assert_eq!(rd(&mut u, REG_IIR_FCR), 0x04);
        rd(&mut u, REG_DATA);
        assert!(!u.irq_pending());
        assert_eq!(rd(&mut u, REG_IIR_FCR), 0x01);
    }

    #[test]
    fn thr_empty_interrupt_acknowledged_by_iir_read() {
        let (mut u, _) = uart();
        wr(&mut u, REG_IER, u32::from(IER_THRE));
        assert!(u.irq_pending());
        assert_eq!(rd(&mut u, REG_IIR_FCR), 0x02);
        assert!(!u.irq_pending());
        assert_eq!(rd(&mut u, REG_IIR_FCR), 0x01);
        wr(&mut u, REG_DATA, u32::from(b'q'));
        assert_eq!(rd(&mut u, REG_IIR_FCR), 0x02);
    }

    #[test]
    fn line_status_interrupt_has_priority() {
        let (mut u, _) = uart();
        wr(&mut u, REG_IER, 0x0F);
        u.push_input(1);
        u.push_input(2);
        assert_eq!(rd(&mut u, REG_IIR_FCR), 0x06);
        rd(&mut u, REG_LSR);
        assert_eq!(rd(&mut u, REG_IIR_FCR), 0x04);
    }

    #[test]
    fn loopback_returns_output_and_mirrors_modem_lines() {
        let (mut u, sink) = uart();
        // The Linux 8250 probe: loopback with OUT2|RTS must read DCD|CTS.
        wr(&mut u, REG_MCR, u32::from(MCR_LOOPBACK | MCR_OUT2 | MCR_RTS));
        assert_eq!(rd(&mut u, REG_MSR) & 0xF0, 0x90);
        wr(&mut u, REG_MCR, u32::from(MCR_LOOPBACK | 0x0F));
        assert_eq!(rd(&mut u, REG_MSR), 0xF0 | u32::from(MSR_DDSR), "DSR and RI rose");
        assert_eq!(rd(&mut u, REG_MSR), 0xF0, "deltas cleared by reading");
        wr(&mut u, REG_MCR, u32::from(MCR_LOOPBACK));
        assert_eq!(rd(&mut u, REG_MSR), 0x0F, "all lines dropped, RI trailing edge");
        wr(&mut u, REG_DATA, u32::from(b'L'));
        assert_eq!(rd(&mut u, REG_LSR) & 0x01, 1);
        assert_eq!(rd(&mut u, REG_DATA), u32::from(b'L'));
        u.push_input(b'x');
        assert_eq!(rd(&mut u, REG_LSR) & 0x01, 0, "line input disconnected in loopback");
        u.flush();
        assert!(sink.text().is_empty(), "loopback bytes never reach the host");
    }

    #[test]
    fn modem_status_interrupt() {
        let (mut u, _) = uart();
        wr(&mut u, REG_IER, u32::from(IER_MS));
        assert!(!u.irq_pending());
        wr(&mut u, REG_MCR, u32::from(MCR_LOOPBACK));
        assert!(u.irq_pending(), "leaving the connected state changes lines");
        assert_eq!(rd(&mut u, REG_IIR_FCR), 0x00);
        rd(&mut u, REG_MSR);
        assert!(!u.irq_pending());
    }
}
