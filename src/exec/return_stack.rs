//! The host return stack translated code runs on.
//!
//! A guest CALL whose target is translated becomes a host CALL and the
//! guest's RET a host RET, so the host's return-stack buffer predicts
//! guest returns as it predicts native ones (the inline jump-cache lookup
//! it replaces ends in an indirect jump). The stack holds only host return
//! addresses, each of one of two kinds:
//!
//! - a *continuation*, the host code after a translated CALL: it compares
//!   the guest's return address (R13D, popped by the RET) with the one its
//!   CALL pushed, and goes on to the return site's block, or to the
//!   return-miss stub when the guest returned elsewhere (longjmp, a
//!   retpoline, a return address it rewrote);
//! - the *sentinel* at the top, written by the trampoline at each entry: a
//!   RET with no host CALL behind it (the CALL ran before the dispatcher
//!   last entered translated code) lands on the return-miss stub, which
//!   pushes the sentinel back and looks R13D up in the jump cache.
//!
//! Why the entries stay valid: every VMM event that can change what a
//! translation means (a code write, a CR3 load, INVLPG of a code page, a
//! mode change, another vCPU's request) leaves translated code, and leaving
//! drops the whole stack (the trampoline's exits return to the dispatcher's
//! stack; each entry starts again from the sentinel). Chained code alone
//! never invalidates a translation.
//!
//! The stack is bounded: it is a mapping with an inaccessible guard page
//! below it. A guest that calls without returning (`call 1f; 1: pop`, deep
//! recursion) eventually pushes into the guard; the fault handler then
//! empties the stack (RSP back to the sentinel) and the CALL runs again.
//! Nothing but host return addresses and short push/pop pairs lives on it:
//! VMM callouts switch to the dispatcher's stack first.

use crate::memory::MemoryError;

/// Bytes of return addresses (32768 nested calls).
pub const RETURN_STACK_BYTES: usize = 256 * 1024;
/// The inaccessible page below it.
const GUARD_BYTES: usize = 4096;

/// One vCPU's return stack.
pub struct ReturnStack {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by one engine and used by its thread.
unsafe impl Send for ReturnStack {}

impl ReturnStack {
    pub fn new() -> Result<Self, MemoryError> {
        let len = RETURN_STACK_BYTES + GUARD_BYTES;
        let os = |what| MemoryError::Os { what, source: std::io::Error::last_os_error() };
        // SAFETY: a fresh anonymous mapping, owned by the returned value.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(os("mapping the host return stack"));
        }
        let stack = Self { base: base as *mut u8, len };
        // SAFETY: the first page of our own mapping becomes the guard.
        if unsafe { libc::mprotect(base, GUARD_BYTES, libc::PROT_NONE) } != 0 {
            return Err(os("protecting the return stack's guard page"));
        }
        Ok(stack)
    }

    /// The address just above the stack (16-byte aligned).
    pub fn top(&self) -> usize {
        self.base as usize + self.len
    }

    /// The guard page's address range.
    pub fn guard(&self) -> (usize, usize) {
        (self.base as usize, self.base as usize + GUARD_BYTES)
    }
}

impl Drop for ReturnStack {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping, which nothing uses any more.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}
