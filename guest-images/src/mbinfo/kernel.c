/*
 * mbinfo: where the boot loader put the Multiboot information, compared
 * with QEMU's placement: the structure's address and flags, the command
 * line, the boot loader name's address, the module list and each module
 * (start, end, string, first bytes).
 * Run with modules: -initrd "FILE ARGS,FILE" (tests/boot_images.rs).
 */
#include "rt.h"

static uint32_t rd(uint32_t a) { return *(volatile uint32_t *)a; }

static void field(const char *name, uint32_t v)
{
    puts_serial(name);
    put_hex(v);
    putc_serial('\n');
}

int kmain(uint32_t magic, uint32_t info)
{
    field("magic ", magic);
    field("info ", info);
    field("flags ", rd(info));
    field("cmdline at ", rd(info + 16));
    puts_serial("cmdline \"");
    puts_serial((const char *)rd(info + 16));
    puts_serial("\"\n");
    /* (Its text differs: "qemu" or "btvisor"; it is the last string.) */
    field("loader name at ", rd(info + 64));
    field("mmap at ", rd(info + 48));
    uint32_t n = rd(info + 20), list = rd(info + 24);
    field("mods_count ", n);
    field("mods_addr ", list);
    for (uint32_t k = 0; k < n; k++) {
        uint32_t e = list + 16 * k;
        field("  mod_start ", rd(e));
        field("  mod_end ", rd(e + 4));
        field("  string at ", rd(e + 8));
        puts_serial("  string \"");
        puts_serial((const char *)rd(e + 8));
        puts_serial("\"\n");
        field("  first dword ", rd(rd(e)));
    }
    return 0;
}
