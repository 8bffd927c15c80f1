//! Run 32-bit x86 code natively, in compatibility mode, from a 64-bit Linux
//! test process.  This is the oracle for the differential tests.
//!
//! Linux x86-64 provides a 32-bit user code segment (selector 0x23) next to
//! the 64-bit one (0x33).  We map one region below 4 GiB (`MAP_32BIT`) that
//! holds a small context block, the 256-byte data area, a 64-bit return stub,
//! the code area and a 32-bit stack.  `run` writes
//!
//! ```text
//!   prologue32: load EFLAGS and the 8 registers from the context block
//!   <code under test>
//!   epilogue32: store the 8 registers and EFLAGS, CLD, jmp far 0x33:ret64
//! ```
//!
//! and calls the `btv_native32_enter` trampoline (a naked function), which saves the host's
//! callee-saved registers, switches to the 32-bit stack and does a far return
//! to 0x23:prologue32.  `ret64` reloads the host stack pointer and returns into
//! the trampoline, which restores everything.

use std::ptr;

/// Register file and flags of a 32-bit run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct State32 {
    /// EAX ECX EDX EBX ESP EBP ESI EDI (x86 encoding order).
    pub regs: [u32; 8],
    pub eflags: u32,
}

/// Flags the input may set: CF PF AF ZF SF OF and DF.
pub const INPUT_FLAGS_MASK: u32 = 0x8D5 | 0x400;

const MAP_SIZE: usize = 0x20000;
// Layout of the mapping.
const CTX_OFF: usize = 0x0;
const RET64_OFF: usize = 0x200;
// The data area ends exactly at a page boundary and is surrounded by
// PROT_NONE pages, so a stray access past its end faults instead of silently
// corrupting the trampoline.
const GUARD_LO: usize = 0x1000;
const DATA_OFF: usize = 0x2F00;
const GUARD_HI: usize = 0x3000;
const CODE_OFF: usize = 0x4000;
const CODE_END: usize = 0x10000;
const STACK_LO: usize = 0x10000;
const STACK_TOP: usize = MAP_SIZE;

// Layout of the context block.
const C_IN_REGS: u32 = 0x00;
const C_IN_EFLAGS: u32 = 0x20;
const C_ENTRY32: u32 = 0x24;
const C_STACK32: u32 = 0x28;
const C_HOST_RSP: u32 = 0x30;
const C_OUT_REGS: u32 = 0x40;
const C_OUT_EFLAGS: u32 = 0x60;
const C_SAVED_DS: u32 = 0x38;
const C_SAVED_ES: u32 = 0x3a;

/// Trampoline from 64-bit mode into the 32-bit prologue (see module docs).
/// `ctx` (in rdi) is the context block, below 4 GiB.
#[unsafe(naked)]
unsafe extern "sysv64" fn btv_native32_enter(ctx: *mut u8) {
    core::arch::naked_asm!(
        // rdi = context block (below 4 GiB).
        "push rbx",
        "push rbp",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "push rdi",
        "mov ax, ds",
        "mov word ptr [rdi + {saved_ds}], ax",
        "mov ax, es",
        "mov word ptr [rdi + {saved_es}], ax",
        // Continuation address, popped by `ret` in the ret64 stub.
        "lea rax, [rip + 2f]",
        "push rax",
        "mov qword ptr [rdi + {host_rsp}], rsp",
        // In compatibility mode DS/ES must be usable data selectors (64-bit
        // Linux processes normally run with null DS/ES).
        "mov ax, ss",
        "mov ds, ax",
        "mov es, ax",
        // 32-bit stack (mov to esp zero-extends into rsp).
        "mov esp, dword ptr [rdi + {stack32}]",
        "push 0x23",
        "mov eax, dword ptr [rdi + {entry32}]",
        "push rax",
        // retfq: pop RIP and CS (0x23) -> compatibility mode.
        ".byte 0x48, 0xcb",
        "2:",
        "pop rdi",
        "mov ax, word ptr [rdi + {saved_ds}]",
        "mov ds, ax",
        "mov ax, word ptr [rdi + {saved_es}]",
        "mov es, ax",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbp",
        "pop rbx",
        "ret",
        saved_ds = const C_SAVED_DS,
        saved_es = const C_SAVED_ES,
        host_rsp = const C_HOST_RSP,
        stack32 = const C_STACK32,
        entry32 = const C_ENTRY32,
    );
}

