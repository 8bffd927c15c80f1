//! Machine-wide state of a multiprocessor guest: every vCPU's link (its
//! local APIC, mailbox and kick), the code-page lock, the end of the run,
//! and IPI routing through the local APICs' register pages.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::devices::chipset::lock;
use crate::devices::lapic::{Ipi, IpiEffect, LocalApic};

/// What one vCPU asks of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Write-protect physical page (it holds code now).
    Protect(u32),
    /// Drop translations of physical page and unprotect it.
    Invalidate(u32),
    /// The INIT IPI.
    Init,
    /// The STARTUP IPI with its vector.
    Startup(u8),
}

/// One vCPU as the others see it.
pub struct VcpuLink {
    pub lapic: Arc<Mutex<LocalApic>>,
    pub(super) mailbox: Mutex<Vec<(u64, Request)>>,
    /// Sequence numbers: requests posted, and the last one served.
    pub(super) posted: AtomicU64,
    pub(super) done: AtomicU64,
    pub(super) pending: AtomicBool,
    /// An interrupt or NMI reached the vCPU's APIC since it last looked.
    pub(super) irq_kick: AtomicBool,
    /// Where the vCPU's `HotState::kick` is (0 until the vCPU runs).
    pub(super) kick_at: AtomicU64,
    /// Set by a kick; a halted vCPU sleeps on `wake_cv` until it is.
    pub(super) wake: Mutex<bool>,
    pub(super) wake_cv: Condvar,
    /// The vCPU sleeps on `wake_cv`.
    pub(super) parked: AtomicBool,
}

impl VcpuLink {
    pub(super) fn new(lapic: Arc<Mutex<LocalApic>>) -> Self {
        VcpuLink {
            lapic,
            mailbox: Mutex::new(Vec::new()),
            posted: AtomicU64::new(0),
            done: AtomicU64::new(0),
            pending: AtomicBool::new(false),
            irq_kick: AtomicBool::new(false),
            kick_at: AtomicU64::new(0),
            wake: Mutex::new(false),
            wake_cv: Condvar::new(),
            parked: AtomicBool::new(false),
        }
    }

    /// Make the vCPU look at its mailbox and APIC soon: set its kick word
    /// (translated code leaves at the next block entry; no system call, no
    /// signal) and wake it if it sleeps. The caller has already stored
    /// what the vCPU is to look at.
    pub fn kick(&self) {
        let at = self.kick_at.load(Ordering::Acquire);
        if at != 0 {
            // SAFETY: `at` is the address of the running vCPU's
            // HotState::kick (boxed, alive while it runs: cleared before its
            // engine stops running); an aligned 8-byte store, which its
            // translated code reads with plain loads.
            unsafe { AtomicU64::from_ptr(at as *mut u64) }.store(1, Ordering::SeqCst);
        }
        let mut w = lock(&self.wake);
        *w = true;
        drop(w);
        // A running vCPU sees its kick word; only a sleeping one needs
        // the (system-call) wake-up.
        if self.parked.load(Ordering::SeqCst) {
            self.wake_cv.notify_one();
        }
    }

    /// An interrupt reached the vCPU's APIC: make it look.
    pub fn kick_interrupt(&self) {
        self.irq_kick.store(true, Ordering::Release);
        self.kick();
    }

    /// Post `r`; returns its sequence number.
    pub(super) fn post(&self, r: Request) -> u64 {
        let seq = {
            let mut mb = lock(&self.mailbox);
            let seq = self.posted.fetch_add(1, Ordering::AcqRel) + 1;
            mb.push((seq, r));
            self.pending.store(true, Ordering::Release);
            seq
        };
        self.kick();
        seq
    }

    /// Sleep until kicked, at most `timeout`.
    pub(super) fn park(&self, timeout: Duration) {
        let mut w = lock(&self.wake);
        if !*w {
            // Set under the lock the kicker takes before it looks.
            self.parked.store(true, Ordering::SeqCst);
            w = match self.wake_cv.wait_timeout(w, timeout) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
            self.parked.store(false, Ordering::SeqCst);
        }
        *w = false;
    }
}

