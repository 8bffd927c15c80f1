//! Block translation: fetching a block's code through the guest's paging,
//! decoding it, cutting it at breakpoints and RDTSC/port I/O under icount,
//! translating it into the code cache (and naming it for perf), and the
//! `-d in_asm,out_asm,exec,cpu` traces of blocks.

use super::*;

impl Engine {
    /// Decode and translate the block at `eip`; `register` = false makes a
    /// one-off block (used to step one instruction after a code write).
    /// An instruction fetch that faults returns the step delivering #PF.
    pub(super) fn translate(&mut self, eip: u32, mode: Mode, register: bool) -> Result<BlockId, Step> {
        let t0 = Instant::now();
        let max = if !register || mode.has(Mode::TF) { 1 } else { MAX_BLOCK_INSNS };
        // A one-off block runs exactly one instruction: its indirect branch
        // leaves for the dispatcher instead of continuing from the jump
        // cache (the bounce pages of `bounce` are mapped only meanwhile).
        let inline_lookup = self.opts.chaining && register;
        let bits = if mode.has(Mode::CS16) { 16 } else { 32 };
        // Code is fetched at CS base + EIP; instructions keep EIP offsets.
        let cs_base = self.cpu.seg[SEG_CS].base;
        let lin = cs_base.wrapping_add(eip);
        // A block ends at the page boundary of its EIP, which is the linear
        // one unless the CS base is not page-aligned.
        let reach = if cs_base.is_multiple_of(PAGE_SIZE as u32) { NEXT_PAGE_BYTES } else { PAGE_SIZE };
        let fetch = self.fetch_code(lin, mode.cpl() == 3, reach, max)?;
        if register && self.vcpu.is_some() {
            // Other vCPUs may store to the page: it must trap for all of
            // them before its bytes are decoded (`smp`).
            let (p0, _) = fetch.phys_pages(lin, lin);
            self.protect_code_page(p0);
        }
        let (mut block, phys0, phys_end) = {
            let (code, base) = fetch.code(self.mem.ram(), cs_base, eip);
            // Side exits need chaining. Under icount a block charges all its
            // instructions at entry, also when it leaves by a side exit: time
            // runs a little fast, the same way in every run.
            let reach = crate::decode::Reach {
                side_exits: if self.opts.chaining { MAX_SIDE_EXITS } else { 0 },
                // Guest CALLs become host CALLs (`translate::lookup::host_call`)
                // exactly where returns are looked up inline.
                calls: if inline_lookup && mode.uses_jump_cache() { MAX_PAST_CALLS } else { 0 },
            };
            let mut block = decode_superblock(code, base, eip, max, mode.cpl(), bits, reach);
            if let Fetch::Paged { phys, .. } = &fetch {
                // An instruction running into a page that is not mapped: the
                // block ends before it, or it faults when it comes first.
                if phys[1].is_none() && block.truncated {
                    {
                        let k = block.insns.len() - 1;
                        if k == 0 {
                            let next = (lin & !0xFFF).wrapping_add(PAGE_SIZE as u32);
                            return Err(self.fetch_fault(next, mode.cpl() == 3));
                        }
                        block.end = block.insns[k].ip32();
                        block.insns.truncate(k);
                        block.classes.truncate(k);
                    }
                }
            }
            let (p0, p_end) = fetch.phys_pages(lin, cs_base.wrapping_add(block.end.wrapping_sub(1)));
            (block, p0, p_end)
        };
        if self.cpu.dr[7] & DR7_ENABLE_MASK != 0 || self.debug.is_some() {
            self.cut_at_breakpoints(&mut block, cs_base);
        }
        if self.opts.icount {
            // RDTSC and port I/O leave for the VMM under icount: they end their block.
            let reads_time =
                block.insns.iter().zip(&block.classes).position(|(i, &c)| crate::translate::reads_time(i, c));
            if let Some(k) = reads_time {
                block.end = block.insns[k].next_ip32();
                block.insns.truncate(k + 1);
                block.classes.truncate(k + 1);
            }
        }
        if !self.device_insns.is_empty()
            && let Some(k) = block.insns.iter().position(|i| self.device_insns.contains_key(&i.ip32()))
        {
            // An instruction that accesses device memory: it ends its block
            // and the VMM runs it (`Engine::device_access`).
            block.end = block.insns[k].next_ip32();
            block.insns.truncate(k + 1);
            block.classes.truncate(k + 1);
            block.classes[k] = crate::decode::Class::Emulate;
        }
        // A leaf function learnt at one of the block's indirect CALLs
        // (`inline_calls`): its code is spliced in after the CALL, and its
        // page becomes the block's second.
        let callee = if register && inline_lookup && phys0 == phys_end && mode.uses_jump_cache() && self.may_inline() {
            self.splice_callee(&mut block, lin, phys0, mode)
        } else {
            None
        };
        let phys_end = callee.as_ref().map_or(phys_end, |c| page_of(c.phys));
        if self.opts.trace.in_asm {
            let text = disasm_guest(&block.insns);
            self.logln(&format!("----------------\nIN: \n{text}"));
        }
        let opts = Options {
            inline_lookup,
            mode,
            icount: self.opts.icount,
            kick_check: self.vcpu.is_some(),
            pause_gate: self.vcpu.as_ref().is_some_and(|v| v.machine.oversubscribed),
            // Ring-3 code pages come and go with Linux's address spaces:
            // their blocks' entries confirm the page (`code_pages`).
            probe: (register && self.opts.chaining && mode.cpl() == 3 && self.mem.paging().enabled()).then_some(lin),
            learn_calls: register && self.may_inline(),
            continuation_entries: register && self.may_add_entries(),
        };
        for attempt in 0..2 {
            let (code, base) = fetch.code(self.mem.ram(), cs_base, eip);
            let host = self.cache.next_addr();
            let mut tr =
                Translator::new(host, self.tramp.exits, self.cache.next_exit_id(), opts, code).with_code_base(base);
            if register && self.opts.soft_mmu {
                tr = tr.with_soft_all();
            } else if register && !self.soft.insns.is_empty() {
                // (One-off blocks run an instruction through the shadow window.)
                tr = tr.with_soft(&self.soft.insns);
            }
            if let Some(c) = &callee {
                tr = tr.with_inline_code(&c.bytes, block.inlined.map_or(0, |s| s.start));
            }
            let mut t = tr.translate(&block);
            // Entries are keyed by linear address, as blocks are.
            for e in &mut t.entries {
                e.0 = cs_base.wrapping_add(e.0);
            }
            if !self.cache.fits(t.code.len()) {
                if attempt == 0 {
                    self.flush();
                    continue;
                }
                return Err(Step::Done(RunOutcome::InternalError("code cache cannot hold one block".into())));
            }
            if t.uses_fpu {
                self.cpu.hot.fpu_active = 1;
            }
            let code_len = t.code.len();
            let out_text = self.opts.trace.out_asm.then(|| disasm_host(&t.code, host));
            let pages = (phys0, phys_end);
            let inlined = block.inlined.map(|s| (s.start, s.end));
            let Some(id) = self.cache.install(lin, cs_base, mode, phys0, block.end, pages, inlined, t, register) else {
                return Err(Step::Done(RunOutcome::InternalError("code cache cannot hold one block".into())));
            };
            if let Some(map) = &mut self.perfmap {
                // perf's JIT map format: START SIZE NAME (hex, no 0x).
                let _ = writeln!(map, "{host:x} {code_len:x} guest-cpl{}-{lin:08x}", mode.cpl());
            }
            if register {
                let second_new = pages.1 != pages.0 && self.mem.is_ram(pages.1) && !self.mem.is_protected(pages.1);
                for p in [pages.0, pages.1] {
                    self.protect_code_page(p);
                }
                if second_new && self.vcpu.is_some() {
                    // The block's tail was decoded before its page was
                    // protected for every vCPU: translate it again.
                    self.cache.invalidate_page(pages.1, &mut self.cpu.hot);
                    return Err(Step::Continue);
                }
                if self.vcpu.is_none() {
                    // Kept to verify the block after a write to its page
                    // (`record_source` takes only the blocks it can check).
                    let (code, base) = fetch.code(self.mem.ram(), cs_base, eip);
                    let from = eip.wrapping_sub(base) as usize;
                    let len = block.end.wrapping_sub(eip) as usize;
                    if let Some(bytes) = code.get(from..from + len) {
                        self.cache.record_source(id, bytes);
                    }
                }
                let last = cs_base.wrapping_add(self.cache.blocks[id as usize].second_eip());
                self.cache.index_linear(id, page_of(lin), page_of(last));
                if page_of(last) != page_of(lin) {
                    // Recorded so that a CR3 load revalidates this page too.
                    self.code_page_quiet(last, mode.cpl() == 3);
                }
            }
            self.stats.blocks += 1;
            self.stats.guest_insns += block.insns.len() as u64;
            self.stats.host_bytes += code_len as u64;
            self.stats.translate_ns += t0.elapsed().as_nanos() as u64;
            if let Some(text) = out_text {
                self.logln(&format!("OUT: [size={code_len}]\n{text}"));
            }
            if let Fetch::Paged { buf, .. } = fetch {
                self.fetch_buf = buf;
            }
            return Ok(id);
        }
        Err(Step::Done(RunOutcome::InternalError("code cache cannot hold one block".into())))
    }