/// Owner of a below-4-GiB RWX mapping used to run 32-bit code natively.
pub struct Native32 {
    base: *mut u8,
    /// Bytes of code written by the previous run (to skip rewriting identical code).
    last_code: Vec<u8>,
}

impl Default for Native32 {
    fn default() -> Self {
        Self::new()
    }
}

impl Native32 {
    pub fn new() -> Self {
        // SAFETY: anonymous private mapping with no fixed address; the result is
        // checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                MAP_SIZE,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                -1,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "mmap(MAP_32BIT) failed: {}", std::io::Error::last_os_error());
        let base = p as *mut u8;
        assert!((base as usize) + MAP_SIZE <= 1usize << 32, "MAP_32BIT mapping above 4 GiB");
        for guard in [GUARD_LO, GUARD_HI] {
            // SAFETY: the page lies inside the mapping just created and nothing
            // in it is ever accessed.
            let rc = unsafe { libc::mprotect(base.add(guard) as *mut libc::c_void, 0x1000, libc::PROT_NONE) };
            assert_eq!(rc, 0, "mprotect failed");
        }
        let me = Native32 { base, last_code: Vec::new() };
        // 64-bit return stub: mov rsp, [ctx + C_HOST_RSP]; ret
        let mut stub = vec![0x48, 0x8B, 0x24, 0x25];
        stub.extend_from_slice(&(me.addr(CTX_OFF) + C_HOST_RSP).to_le_bytes());
        stub.push(0xC3);
        me.write(RET64_OFF, &stub);
        me
    }

    fn addr(&self, off: usize) -> u32 {
        (self.base as usize + off) as u32
    }

