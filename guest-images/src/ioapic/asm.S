/* ioapic: the interrupt stubs (common/apic_stubs.inc), APIC vectors from 0x70. */
#define APIC_VECTOR_BASE 0x70
#include "apic_stubs.inc"
