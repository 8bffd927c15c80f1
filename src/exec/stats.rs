//! Counters behind `--stats`.

use std::fmt::Write;

use iced_x86::Mnemonic;

use crate::cpu::exit;

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub blocks: u64,
    pub guest_insns: u64,
    pub host_bytes: u64,
    pub translate_ns: u64,
    pub chains: u64,
    pub flushes: u64,
    pub exits: [u64; 9],
    pub polls: u64,
    pub exceptions: u64,
    pub smc_pages: u64,
    pub invalidated_blocks: u64,
    /// Written code pages whose blocks were compared with their bytes
    /// (`CodeCache::verify_page`).
    pub verified_pages: u64,
    pub hole_writes: u64,
    /// Instructions emulated because they accessed device memory.
    pub device_accesses: u64,
    pub page_faults: u64,
    pub hidden_faults: u64,
    pub tlb_flushes: u64,
    /// INVLPGs completed by a callout from translated code.
    pub inline_invlpgs: u64,
    /// Instructions that took the soft form, and those sent back to the
    /// shadow window.
    pub soft_insns: u64,
    pub soft_reverts: u64,
    pub interrupts: u64,
    pub halt_sleeps: u64,
    /// PAUSEs a multiprocessor guest left translated code for.
    pub pauses: u64,
    /// Host return stacks emptied because guest calls without returns
    /// filled them (`exec::return_stack`).
    pub return_stack_resets: u64,
    /// Blocks translated with a callee inlined at an indirect CALL.
    pub inlined_calls: u64,
    /// Blocks entered at a CALL's continuation (`Block::entries`) by the
    /// dispatcher, which would otherwise have translated a new block.
    pub continuation_entries: u64,
    /// VMM callouts per mnemonic (indexed by `Mnemonic as usize`).
    pub callouts: Vec<u64>,
}

impl Stats {
    pub fn count_exit(&mut self, reason: u32) {
        if let Some(c) = self.exits.get_mut(reason as usize) {
            *c += 1;
        }
    }

    pub fn count_callout(&mut self, m: Mnemonic) {
        let k = m as usize;
        if self.callouts.len() <= k {
            self.callouts.resize(Mnemonic::values().len().max(k + 1), 0);
        }
        self.callouts[k] += 1;
    }

    /// Callouts as (mnemonic, count), most frequent first.
    pub fn callout_list(&self) -> Vec<(Mnemonic, u64)> {
        let mut v: Vec<(Mnemonic, u64)> = Mnemonic::values()
            .filter_map(|m| self.callouts.get(m as usize).copied().filter(|&n| n > 0).map(|n| (m, n)))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(format!("{:?}", a.0).cmp(&format!("{:?}", b.0))));
        v
    }

    /// The `--stats` report.
    pub fn report(&self, cache_used: usize, cache_size: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "btvisor statistics");
        let _ = writeln!(s, "  blocks translated       {}", self.blocks);
        let _ = writeln!(s, "  guest insns translated  {}", self.guest_insns);
        let per = if self.guest_insns > 0 { self.translate_ns as f64 / self.guest_insns as f64 } else { 0.0 };
        let _ = writeln!(s, "  translation time        {:.3} ms ({per:.0} ns/insn)", self.translate_ns as f64 / 1e6);
        let _ = writeln!(s, "  host code emitted       {} bytes", self.host_bytes);
        let _ = writeln!(s, "  code cache used         {cache_used} of {cache_size} bytes ({} flushes)", self.flushes);
        let _ = writeln!(s, "  chains made             {}", self.chains);
        let _ = writeln!(s, "  blocks with a call inlined {}", self.inlined_calls);
        let _ = writeln!(s, "  entered at a continuation {}", self.continuation_entries);
        let names = [
            (exit::CHAIN, "chain (unlinked direct exit)"),
            (exit::INDIRECT, "indirect lookup miss"),
            (exit::EMULATE, "VMM callout"),
            (exit::EXCEPTION, "exception"),
            (exit::FAULT, "host fault"),
            (exit::SOFT_MISS, "soft-TLB miss"),
            (exit::PROBE_MISS, "code page unconfirmed"),
            (exit::CALL_MISS, "indirect call miss"),
        ];
        let _ = writeln!(s, "  exits by reason:");
        for (r, n) in names {
            let _ = writeln!(s, "    {n:<30} {}", self.exits[r as usize]);
        }
        let _ = writeln!(s, "    of which poll (timer)          {}", self.polls);
        let _ = writeln!(
            s,
            "  code pages written      {} ({} blocks invalidated, {} pages verified)",
            self.smc_pages, self.invalidated_blocks, self.verified_pages
        );
        let _ = writeln!(
            s,
            "  paging: {} hidden faults, {} guest page faults, {} TLB flushes, {} INVLPGs in translated code",
            self.hidden_faults, self.page_faults, self.tlb_flushes, self.inline_invlpgs
        );
        let _ = writeln!(
            s,
            "  soft-form instructions  {} ({} sent back to the shadow window)",
            self.soft_insns, self.soft_reverts
        );
        let _ = writeln!(s, "  device memory accesses  {}", self.device_accesses);
        let _ = writeln!(s, "  host return stack resets {}", self.return_stack_resets);
        let _ = writeln!(s, "  external interrupts     {} ({} HLT sleeps)", self.interrupts, self.halt_sleeps);
        let c = self.callout_list();
        let _ = writeln!(s, "  callouts by instruction:");
        for (m, n) in c {
            let _ = writeln!(s, "    {:<30} {n}", format!("{m:?}").to_lowercase());
        }
        s
    }
}