    fn write(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= MAP_SIZE);
        // SAFETY: the range was just checked to lie inside our own mapping,
        // which is writable and not referenced by any Rust reference.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(off), bytes.len()) }
    }

    fn read(&self, off: usize, out: &mut [u8]) {
        assert!(off + out.len() <= MAP_SIZE);
        // SAFETY: as in `write`, the range lies inside our own mapping.
        unsafe { ptr::copy_nonoverlapping(self.base.add(off), out.as_mut_ptr(), out.len()) }
    }

    fn read_u32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn write_u32(&self, off: usize, v: u32) {
        self.write(off, &v.to_le_bytes());
    }

    /// Address of the 256-byte data area (below 4 GiB).
    pub fn data_addr(&self) -> u32 {
        self.addr(DATA_OFF)
    }

    /// Initial 32-bit stack pointer to pass as ESP.
    pub fn stack_top(&self) -> u32 {
        self.addr(STACK_TOP)
    }

    /// Lowest address ESP may point to on entry (leaves room for the code's own pushes).
    fn stack_min(&self) -> u32 {
        self.addr(STACK_LO + 0x4000)
    }

    /// Runs `code` in 32-bit compatibility mode with registers and flags from
    /// `input` (only CF PF AF ZF SF OF DF of `input.eflags` are used; ESP must
    /// lie within the stack, e.g. `stack_top()`), and `data` copied into the
    /// data area (and back afterwards).  Returns the registers and the full
    /// EFLAGS value (as pushed by PUSHFD) after the code.
    ///
    /// The code must fall through at its end, must not fault and must only
    /// touch the data area and the stack.
    pub fn run(&mut self, code: &[u8], input: &State32, data: &mut [u8; 256]) -> State32 {
        let esp = input.regs[4];
        assert!(
            esp >= self.stack_min() && esp <= self.stack_top(),
            "input ESP {esp:#x} is outside the native 32-bit stack ({:#x}..={:#x})",
            self.stack_min(),
            self.stack_top()
        );
        let ctx = self.addr(CTX_OFF);
        let code_addr = self.addr(CODE_OFF);

        if self.last_code != code {
            let mut buf = Vec::with_capacity(code.len() + 128);
            // prologue32
            buf.extend_from_slice(&[0xFF, 0x35]); // push dword [ctx+in_eflags]
            buf.extend_from_slice(&(ctx + C_IN_EFLAGS).to_le_bytes());
            buf.push(0x9D); // popfd
            buf.push(0xA1); // mov eax, [moffs32]
            buf.extend_from_slice(&(ctx + C_IN_REGS).to_le_bytes());
            for r in [1u32, 2, 3, 5, 6, 7, 4] {
                // mov r32, [disp32]  (ESP last: it switches to the input stack)
                buf.push(0x8B);
                buf.push(0x05 | ((r as u8) << 3));
                buf.extend_from_slice(&(ctx + C_IN_REGS + 4 * r).to_le_bytes());
            }
            buf.extend_from_slice(code);
            // epilogue32
            buf.push(0xA3); // mov [moffs32], eax
            buf.extend_from_slice(&(ctx + C_OUT_REGS).to_le_bytes());
            for r in 1u32..8 {
                buf.push(0x89); // mov [disp32], r32
                buf.push(0x05 | ((r as u8) << 3));
                buf.extend_from_slice(&(ctx + C_OUT_REGS + 4 * r).to_le_bytes());
            }
            buf.push(0x9C); // pushfd
            buf.extend_from_slice(&[0x8F, 0x05]); // pop dword [ctx+out_eflags]
            buf.extend_from_slice(&(ctx + C_OUT_EFLAGS).to_le_bytes());
            buf.push(0xFC); // cld (the Rust ABI requires DF=0)
            buf.push(0xEA); // jmp far 0x33:ret64
            buf.extend_from_slice(&self.addr(RET64_OFF).to_le_bytes());
            buf.extend_from_slice(&0x33u16.to_le_bytes());
            assert!(CODE_OFF + buf.len() <= CODE_END, "code too long for the native code area");
            self.write(CODE_OFF, &buf);
            self.last_code = code.to_vec();
        }

        for (i, r) in input.regs.iter().enumerate() {
            self.write_u32(CTX_OFF + C_IN_REGS as usize + 4 * i, *r);
        }
        self.write_u32(CTX_OFF + C_IN_EFLAGS as usize, 0x2 | (input.eflags & INPUT_FLAGS_MASK));
        self.write_u32(CTX_OFF + C_ENTRY32 as usize, code_addr);
        self.write_u32(CTX_OFF + C_STACK32 as usize, self.stack_top());
        self.write(DATA_OFF, &data[..]);

        // SAFETY: the context block, code (prologue + caller's code + epilogue),
        // return stub and stack all live in our below-4-GiB RWX mapping and were
        // initialised above.  The trampoline preserves all callee-saved
        // registers and the host stack and leaves DF clear; the caller's code is
        // required to fall through without faulting and to touch only the data
        // area and the 32-bit stack.
        unsafe { btv_native32_enter(self.base.add(CTX_OFF)) };

        self.read(DATA_OFF, &mut data[..]);
        let mut out = State32::default();
        for i in 0..8 {
            out.regs[i] = self.read_u32(CTX_OFF + C_OUT_REGS as usize + 4 * i);
        }
        out.eflags = self.read_u32(CTX_OFF + C_OUT_EFLAGS as usize);
        out
    }
}

