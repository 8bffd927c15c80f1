/*
 * pmdebug: debug exceptions (IA-32 SDM vol. 3 ch. 17).
 *   ss   EFLAGS.TF set by POPF: one #DB trap per instruction, starting after
 *        the instruction following the POPF, saved EIPs step through the
 *        sequence (including a taken JMP and the POPF that clears TF),
 *        DR6.BS, TF clear inside the handler
 *   bp   DR0 execution breakpoint (DR7.L0, R/W0=00, LEN0=00): #DB fault
 *        before the instruction, DR6.B0, saved EFLAGS.RF=0; the handler sets
 *        RF so resuming does not re-trigger; triggers again on the next
 *        call; disabled by DR7
 *   wp   DR1 data write breakpoint (R/W1=01, LEN1=11): #DB trap after the
 *        write, DR6.B1
 * Prints "PASS|FAIL name got X want Y", then "N passed, M failed"; exits
 * with V=M. An unexpected exception prints its frame and exits with 255.
 */
#include "rt.h"
#include "ktest.h"

#define KCODE 0x08
#define TF 0x100u
#define RF 0x10000u
#define DR6_B0 0x1u
#define DR6_B1 0x2u
#define DR6_BS 0x4000u
#define DR6_MASK 0xE00Fu        /* BD BS BT B3..B0 */

extern const uint32_t stub_table[32];
extern char ss_i1[], ss_i2[], ss_i3[], ss_i4[], ss_i5[], ss_i6[], ss_i7[], ss_i8[], ss_i9[];
extern char bp_insn[], wp_insn[], wp_after[];
void ss_run(void);
uint32_t bp_fn(void);
void wp_fn(volatile uint32_t *p);


struct dtr { uint16_t limit; uint32_t base; } __attribute__((packed));
static uint64_t gdt[3] __attribute__((aligned(8)));
static uint64_t idt[32] __attribute__((aligned(8)));


static inline uint32_t read_dr6(void) { uint32_t v; __asm__ volatile("mov %%dr6, %0" : "=r"(v)); return v; }
static inline uint32_t read_dr7(void) { uint32_t v; __asm__ volatile("mov %%dr7, %0" : "=r"(v)); return v; }
static inline void write_dr0(uint32_t v) { __asm__ volatile("mov %0, %%dr0" :: "r"(v)); }
static inline void write_dr1(uint32_t v) { __asm__ volatile("mov %0, %%dr1" :: "r"(v)); }
static inline void write_dr6(uint32_t v) { __asm__ volatile("mov %0, %%dr6" :: "r"(v)); }
static inline void write_dr7(uint32_t v) { __asm__ volatile("mov %0, %%dr7" :: "r"(v)); }
static inline uint32_t read_eflags(void) { uint32_t v; __asm__ volatile("pushfl; popl %0" : "=r"(v)); return v; }

static void setup(void)
{
    gdt[1] = desc(0, 0xFFFFF, 0x9A, 0xC);
    gdt[2] = desc(0, 0xFFFFF, 0x92, 0xC);
    struct dtr g = { sizeof gdt - 1, (uint32_t)gdt };
    __asm__ volatile("lgdt %0\n\t"
                     "ljmp $0x08, $1f\n"
                     "1:\tmovw $0x10, %%ax\n\t"
                     "movw %%ax, %%ds\n\tmovw %%ax, %%es\n\tmovw %%ax, %%fs\n\t"
                     "movw %%ax, %%gs\n\tmovw %%ax, %%ss"
                     :: "m"(g) : "eax", "memory");
    for (int i = 0; i < 32; i++) {
        uint32_t h = stub_table[i];
        idt[i] = (h & 0xFFFF) | ((uint64_t)KCODE << 16) | ((uint64_t)0x8E << 40) |
                 ((uint64_t)(h >> 16) << 48);
    }
    struct dtr id = { sizeof idt - 1, (uint32_t)idt };
    __asm__ volatile("lidt %0" :: "m"(id) : "memory");
}

struct frame {
    uint32_t es, ds, edi, esi, ebp, esp, ebx, edx, ecx, eax;
    uint32_t vec, err, eip, cs, eflags;
};
#define NLOG 16
static volatile uint32_t db_eip[NLOG], db_dr6[NLOG], db_efl[NLOG], db_hefl[NLOG], ndb;

