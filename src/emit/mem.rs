//! Encoding of guest memory operands as GS-window accesses.
//!
//! A guest operand `[base + index*scale + disp]` becomes
//! `gs: addr32 [base' + index'*scale + disp]`: the 0x67 prefix makes the host
//! compute the address in 32 bits (wrapping at 4 GiB, as the guest does) and
//! GS adds the window base, so no guest address can reach host memory outside
//! the window. Registers are host numbers (guest ESP is already R12). The
//! same encoder makes the direct window operands `[r15 + reg]` and
//! `[r15 + disp32]` (`translate::direct_window_operand`).

/// A guest memory operand in host register numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestMem {
    pub base: Option<u8>,
    pub index: Option<u8>,
    /// 1, 2, 4 or 8.
    pub scale: u8,
    pub disp: i32,
}

impl GuestMem {
    pub fn base_disp(base: u8, disp: i32) -> Self {
        GuestMem { base: Some(base), index: None, scale: 1, disp }
    }

    pub fn uses(&self, r: u8) -> bool {
        self.base == Some(r) || self.index == Some(r)
    }
}

/// ModRM, optional SIB and displacement bytes plus the REX bits they need.
#[derive(Clone, Copy, Debug)]
pub struct MemEncoding {
    /// REX.R/X/B as bits 2/1/0 (0 = no REX needed for the operand).
    pub rex_rxb: u8,
    pub bytes: [u8; 7],
    pub len: u8,
}

impl MemEncoding {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

fn scale_bits(scale: u8) -> u8 {
    match scale {
        2 => 1,
        4 => 2,
        8 => 3,
        _ => 0,
    }
}

/// Encode `m` with `regf` (0..15) in the ModRM reg field, for 32-bit
/// addressing in 64-bit mode.
pub fn encode_guest_mem(regf: u8, m: &GuestMem) -> MemEncoding {
    let mut e = MemEncoding { rex_rxb: (regf >> 3) << 2, bytes: [0; 7], len: 0 };
    let push = |e: &mut MemEncoding, b: u8| {
        e.bytes[e.len as usize] = b;
        e.len += 1;
    };
    let r = (regf & 7) << 3;
    let disp8 = (-128..=127).contains(&m.disp);
    match (m.base, m.index) {
        (None, idx) => {
            // [index*s + disp32] or [disp32]: SIB with base=101, mod=00. The
            // plain mod=00 rm=101 form would be RIP-relative in 64-bit mode.
            push(&mut e, r | 0x04);
            let (ib, x) = match idx {
                Some(i) => ((i & 7) << 3, i >> 3),
                None => (4 << 3, 0),
            };
            e.rex_rxb |= x << 1;
            push(&mut e, (scale_bits(m.scale) << 6) | ib | 5);
            for b in (m.disp as u32).to_le_bytes() {
                push(&mut e, b);
            }
        }
        (Some(base), idx) => {
            let mode: u8 = if m.disp == 0 && base & 7 != 5 {
                0
            } else if disp8 {
                1
            } else {
                2
            };
            e.rex_rxb |= base >> 3;
            if idx.is_none() && base & 7 != 4 {
                push(&mut e, (mode << 6) | r | (base & 7));
            } else {
                push(&mut e, (mode << 6) | r | 4);
                let (ib, x) = match idx {
                    Some(i) => ((i & 7) << 3, i >> 3),
                    None => (4 << 3, 0),
                };
                e.rex_rxb |= x << 1;
                push(&mut e, (scale_bits(m.scale) << 6) | ib | (base & 7));
            }
            match mode {
                1 => push(&mut e, m.disp as i8 as u8),
                2 => {
                    for b in (m.disp as u32).to_le_bytes() {
                        push(&mut e, b);
                    }
                }
                _ => {}
            }
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emit::disasm64;
    use crate::emit::reg::*;

    /// Emit `mov eax-ish, gs:addr32 [m]` (opcode 8B) and disassemble it.
    fn show(regf: u8, m: GuestMem) -> String {
        let e = encode_guest_mem(regf, &m);
        let mut v = vec![0x65, 0x67];
        if e.rex_rxb != 0 {
            v.push(0x40 | e.rex_rxb);
        }
        v.push(0x8B);
        v.extend_from_slice(e.as_slice());
        let d = disasm64(&v);
        assert_eq!(d.len(), 1, "{v:02x?}");
        d[0].clone()
    }

    #[test]
    fn absolute_is_not_rip_relative() {
        let m = GuestMem { base: None, index: None, scale: 1, disp: 0x1234 };
        assert_eq!(show(RAX, m), "mov eax,gs:[1234h]");
    }

    #[test]
    fn esp_base_becomes_r12() {
        assert_eq!(show(RCX, GuestMem::base_disp(R12, 8)), "mov ecx,gs:[r12d+8]");
        assert_eq!(show(R12, GuestMem::base_disp(R12, 0)), "mov r12d,gs:[r12d]");
    }

    #[test]
    fn ebp_base_needs_disp() {
        assert_eq!(show(RAX, GuestMem::base_disp(RBP, 0)), "mov eax,gs:[ebp]");
        assert_eq!(show(RAX, GuestMem::base_disp(R13, 0)), "mov eax,gs:[r13d]");
    }

    #[test]
    fn sib_forms() {
        let m = GuestMem { base: Some(RBX), index: Some(RSI), scale: 4, disp: 0x100 };
        assert_eq!(show(RDX, m), "mov edx,gs:[ebx+esi*4+100h]");
        let m = GuestMem { base: None, index: Some(RDI), scale: 8, disp: -4 };
        assert_eq!(show(RDX, m), "mov edx,gs:[edi*8-4]");
        let m = GuestMem { base: Some(R12), index: Some(RAX), scale: 2, disp: -0x80 };
        assert_eq!(show(RBP, m), "mov ebp,gs:[r12d+eax*2-80h]");
        let m = GuestMem { base: Some(RBP), index: Some(RCX), scale: 1, disp: 0 };
        assert_eq!(show(RAX, m), "mov eax,gs:[ebp+ecx]");
    }
}
