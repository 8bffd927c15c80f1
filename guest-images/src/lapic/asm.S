/* lapic: the interrupt stubs (common/apic_stubs.inc), APIC vectors from 0x40. */
#define APIC_VECTOR_BASE 0x40
#include "apic_stubs.inc"