    /// End the block before any enabled execution breakpoint (DR0-3, or
    /// the debugger's, at linear addresses) after its first instruction
    /// (the dispatcher checks the first one).
    pub(super) fn cut_at_breakpoints(&self, block: &mut crate::decode::GuestBlock, cs_base: u32) {
        let dr = &self.cpu.dr;
        let mut bps = debug::exec_breakpoints(&[dr[0], dr[1], dr[2], dr[3], dr[7]]);
        bps.extend(self.debug_breakpoints());
        if let Some(cut) = block.insns.iter().skip(1).position(|i| bps.contains(&cs_base.wrapping_add(i.ip32()))) {
            let keep = cut + 1;
            block.end = block.insns[keep].ip32();
            block.insns.truncate(keep);
            block.classes.truncate(keep);
        }
    }

    /// Drop all translations (the cache is full, or breakpoints changed).
    pub(super) fn flush(&mut self) {
        self.clear_emu_cache();
        self.cache.flush(&mut self.cpu.hot);
        self.suspended.clear();
        // Other vCPUs may still run code from these pages: they stay
        // protected machine-wide until written.
        if self.may_unprotect_alone() {
            self.mem.unprotect_all();
        }
        self.stats.flushes += 1;
    }

    /// Creates /tmp/perf-PID.map (perf's map for JIT code) and names the
    /// trampolines in it; blocks are added as they are translated.
    pub(super) fn open_perfmap(&mut self) {
        let path = format!("/tmp/perf-{}.map", std::process::id());
        match std::fs::File::create(&path) {
            Ok(f) => {
                let mut map = std::io::BufWriter::new(f);
                let (lo, _) = self.cache.rx_range();
                let _ = writeln!(map, "{lo:x} {:x} btvisor-trampolines", self.cache.base_used());
                self.perfmap = Some(map);
            }
            Err(e) => log::warn!("cannot write {path}: {e}"),
        }
    }

