/*
 * ioapic: exception stubs (0-31), PIC vectors (0x20-0x2F) and the local
 * APIC vectors this kernel uses (0x70-0x87, 0x60, 0xFF), all
 * through one frame to isr_dispatch.
 */
#define KDATA 0x10

    .text
#include "exc_stubs.inc"
.irp v, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
STUB_NOERR \v
.endr
.irp v, 112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127,128,129,130,131,132,133,134,135,96,255
STUB_NOERR \v
.endr

#define ISR_HANDLER isr_dispatch
#include "isr_common.inc"
    .section .rodata
    .long stub32, stub33, stub34, stub35, stub36, stub37, stub38, stub39
    .long stub40, stub41, stub42, stub43, stub44, stub45, stub46, stub47
    .globl apic_stubs
apic_stubs:
    .long stub112, stub113, stub114, stub115, stub116, stub117, stub118, stub119
    .long stub120, stub121, stub122, stub123, stub124, stub125, stub126, stub127
    .long stub128, stub129, stub130, stub131, stub132, stub133, stub134, stub135
    .long stub96, stub255
