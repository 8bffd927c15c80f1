//! Leaf functions inlined at the indirect CALLs that reach them.
//!
//! A CALL through a function pointer to a small leaf — qsort's comparison
//! function, a callback, an accessor — costs a jump-cache lookup, a host
//! CALL, the callee's code-page probe, a host RET and the return check:
//! about 17 host instructions and four taken branches that native code does
//! not run. A call site whose target is such a leaf (`decode_leaf`) gets
//! the callee's code in its own block instead
//! (`translate::Translator::inline_call`): a guard on the target (LEA and
//! JRCXZ around a saved RCX), the callee, and a RET that only moves ESP
//! (or, for a callee that stores, pops the return address and checks it).
//!
//! Which target a site calls is learnt from the site's first jump-cache
//! miss (`exit::CALL_MISS`, which reports the return address): the hint is
//! kept by the return address's linear address, and the caller's block is
//! dropped so that it is translated again with the callee spliced in
//! (`GuestBlock::inline_call`). A site is learnt once; a guard that fails
//! (the site calls another function) takes the jump cache as before.
//!
//! The callee's page is the block's second page: a write to it drops the
//! block, and the block is indexed under both linear pages, as a block
//! crossing a page boundary is, so a remapping of either unlinks it.

use super::*;
use crate::cpu::SEG_SS;
use crate::decode::{Class, GuestBlock, MAX_INLINE_INSNS, MAX_INSN_LEN, decode_leaf};

/// A learnt call site whose target is not inlined.
const NOT_INLINED: u32 = u32::MAX;

/// An inlinable callee: its decoded instructions and its code.
pub(super) struct Callee {
    pub block: GuestBlock,
    pub code: CalleeCode,
}

/// An inlined callee's bytes (from its start on, at most as far as its
/// instructions can reach, and not past its page) and
/// its linear and physical address.
pub(super) struct CalleeCode {
    pub bytes: Vec<u8>,
    pub lin: u32,
    pub phys: u32,
}

impl Engine {
    /// Is this a plain run, where blocks may hold shortcuts that assume
    /// one vCPU, no icount budget and no breakpoints (inlined callees,
    /// continuation entries)? Under `-icount` blocks charge their
    /// instructions at entry; breakpoints and a debugger cut blocks at
    /// addresses; a multiprocessor machine's code-page protocol protects a
    /// block's pages before decoding them and its blocks check a kick at
    /// their start.
    fn plain_run(&self) -> bool {
        self.opts.chaining
            && !self.opts.icount
            && self.vcpu.is_none()
            && self.debug.is_none()
            && self.cpu.dr[7] & DR7_ENABLE_MASK == 0
    }

    /// May blocks inline callees (`-d noinline` says no)?
    pub(super) fn may_inline(&self) -> bool {
        self.opts.inline_calls && self.plain_run()
    }

    /// May blocks get entries at the continuations of their CALLs
    /// (`translate::Options::continuation_entries`; `-d nocont` says no)?
    /// Not where the dispatcher must see every block entry (`-d exec`).
    pub(super) fn may_add_entries(&self) -> bool {
        self.opts.continuation_entries && self.plain_run() && !(self.opts.trace.exec || self.opts.trace.cpu)
    }

    /// An indirect CALL in a block of mode `self.mode` missed the jump cache
    /// (`exit::CALL_MISS`): `return_eip` is its return address, `target`
    /// its target. A first miss at a site whose target can be inlined drops
    /// the caller's block, to be translated again with the callee in it.
    pub(super) fn learn_call(&mut self, return_eip: u32, target: u32) {
        let mode = self.mode;
        let cs_base = self.cpu.seg[SEG_CS].base;
        let ret_lin = cs_base.wrapping_add(return_eip);
        if !self.may_inline() || self.inline_hints.contains_key(&ret_lin) {
            return;
        }
        let inlinable = self.inline_callee(target, mode).is_some();
        self.inline_hints.insert(ret_lin, if inlinable { target } else { NOT_INLINED });
        if inlinable {
            // The CALL's last byte is in the caller's block.
            let call_end = return_eip.wrapping_sub(1);
            if let Some(p) = self.code_page_quiet(cs_base.wrapping_add(call_end), mode.cpl() == 3) {
                self.cache.invalidate_at(p, call_end, &mut self.cpu.hot);
            }
        }
    }

    /// The leaf function at `target` (mode `mode`), if it can be inlined:
    /// `decode_leaf` on the bytes from `target` on (to the end of its page
    /// at most).
    /// Nothing is raised when the page is not mapped.
    pub(super) fn inline_callee(&mut self, target: u32, mode: Mode) -> Option<Callee> {
        let cs_base = self.cpu.seg[SEG_CS].base;
        if mode.has(Mode::CS16) || !cs_base.is_multiple_of(PAGE_SIZE as u32) {
            return None;
        }
        let lin = cs_base.wrapping_add(target);
        let phys = self.code_page_quiet(lin, mode.cpl() == 3)?;
        if !self.mem.is_ram(phys) {
            return None;
        }
        // As far as `MAX_INLINE_INSNS` instructions can reach, within the page.
        let off = lin & (PAGE_SIZE as u32 - 1);
        let mut bytes = vec![0u8; (PAGE_SIZE - off as usize).min(MAX_INLINE_INSNS * MAX_INSN_LEN)];
        self.mem.read(phys + off, &mut bytes);
        let block = decode_leaf(&bytes, target, target, mode.cpl(), 32)?;
        if block.insns.iter().any(|i| self.device_insns.contains_key(&i.ip32())) {
            return None;
        }
        Some(Callee { block, code: CalleeCode { bytes, lin, phys } })
    }

    /// Splice the callee learnt for the first indirect CALL of `block`
    /// (decoded at linear `lin`, wholly on physical page `phys`) that has
    /// one, if it can be inlined there; the block goes past the CALL (it is
    /// not its last instruction). Returns the callee's code.
    pub(super) fn splice_callee(
        &mut self,
        block: &mut GuestBlock,
        lin: u32,
        phys: u32,
        mode: Mode,
    ) -> Option<CalleeCode> {
        if !mode.seg_flat(SEG_SS) || self.inline_hints.is_empty() {
            return None;
        }
        let cs_base = self.cpu.seg[SEG_CS].base;
        let n = block.insns.len();
        let (k, target) =
            block.insns[..n.saturating_sub(1)].iter().zip(&block.classes).enumerate().find_map(|(k, (i, &c))| {
                if c != Class::CallIndirect {
                    return None;
                }
                let flat = i.op0_kind() != iced_x86::OpKind::Memory
                    || mode.seg_flat(crate::translate::seg_index(i.memory_segment()));
                let t = *self.inline_hints.get(&cs_base.wrapping_add(i.next_ip32()))?;
                (flat && t != NOT_INLINED).then_some((k, t))
            })?;
        let Callee { block: body, code } = self.inline_callee(target, mode)?;
        let disjoint = body.end <= block.start || body.start >= block.end;
        // Another linear page must be another physical page (the block's
        // second page); on the block's own page, the same one.
        let same_lin = page_of(code.lin) == page_of(lin);
        if !disjoint || same_lin != (page_of(code.phys) == page_of(phys)) {
            return None;
        }
        block.inline_call(k, body);
        self.stats.inlined_calls += 1;
        Some(code)
    }
}
