//! btvisor: a userspace virtual machine monitor for 32-bit x86 guests that
//! runs every guest instruction as x86-64 code produced by a dynamic binary
//! translator. See ARCHITECTURE.md for the data flow.

pub mod cache;
pub mod cli;
pub mod cpu;
pub mod decode;
pub mod devices;
pub mod emit;
pub mod exec;
pub mod fastmap;
pub mod fuzz;
pub mod gdb;
pub mod guest_warn;
pub mod loader;
pub mod memory;
pub mod snippet;
pub mod translate;
pub mod vm;