/// The state all vCPUs of a machine share.
pub struct Machine {
    pub vcpus: Vec<VcpuLink>,
    /// Orders code-page state changes (see the module comment).
    pub(super) code_lock: Mutex<()>,
    /// The run is over (one vCPU ended it): the others stop.
    pub stop: AtomicBool,
    /// vCPUs that wait with nothing that could wake them but another vCPU
    /// (halted with IF clear, or for STARTUP); when all do, the run ends.
    pub(super) idle_forever: AtomicUsize,
    /// An application processor touched a device: the bootstrap processor,
    /// which owns the chipset, must look at it.
    pub chipset_dirty: AtomicBool,
    /// More vCPUs than host CPUs this process may run on: a spinning vCPU
    /// may keep a descheduled lock holder from running, so PAUSE loops
    /// yield (`Engine::pause_spin`). Otherwise yielding only adds latency.
    pub oversubscribed: bool,
}

impl Machine {
    /// A machine whose CPU `i` has local APIC `lapics[i]`.
    pub fn new(lapics: Vec<Arc<Mutex<LocalApic>>>) -> Arc<Self> {
        let n = lapics.len();
        Arc::new(Machine {
            vcpus: lapics.into_iter().map(VcpuLink::new).collect(),
            code_lock: Mutex::new(()),
            stop: AtomicBool::new(false),
            // The application processors start waiting for STARTUP.
            idle_forever: AtomicUsize::new(n.saturating_sub(1)),
            chipset_dirty: AtomicBool::new(false),
            oversubscribed: n > std::thread::available_parallelism().map_or(1, |p| p.get()),
        })
    }

    /// End the run for every vCPU.
    pub fn stop_all(&self) {
        self.stop.store(true, Ordering::Release);
        for v in &self.vcpus {
            v.kick();
        }
    }

    /// Deliver IPIs sent by CPU `from` to every CPU they name.
    pub fn route(&self, from: usize, ipis: &[Ipi]) {
        for ipi in ipis {
            for (j, v) in self.vcpus.iter().enumerate() {
                let effect = {
                    let mut a = lock(&v.lapic);
                    if !a.targeted_by(ipi, j == from) {
                        continue;
                    }
                    a.take_ipi(ipi)
                };
                match effect {
                    IpiEffect::None => {}
                    IpiEffect::Interrupt => v.kick_interrupt(),
                    IpiEffect::Init => {
                        v.post(Request::Init);
                    }
                    IpiEffect::Startup(vector) => {
                        v.post(Request::Startup(vector));
                    }
                }
                // Lowest priority: the first CPU named takes it (all run at
                // the same priority class in practice).
                if ipi.lowest_priority() && effect == IpiEffect::Interrupt {
                    break;
                }
            }
        }
    }
}

/// A vCPU's own link to its machine.
pub struct VcpuCtx {
    pub index: usize,
    pub machine: Arc<Machine>,
    /// Waiting for STARTUP (after INIT, or an application processor from
    /// power-on).
    pub wait_sipi: bool,
    /// Counted in `Machine::idle_forever`.
    pub(super) idle_counted: bool,
}

impl VcpuCtx {
    pub fn new(index: usize, machine: Arc<Machine>) -> Self {
        let ap = index != 0;
        VcpuCtx { index, machine, wait_sipi: ap, idle_counted: ap }
    }
}

/// The local APIC's register page of one vCPU of a multiprocessor machine:
/// IPIs its ICR sends are routed to the machine's CPUs once its own lock is
/// released (two CPUs may send to each other at once).
pub struct LapicPage {
    pub index: usize,
    pub machine: Arc<Machine>,
}

impl crate::memory::MmioDevice for LapicPage {
    fn read(&mut self, offset: u32, size: u8) -> u32 {
        crate::devices::register_bytes(lock(&self.machine.vcpus[self.index].lapic).read(offset & !3), offset, size)
    }

    fn write(&mut self, offset: u32, size: u8, value: u32) {
        if size != 4 || offset & 3 != 0 {
            crate::guest_warn!("local APIC: {size}-byte write at {offset:#x} ignored (registers are 32-bit)");
            return;
        }
        let out = {
            let mut a = lock(&self.machine.vcpus[self.index].lapic);
            a.write(offset, value);
            std::mem::take(&mut a.outbox)
        };
        if !out.is_empty() {
            self.machine.route(self.index, &out);
        }
    }
}
