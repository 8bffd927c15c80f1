//! Multiprocessor guests: the machine-wide state the vCPU threads share,
//! the requests one vCPU makes of another, and the code-page protocol.
//!
//! Each virtual CPU is an `Engine` on its own host thread, with its own
//! view of guest RAM (`GuestMemory::new_view`: windows, shadow state, code
//! cache, jump caches, soft TLB) and its own local APIC. What they share is
//! [`Machine`]: every vCPU's APIC and mailbox, the lock that orders
//! code-page changes, and the run's end. A vCPU never touches another's
//! engine: it posts a [`Request`] to the other's mailbox and kicks it (one
//! store to its `HotState::kick`, which brings translated code back to
//! the dispatcher at the next block entry, and the condition variable a
//! halted vCPU sleeps on); the target acts at its next safepoint.
//!
//! `machine`: the shared state, IPI routing and kicks; `vcpu`: one vCPU's
//! side (safepoints, requests, the code-page protocol, HLT and PAUSE, an
//! application processor's interrupts); this module: assembling a machine
//! and running its vCPU threads.
//!
//! Code pages. A physical page holding translations is write-protected in
//! *every* vCPU's windows, not only in those of the vCPUs that translated
//! it, so a store from any vCPU traps. The state of each page changes
//! only under `Machine::code_lock`, and synchronously:
//! - data → code (a vCPU is about to translate from it): the translating
//!   vCPU protects its own view, posts `Protect` to every other vCPU and
//!   waits until all have done it, and only then decodes the bytes;
//! - code → data (a store trapped, or the VMM wrote the page): the writing
//!   vCPU posts `Invalidate` to every other vCPU and waits until each has
//!   dropped its translations of the page and unprotected it, then does
//!   the same itself and lets the store go on.
//!
//! So no vCPU ever runs a translation of bytes another vCPU has since
//! changed: stricter than the SDM's cross-modifying-code rule, which only
//! promises the new code after the executing processor serialises.

mod machine;
mod vcpu;

use std::sync::{Arc, Mutex};

pub use machine::{LapicPage, Machine, Request, VcpuCtx, VcpuLink};

use super::*;
use crate::devices::chipset::lock;

/// Make `bsp` the first of `count` vCPUs and return the others: each a
/// fresh engine over its own view of `bsp`'s memory. Each gets its own
/// local APIC (at the default base, in its own view) and a port bus that
/// forwards to the first's devices; the chipset (owned by the first)
/// delivers I/O APIC messages to all of them.
pub fn make_machine(bsp: &mut Engine, count: usize, opts: EngineOptions) -> Result<Vec<Engine>, ExecError> {
    use crate::devices::lapic::{APIC_DEFAULT_BASE, LocalApic};
    use crate::devices::{PortBus, SharedBus};
    let Some(clock) = bsp.chipset.as_ref().map(|c| c.clock.clone()) else {
        return Err(ExecError::SmpWithoutApics);
    };
    let lapics: Vec<_> =
        (0..count).map(|i| Arc::new(Mutex::new(LocalApic::for_cpu(clock.clone(), i as u32)))).collect();
    let machine = Machine::new(lapics.clone());
    let shared = SharedBus(Arc::new(Mutex::new(std::mem::take(&mut bsp.io))));
    bsp.io = PortBus::shared_view(&shared);
    bsp.mem.set_views(count);
    let mut aps = Vec::new();
    for i in 1..count {
        let mut mem = bsp.mem.new_view(count)?;
        mem.replace_mmio(APIC_DEFAULT_BASE, Box::new(LapicPage { index: i, machine: machine.clone() }));
        let mut e = Engine::new(mem, PortBus::shared_view(&shared), opts)?;
        e.cpu.tsc_clock = bsp.cpu.tsc_clock.clone();
        e.join_machine(i, machine.clone());
        aps.push(e);
    }
    bsp.mem.replace_mmio(APIC_DEFAULT_BASE, Box::new(LapicPage { index: 0, machine: machine.clone() }));
    bsp.join_machine(0, machine.clone());
    if let Some(cs) = bsp.chipset.as_mut() {
        cs.lapic = Some(lapics[0].clone());
        cs.lapics = lapics;
        let m = machine.clone();
        cs.kick = Some(Box::new(move |j| m.vcpus[j].kick_interrupt()));
    }
    Ok(aps)
}

/// Run every vCPU of a machine to the end of the run: `engines[0]` (the
/// bootstrap processor) on this thread, each other on a thread of its own.
/// The first vCPU to end the run decides its outcome.
pub fn run_machine(engines: &mut [Engine]) -> RunOutcome {
    let Some(machine) = engines.first().and_then(|e| e.vcpu.as_ref()).map(|v| v.machine.clone()) else {
        return match engines.first_mut() {
            Some(e) => e.run(),
            None => RunOutcome::InternalError("a machine without CPUs".into()),
        };
    };
    let first: Mutex<Option<RunOutcome>> = Mutex::new(None);
    let finish = |out: RunOutcome| {
        if out != RunOutcome::Stopped {
            let mut f = lock(&first);
            if f.is_none() {
                *f = Some(out);
            }
        }
        machine.stop_all();
    };
    let (bsp, aps) = engines.split_at_mut(1);
    std::thread::scope(|s| {
        for (k, e) in aps.iter_mut().enumerate() {
            let spawned =
                std::thread::Builder::new().name(format!("vcpu{}", k + 1)).spawn_scoped(s, || finish(e.run()));
            if let Err(err) = spawned {
                finish(RunOutcome::InternalError(format!("cannot start a vCPU thread: {err}")));
            }
        }
        finish(bsp[0].run());
    });
    lock(&first).take().unwrap_or(RunOutcome::Stopped)
}
