/*
 * lapic: exception stubs (0-31), PIC vectors (0x20-0x2F) and the local
 * APIC vectors this kernel uses (0x40-0x4F, 0x50-0x57, 0x60, 0xFF), all
 * through one frame to isr_dispatch.
 */
#define KDATA 0x10

    .text
#include "exc_stubs.inc"
.irp v, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
STUB_NOERR \v
.endr
.irp v, 64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,96,255
STUB_NOERR \v
.endr

#define ISR_HANDLER isr_dispatch
#include "isr_common.inc"
    .section .rodata
    .long stub32, stub33, stub34, stub35, stub36, stub37, stub38, stub39
    .long stub40, stub41, stub42, stub43, stub44, stub45, stub46, stub47
    .globl apic_stubs
apic_stubs:
    .long stub64, stub65, stub66, stub67, stub68, stub69, stub70, stub71
    .long stub72, stub73, stub74, stub75, stub76, stub77, stub78, stub79
    .long stub80, stub81, stub82, stub83, stub84, stub85, stub86, stub87
    .long stub96, stub255