    /// `-d exec` and `-d cpu`: the block about to run (QEMU's `Trace` line:
    /// host address, [CS base/linear EIP/mode/0]) and the state before it.
    pub(super) fn log_block(&mut self, host: usize, lin: u32, mode: Mode) {
        let mut l = String::new();
        if self.opts.trace.exec {
            l += &format!("Trace 0: {host:#x} [{:08x}/{lin:08x}/{:08x}/00000000] ", self.cpu.seg[SEG_CS].base, mode.0);
        }
        if self.opts.trace.cpu {
            if !l.is_empty() {
                l.push('\n');
            }
            l += &self.cpu.dump();
        }
        self.logln(&l);
    }
}

/// The bytes of the next page a block can need: `decode_superblock` ends a
/// block with the instruction that crosses into the next page, which is at
/// most 15 bytes long.
pub(super) const NEXT_PAGE_BYTES: usize = 15;

/// Where a block's code bytes come from.
pub(super) enum Fetch {
    /// Paging off: guest RAM at CS base + EIP.
    Flat,
    /// Paging on: a copy of the code from linear `start` to the end of its
    /// page (and the start of the next one if mapped), `phys` being the
    /// two pages' physical addresses.
    Paged { buf: Vec<u8>, start: u32, phys: [Option<u32>; 2] },
}

impl Fetch {
    /// The code bytes and the EIP of their first byte.
    pub(super) fn code<'a>(&'a self, ram: &'a [u8], cs_base: u32, eip: u32) -> (&'a [u8], u32) {
        match self {
            Fetch::Flat => (ram.get(cs_base as usize..).unwrap_or(&[]), 0),
            Fetch::Paged { buf, start, .. } => {
                let lin = cs_base.wrapping_add(eip);
                (&buf[..], eip.wrapping_sub(lin.wrapping_sub(*start)))
            }
        }
    }

    /// Physical pages of the block's first byte `lin` and last byte `last`.
    pub(super) fn phys_pages(&self, lin: u32, last: u32) -> (u32, u32) {
        match self {
            Fetch::Flat => (page_of(lin), page_of(last)),
            Fetch::Paged { start, phys, .. } => {
                let p0 = phys[0].unwrap_or(0);
                let p1 = if page_of(last) != page_of(*start) { phys[1].unwrap_or(p0) } else { p0 };
                (p0, p1)
            }
        }
    }
}

/// iced-x86 builds its instruction-info tables on first use (a few ms);
/// pay that at machine construction rather than in the first translation.
/// `main` starts it on a thread of its own first, while the images load;
/// the tables are built once, whichever thread gets there first.
pub fn warm_up_decoder() {
    // add eax, [ebx+4] ; fld qword [eax] ; ret
    let code = [0x03, 0x43, 0x04, 0xDD, 0x00, 0xC3];
    let b = decode_block(&code, 0, 0, MAX_BLOCK_INSNS);
    for i in &b.insns {
        let _ = (i.op_code().op_kinds().len(), i.cpuid_features().len(), i.stack_pointer_increment());
    }
}

fn disasm_guest(insns: &[Instruction]) -> String {
    let mut f = GasFormatter::new();
    let mut out = String::new();
    for i in insns {
        let mut s = String::new();
        f.format(i, &mut s);
        out += &format!("0x{:08x}:  {s}\n", i.ip32());
    }
    out
}

fn disasm_host(code: &[u8], base: usize) -> String {
    let mut d = Decoder::with_ip(64, code, base as u64, DecoderOptions::NONE);
    let mut f = GasFormatter::new();
    let mut out = String::new();
    while d.can_decode() {
        let i = d.decode();
        let mut s = String::new();
        f.format(&i, &mut s);
        out += &format!("0x{:016x}:  {s}\n", i.ip());
    }
    out
}
