/* Multiboot v1 constants shared by start.S and the C kernels. */
#ifndef MULTIBOOT_H
#define MULTIBOOT_H
#define MB_HEADER_MAGIC     0x1BADB002
#define MB_BOOT_MAGIC       0x2BADB002 /* in EAX at entry */
#define MB_FLAG_ALIGN       (1 << 0)   /* page-align modules */
#define MB_FLAG_MEMINFO     (1 << 1)   /* want mem_lower/mem_upper */
#define MB_FLAG_AOUT_KLUDGE (1 << 16)  /* header carries load addresses */
/* info structure offsets / flags */
#define MBI_FLAGS      0
#define MBI_MEM_LOWER  4
#define MBI_MEM_UPPER  8
#define MBI_CMDLINE    16
#define MBI_HAS_MEM     (1 << 0)
#define MBI_HAS_CMDLINE (1 << 2)
#endif