impl Drop for Native32 {
    fn drop(&mut self) {
        // SAFETY: `base` is the start of the MAP_SIZE mapping created in `new`,
        // unmapped exactly once here.
        unsafe { libc::munmap(self.base as *mut libc::c_void, MAP_SIZE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(n: &Native32, regs: [u32; 8], eflags: u32) -> State32 {
        let mut regs = regs;
        regs[4] = n.stack_top();
        State32 { regs, eflags }
    }

    #[test]
    fn native32_inc_eax_is_32bit() {
        let mut n = Native32::new();
        let mut data = [0u8; 256];
        // 0x40 = inc eax in 32-bit mode (a REX prefix in 64-bit mode);
        // 0x48 = dec eax; so `40 40 40 48` adds 2.
        let out = n.run(&[0x40, 0x40, 0x40, 0x48], &input(&n, [5, 0, 0, 0, 0, 0, 0, 0], 0), &mut data);
        assert_eq!(out.regs[0], 7);
        assert_eq!(out.regs[4], n.stack_top());
        // inc eax from 0xffffffff -> 0 sets ZF, keeps CF.
        let out = n.run(&[0x40], &input(&n, [0xffff_ffff, 0, 0, 0, 0, 0, 0, 0], 0x1), &mut data);
        assert_eq!(out.regs[0], 0);
        assert_eq!(out.eflags & 0x8D5, 0x1 | 0x4 | 0x10 | 0x40);
    }

    #[test]
    fn native32_daa_and_push_pop() {
        let mut n = Native32::new();
        let mut data = [0u8; 256];
        // mov al, 0x09; add al, 0x08; daa  -> AL = 0x17 (BCD 9 + 8)
        let out = n.run(&[0xB0, 0x09, 0x04, 0x08, 0x27], &input(&n, [0; 8], 0), &mut data);
        assert_eq!(out.regs[0] & 0xff, 0x17);
        // push ecx; push edx; pop ecx; pop edx  (swap), ESP restored
        let out = n.run(&[0x51, 0x52, 0x59, 0x5A], &input(&n, [0, 11, 22, 0, 0, 0, 0, 0], 0), &mut data);
        assert_eq!((out.regs[1], out.regs[2]), (22, 11));
        assert_eq!(out.regs[4], n.stack_top());
        // push 0x1234; pop ebx ; esp-relative store: push eax; mov [esp], ecx(0x89 0x0C 0x24); pop ebp
        let out = n.run(
            &[0x68, 0x34, 0x12, 0, 0, 0x5B, 0x50, 0x89, 0x0C, 0x24, 0x5D],
            &input(&n, [1, 2, 3, 4, 0, 6, 7, 8], 0),
            &mut data,
        );
        assert_eq!(out.regs[3], 0x1234);
        assert_eq!(out.regs[5], 2);
    }

    #[test]
    fn native32_flags_and_data_area() {
        let mut n = Native32::new();
        let mut data = [0u8; 256];
        for (i, b) in data.iter_mut().enumerate() {
            *b = i as u8;
        }
        let d = n.data_addr();
        // add dword [esi+4], eax ; mov ebx, [esi+8]  ; esi = data area
        let code = [0x01, 0x46, 0x04, 0x8B, 0x5E, 0x08];
        let out = n.run(&code, &input(&n, [0x0100_0000, 0, 0, 0, 0, 0, d, 0], 0), &mut data);
        assert_eq!(&data[4..8], &[4, 5, 6, 8]);
        assert_eq!(out.regs[3], u32::from_le_bytes([8, 9, 10, 11]));
        assert_eq!(out.regs[6], d);
        // All input arithmetic flags come through; DF too (and is cleared afterwards).
        for f in [0x1u32, 0x4, 0x10, 0x40, 0x80, 0x800, 0x400, 0x8D5 | 0x400] {
            let out = n.run(&[0x90], &input(&n, [0; 8], f), &mut data);
            assert_eq!(out.eflags & INPUT_FLAGS_MASK, f, "flags {f:#x}");
            assert_eq!(out.eflags & 0x2, 0x2);
        }
        // lahf with all flags set: AH = SF ZF 0 AF 0 PF 1 CF = 0xD7
        let out = n.run(&[0x9F], &input(&n, [0; 8], 0x8D5), &mut data);
        assert_eq!((out.regs[0] >> 8) & 0xff, 0xD7);
    }

    #[test]
    fn native32_preserves_host_state() {
        let mut n = Native32::new();
        let mut data = [0u8; 256];
        // Clobber every register 32-bit code can reach.
        let code = [
            0xB8, 1, 0, 0, 0, // mov eax, 1
            0xBB, 2, 0, 0, 0, // mov ebx, 2
            0xBD, 3, 0, 0, 0, // mov ebp, 3
            0xBF, 4, 0, 0, 0,    // mov edi, 4
            0xFD, // std
        ];
        let keep = std::hint::black_box(0x1234_5678_9abc_def0u64);
        for _ in 0..1000 {
            n.run(&code, &input(&n, [0; 8], 0), &mut data);
        }
        assert_eq!(std::hint::black_box(keep), 0x1234_5678_9abc_def0);
        // A second instance at another address works too.
        let mut m = Native32::new();
        let out = m.run(&[0x40], &input(&m, [41, 0, 0, 0, 0, 0, 0, 0], 0), &mut data);
        assert_eq!(out.regs[0], 42);
    }
}