void exc_handler(struct frame *f);
void exc_handler(struct frame *f)
{
    if (f->vec != 1) {
        puts_serial("unexpected exception vec ");
        put_hex(f->vec);
        puts_serial(" eip ");
        put_hex(f->eip);
        putc_serial('\n');
        exit(255);
    }
    uint32_t i = ndb < NLOG ? ndb : NLOG - 1;
    uint32_t dr6 = read_dr6();
    db_eip[i] = f->eip;
    db_dr6[i] = dr6 & DR6_MASK;
    db_efl[i] = f->eflags;
    db_hefl[i] = read_eflags();
    ndb++;
    write_dr6(0);                       /* DR6 bits are sticky */
    if (dr6 & 0xF)                      /* breakpoint fault: resume with RF */
        f->eflags |= RF;
    if (ndb > 40)
        f->eflags &= ~TF;               /* runaway guard */
}

static void reset_log(void)
{
    ndb = 0;
    for (int i = 0; i < NLOG; i++)
        db_eip[i] = db_dr6[i] = db_efl[i] = 0xFFFFFFFF;
}

static void t_ss(void)
{
    write_dr6(0);
    reset_log();
    ss_run();
    static char *const want[] = { ss_i2, ss_i3, ss_i4, ss_i6, ss_i7, ss_i8, ss_i9 };
    check("ss: number of single-step traps", ndb, 7);
    static const char *const nm[] = {
        "ss: trap 1 eip (after nop following popf)", "ss: trap 2 eip (after mov)",
        "ss: trap 3 eip (after add)", "ss: trap 4 eip (jmp target)",
        "ss: trap 5 eip (after pushf)", "ss: trap 6 eip (after and)",
        "ss: trap 7 eip (after popf clearing TF)",
    };
    for (int i = 0; i < 7; i++)
        check(nm[i], db_eip[i] - (uint32_t)want[i], 0);
    check("ss: DR6 trap 1 (BS)", db_dr6[0], DR6_BS);
    check("ss: DR6 trap 7 (BS)", db_dr6[6], DR6_BS);
    check("ss: saved EFLAGS.TF trap 1", db_efl[0] & TF, TF);
    check("ss: saved EFLAGS.TF trap 7 (popf cleared it)", db_efl[6] & TF, 0);
    check("ss: TF clear in handler", db_hefl[0] & TF, 0);
    check("ss: TF clear afterwards", read_eflags() & TF, 0);
}

static void t_bp(void)
{
    write_dr6(0);
    write_dr0((uint32_t)bp_insn);
    write_dr7(0x1);                     /* L0, R/W0=00 (exec), LEN0=00 */
    check("bp: DR7 readback", read_dr7() & 0xFFFF00FF, 0x1);
    reset_log();
    uint32_t r = bp_fn();
    check("bp: one #DB", ndb, 1);
    check("bp: #DB eip = breakpointed insn (fault)", db_eip[0] - (uint32_t)bp_insn, 0);
    check("bp: DR6.B0", db_dr6[0], DR6_B0);
    check("bp: saved EFLAGS.RF clear", db_efl[0] & RF, 0);
    check("bp: instruction executed once after resume with RF", r, 15);
    check("bp: RF clear afterwards", read_eflags() & RF, 0);
    r = bp_fn();
    check("bp: second call triggers again", ndb, 2);
    check("bp: second call result", r, 15);
    write_dr7(0);
    reset_log();
    r = bp_fn();
    check("bp: DR7=0: no #DB", ndb, 0);
    check("bp: DR7=0 result", r, 15);
    write_dr7(0x2);                     /* G0 */
    reset_log();
    bp_fn();
    check("bp: G0 also enables it", ndb, 1);
    check("bp: G0 DR6.B0", db_dr6[0], DR6_B0);
    write_dr7(0);
}

static volatile uint32_t wp_var[4];

static void t_wp(void)
{
    write_dr6(0);
    write_dr1((uint32_t)&wp_var[1]);
    write_dr7(0x00D00004);              /* L1, R/W1=01 (write), LEN1=11 (4) */
    reset_log();
    wp_fn(&wp_var[1]);
    check("wp: one #DB on write", ndb, 1);
    check("wp: #DB eip = after the write (trap)", db_eip[0] - (uint32_t)wp_after, 0);
    check("wp: DR6.B1", db_dr6[0], DR6_B1);
    check("wp: value written", wp_var[1], 0x1234);
    reset_log();
    wp_fn(&wp_var[2]);
    check("wp: write elsewhere: no #DB", ndb, 0);
    reset_log();
    (void)wp_var[1];
    check("wp: read of a write-only watch: no #DB", ndb, 0);
    write_dr7(0);
}

int kmain(uint32_t magic, uint32_t info)
{
    (void)magic; (void)info;
    setup();
    t_ss();
    t_bp();
    t_wp();
    put_dec(n_pass); puts_serial(" passed, "); put_dec(n_fail); puts_serial(" failed\n");
    return (int)n_fail;
}
