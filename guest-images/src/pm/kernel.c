/*
 * pm: IA-32 protected-mode system architecture as a guest sees it.
 *
 * The kernel builds its own GDT (flat ring 0/3 code+data, a 32-bit TSS with
 * an I/O permission bitmap, a byte-granular data segment based at 0x200000,
 * an expand-down segment, a 16-bit code segment, a not-present segment, a
 * conforming code segment, ...), reloads every segment register, LTR, and
 * an IDT (vectors 0-31 interrupt gates, 0x80 interrupt gate DPL 3, 0x81 trap
 * gate DPL 0, 0x82 DPL 3 = "return from ring 3"). The handler logs vector,
 * error code, saved EIP/CS/EFLAGS(/ESP/SS from ring 3), the handler's own
 * ESP, CS and EFLAGS, and resumes at recover_eip when a probe armed it.
 * Groups:
 *   setup  GDT/TR after the loads (accessed and busy bits)
 *   exc    #DE #UD #BP #OF #BR #DB(ICEBP) #GP(sel) #NP(sel) #SS(sel) (MOV
 *          SS / POP SS of a not-present data segment) vectors, error
 *          codes, saved EIPs
 *   int    INT 0x80 from ring 0 and 3 (stack switch to TSS.ESP0, saved
 *          SS:ESP, CPL, IF in interrupt vs trap gates)
 *   ring3  what ring 3 sees: CS/SS, PUSHF, POPF IF/IOPL, SMSW, STR, SLDT,
 *          SGDT/SIDT, LAR/LSL/VERR/VERW, privileged instructions -> #GP
 *   seg    base, expand-down (accesses above the limit), null selector
 *          load, hidden descriptor cache (base and limit)
 *   io     IN/OUT at ring 3: IOPL 0 without/with I/O bitmap, IOPL 3
 *   far    far CALL/RET, far JMP into a 16-bit code segment and back
 *   msr    SYSENTER MSRs, SYSENTER/SYSEXIT
 * Not checked because QEMU (TCG) differs from the SDM: data segment limit
 * violations (#GP(0) beyond the limit / below an expand-down limit / via a
 * null selector: QEMU does not check), RDMSR of an unknown MSR (QEMU
 * returns 0 instead of #GP), ICEBP (QEMU raises #UD, not #DB), the accessed
 * bit of a CS descriptor loaded by a far JMP (QEMU does not set it).
 * Stack-segment limit violations are checked with ss=1 only (group ss:
 * PUSH/POP and [ebp+d] / SS: operands beyond a small expand-up SS limit or
 * at or below an expand-down SS limit, #SS(0) at the instruction with ESP
 * unchanged): QEMU does not check them, so that run's golden output is
 * the SDM's (every check passes), like alignment checks with ac=1.
 * Expected values follow the SDM (vol. 3 ch. 3, 5, 6, 16); output recorded
 * on QEMU. Prints "PASS|FAIL name got X want Y", then "N passed, M failed";
 * exits with V=M. An unexpected exception prints its frame and exits 255.
 */
#include "rt.h"
#include "ktest.h"

#define KCODE   0x08
#define KDATA   0x10
#define UCODE   0x1B
#define UDATA   0x23
#define TSSSEL  0x28
#define SEG200  0x30   /* data, base 0x200000, limit 0xFFFF, byte gran */
#define EXPDOWN 0x38   /* expand-down data, base 0x200000, limit 0xFFF, B=1 */
#define CODE16  0x40   /* 16-bit code, base code16_start, limit 0xFFFF */
#define NOTPRES 0x48   /* data, P=0 */
#define CONFORM 0x50   /* conforming readable code, DPL 0 */
#define CACHE   0x58   /* data, base 0x210000 (rewritten by seg: cache) */
#define ACCTEST 0x60   /* flat data, loaded once for the accessed bit */
#define USMALL  0x6B   /* ring-3 stack, base ss_area+0x1000, limit 0xFFF, B=1 */
#define UEXPDN  0x73   /* ring-3 expand-down stack, same base, limit 0xFFF, B=1 */
#define NGDT    15     /* GDT limit = NGDT*8-1: selector 0x78 is beyond */

#define IF_   0x200u
#define IOPL3 0x3000u

/* ---- asm.S ------------------------------------------------------------ */
extern const uint32_t stub_table[32], stub_80, stub_81;
extern char user_exit[], user_stack_top[], code16_start[], sysenter_entry[];
extern uint32_t code16_ptr[2];
extern volatile uint32_t recover_eip, u_exit_efl, u_exit_esp, u_res[16];
extern volatile uint16_t u_gdtr[3], u_idtr[3];
extern volatile uint32_t lar_sel, lar_res[6];
extern volatile uint32_t se_esp, se_cs, se_ss, se_efl;
extern volatile uint32_t pop_ss_esp, ss_esp[8];
extern char ss_area[];
extern char u_ss[], u_ss_push[], u_ss_pop[], u_ss_ebp[], u_ss_ovr[], u_ss_down_push[], u_ss_down_ovr[], u_ss_in[];
uint32_t run_user(void *entry, uint32_t eflags);
void lar_probe(void);
#define P(n) void n(void); extern char n##_insn[];
P(p_de) P(p_ud) P(p_bp) P(p_of) P(p_br) P(p_br_ok)
#undef P
void p_load_es(uint32_t), p_load_ds(uint32_t), p_load_ss(uint32_t), p_pop_ss(uint32_t);
extern char p_load_es_insn[], p_load_ds_insn[], p_load_ss_insn[], p_pop_ss_insn[];
uint32_t p_rd_fs(uint32_t), p_rd_gs(uint32_t);
void p_wr_fs(uint32_t, uint32_t);
uint32_t far_call_test(uint32_t *cs, uint32_t *eip);
uint32_t jmp16_test(uint32_t *bx, uint32_t *espdiff);
extern char u_ids[], u_lar[], u_priv[], u_int80[], u_int3[], u_int3_after[];
extern char u_sysenter[], u_io[], u_iobitmap[], u_io_iopl3[], u_ac[], u_ac_load[];
extern char u_priv_cr0[], u_priv_hlt[], u_priv_cli[], u_priv_sti[];
extern char u_priv_int81[], u_priv_lds[], u_priv_lgdt[], u_priv_rdmsr[];
extern char u_io_in[], u_io_out[], u_bm_out80[], u_bm_in80[], u_bm_out81[], u_bm_inw80[];

/* ---- results ---------------------------------------------------------- */

/* ---- descriptor tables ---------------------------------------------- */
struct tss {
    uint16_t link, r0;
    uint32_t esp0;
    uint16_t ss0, r1;
    uint32_t esp1;
    uint16_t ss1, r2;
    uint32_t esp2;
    uint16_t ss2, r3;
    uint32_t cr3, eip, eflags, eax, ecx, edx, ebx, esp, ebp, esi, edi;
    uint16_t es, r4, cs, r5, ss, r6, ds, r7, fs, r8, gs, r9, ldt, r10;
    uint16_t trap, iomap;
    uint8_t bitmap[8192];
    uint8_t end;                /* 0xFF after the bitmap */
} __attribute__((packed));
#define TSS_LIMIT (sizeof(struct tss) - 1)

struct dtr { uint16_t limit; uint32_t base; } __attribute__((packed));

static uint64_t gdt[16] __attribute__((aligned(8)));
static uint64_t idt[256] __attribute__((aligned(8)));
static struct tss tss __attribute__((aligned(64)));
static uint8_t exc_stack[8192] __attribute__((aligned(16)));
static uint8_t sysenter_stack[4096] __attribute__((aligned(16)));
#define ESP0 ((uint32_t)(exc_stack + sizeof exc_stack))
#define SE_ESP ((uint32_t)(sysenter_stack + sizeof sysenter_stack))


static void set_gate(int n, uint32_t handler, uint8_t type_attr)
{
    idt[n] = (handler & 0xFFFF) | ((uint64_t)KCODE << 16) |
             ((uint64_t)type_attr << 40) | ((uint64_t)(handler >> 16) << 48);
}

static inline uint8_t desc_access(int sel) { return (uint8_t)(gdt[sel >> 3] >> 40); }

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline uint32_t read_cr0(void) { uint32_t v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static inline uint32_t read_eflags(void) { uint32_t v; __asm__ volatile("pushfl; popl %0" : "=r"(v)); return v; }
static inline uint32_t read_cs(void) { uint32_t v = 0; __asm__ volatile("movw %%cs, %w0" : "+r"(v)); return v; }
static inline void wrmsr(uint32_t msr, uint64_t v)
{
    __asm__ volatile("wrmsr" :: "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}
static inline uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((uint64_t)hi << 32) | lo;
}

static void setup(void)
{
    gdt[0] = 0;
    gdt[KCODE >> 3] = desc(0, 0xFFFFF, 0x9A, 0xC);
    gdt[KDATA >> 3] = desc(0, 0xFFFFF, 0x92, 0xC);
    gdt[UCODE >> 3] = desc(0, 0xFFFFF, 0xFA, 0xC);
    gdt[UDATA >> 3] = desc(0, 0xFFFFF, 0xF2, 0xC);
    gdt[TSSSEL >> 3] = desc((uint32_t)&tss, TSS_LIMIT, 0x89, 0);
    gdt[SEG200 >> 3] = desc(0x200000, 0xFFFF, 0x92, 0x4);
    gdt[EXPDOWN >> 3] = desc(0x200000, 0xFFF, 0x96, 0x4);
    gdt[CODE16 >> 3] = desc((uint32_t)code16_start, 0xFFFF, 0x9A, 0x0);
    gdt[NOTPRES >> 3] = desc(0, 0xFFFFF, 0x12, 0xC);
    gdt[CONFORM >> 3] = desc(0, 0xFFFFF, 0x9E, 0xC);
    gdt[CACHE >> 3] = desc(0x210000, 0xFFFF, 0x92, 0x4);
    gdt[ACCTEST >> 3] = desc(0, 0xFFFFF, 0x92, 0xC);
    gdt[USMALL >> 3] = desc((uint32_t)ss_area + 0x1000, 0xFFF, 0xF2, 0x4);
    gdt[UEXPDN >> 3] = desc((uint32_t)ss_area + 0x1000, 0xFFF, 0xF6, 0x4);
    tss.ss0 = KDATA;
    tss.esp0 = ESP0;
    tss.iomap = 0xFFFF;                 /* beyond the limit: no bitmap */
    memset(tss.bitmap, 0xFF, sizeof tss.bitmap);
    tss.end = 0xFF;

    struct dtr g = { NGDT * 8 - 1, (uint32_t)gdt };
    __asm__ volatile("lgdt %0\n\t"
                     "ljmp $0x08, $1f\n"
                     "1:\tmovw $0x10, %%ax\n\t"
                     "movw %%ax, %%ds\n\tmovw %%ax, %%es\n\tmovw %%ax, %%fs\n\t"
                     "movw %%ax, %%gs\n\tmovw %%ax, %%ss\n\t"
                     "movw $0x28, %%ax\n\tltr %%ax\n\t"
                     "xorl %%eax, %%eax\n\tlldt %%ax"
                     :: "m"(g) : "eax", "memory");

    for (int i = 0; i < 32; i++)
        set_gate(i, stub_table[i], 0x8E);
    set_gate(3, stub_table[3], 0xEE);   /* INT3 and INTO usable from ring 3 */
    set_gate(4, stub_table[4], 0xEE);
    set_gate(0x80, stub_80, 0xEE);      /* interrupt gate, DPL 3 */
    set_gate(0x81, stub_81, 0x8F);      /* trap gate, DPL 0 */
    set_gate(0x82, (uint32_t)user_exit, 0xEE);
    struct dtr id = { sizeof idt - 1, (uint32_t)idt };
    __asm__ volatile("lidt %0" :: "m"(id) : "memory");

    code16_ptr[0] = 0;
    code16_ptr[1] = CODE16;
    /* mask both PICs: IF=1 phases must see no IRQ */
    outb(0x21, 0xFF);
    outb(0xA1, 0xFF);
}

/* ---- exceptions ------------------------------------------------------- */
struct frame {
    uint32_t es, ds, edi, esi, ebp, esp, ebx, edx, ecx, eax;
    uint32_t vec, err, eip, cs, eflags, uesp, uss;
};

struct exc { uint32_t vec, err, eip, cs, efl, esp, ss, hesp, hcs, hefl; };
#define NLOG 16
static volatile struct exc xlog[NLOG];
static volatile uint32_t nexc;

void exc_handler(struct frame *f);
void exc_handler(struct frame *f)
{
    uint32_t i = nexc < NLOG ? nexc : NLOG - 1;
    volatile struct exc *e = &xlog[i];
    nexc++;
    e->vec = f->vec;
    e->err = f->err;
    e->eip = f->eip;
    e->cs = f->cs & 0xFFFF;
    e->efl = f->eflags;
    if (f->cs & 3) {
        e->esp = f->uesp;
        e->ss = f->uss & 0xFFFF;
    } else {
        e->esp = (uint32_t)&f->uesp;    /* interrupted ESP */
        e->ss = 0;
    }
    /* ESP when the handler was entered: below the CPU's pushes */
    int has_err = f->vec == 8 || (f->vec >= 10 && f->vec <= 14) || f->vec == 17;
    e->hesp = has_err ? (uint32_t)&f->err : (uint32_t)&f->eip;
    e->hcs = read_cs();
    e->hefl = read_eflags();
    if (recover_eip) {
        f->eip = recover_eip;
        recover_eip = 0;
        return;
    }
    if (f->vec >= 32 || f->vec == 1 || f->vec == 3 || f->vec == 4)
        return;                         /* traps: continue after */
    puts_serial("unexpected exception vec ");
    put_hex(f->vec);
    puts_serial(" err ");
    put_hex(f->err);
    puts_serial(" eip ");
    put_hex(f->eip);
    puts_serial(" cs ");
    put_hex(f->cs);
    putc_serial('\n');
    exit(255);
}

static void reset_log(void)
{
    nexc = 0;
    for (int i = 0; i < NLOG; i++)
        xlog[i].vec = 0xFFFFFFFF;
}

/* check an exception log entry: vector, error code and EIP - want_eip */
static void check_exc(const char *name, int i, uint32_t vec, uint32_t err, uint32_t want_eip)
{
    char buf[80];
    size_t n = 0;
    for (const char *s = name; *s && n < 60; s++)
        buf[n++] = *s;
    const char *sfx[3] = { " vector", " error code", " eip-expected" };
    for (int k = 0; k < 3; k++) {
        size_t m = n;
        for (const char *s = sfx[k]; *s; s++)
            buf[m++] = *s;
        buf[m] = 0;
        uint32_t got = k == 0 ? xlog[i].vec : k == 1 ? xlog[i].err : xlog[i].eip - want_eip;
        uint32_t want = k == 0 ? vec : k == 1 ? err : 0;
        check(buf, got, want);
    }
}

/* ---- groups ----------------------------------------------------------- */
static void t_setup(void)
{
    check("setup: CS after far jmp", read_cs(), KCODE);
    check("setup: kdata descriptor accessed bit", desc_access(KDATA) & 1, 1);
    check("setup: TSS descriptor busy after LTR (type)", desc_access(TSSSEL) & 0xF, 0xB);
    check("setup: untouched descriptor accessed bit clear", desc_access(ACCTEST) & 1, 0);
    uint32_t v;
    __asm__ volatile("movw $0x60, %%ax; movw %%ax, %%es; movw $0x10, %%ax; movw %%ax, %%es; xorl %0, %0; movw %%es, %w0"
                     : "=r"(v) :: "eax", "memory");
    check("setup: accessed bit set by loading ES", desc_access(ACCTEST) & 1, 1);
    uint32_t tr = 0;
    __asm__ volatile("str %w0" : "+r"(tr));
    check("setup: STR", tr, TSSSEL);
    struct dtr g, i;
    __asm__ volatile("sgdt %0; sidt %1" : "=m"(g), "=m"(i));
    check("setup: SGDT limit", g.limit, NGDT * 8 - 1);
    check("setup: SGDT base - &gdt", g.base - (uint32_t)gdt, 0);
    check("setup: SIDT limit", i.limit, 0x7FF);
    check("setup: SIDT base - &idt", i.base - (uint32_t)idt, 0);
    uint32_t cr0 = read_cr0();
    check("setup: CR0 (PE, ET)", cr0, 0x11);
}

static void t_exc(void)
{
    reset_log(); p_de();
    check_exc("exc: #DE div 0", 0, 0, 0, (uint32_t)p_de_insn);
    reset_log(); p_ud();
    check_exc("exc: #UD ud2", 0, 6, 0, (uint32_t)p_ud_insn);
    reset_log(); p_bp();
    check_exc("exc: #BP int3 (eip after)", 0, 3, 0, (uint32_t)p_bp_insn);
    reset_log(); p_of();
    check_exc("exc: #OF into, OF=1 (eip after)", 0, 4, 0, (uint32_t)p_of_insn);
    reset_log(); p_br();
    check_exc("exc: #BR bound out of range", 0, 5, 0, (uint32_t)p_br_insn);
    reset_log(); p_br_ok();
    check("exc: bound in range, no exception", nexc, 0);
    reset_log(); p_load_ds(NGDT * 8);
    check_exc("exc: mov ds, sel beyond GDT limit #GP(sel)", 0, 13, NGDT * 8, (uint32_t)p_load_ds_insn);
    reset_log(); p_load_ds(NGDT * 8 + 3);
    check_exc("exc: mov ds, sel|RPL3 beyond limit #GP(sel&~3)", 0, 13, NGDT * 8, (uint32_t)p_load_ds_insn);
    reset_log(); p_load_es(NOTPRES);
    check_exc("exc: mov es, not-present #NP(sel)", 0, 11, NOTPRES, (uint32_t)p_load_es_insn);
    reset_log(); p_load_ss(UDATA);
    check_exc("exc: mov ss, ring-3 data at ring 0 #GP(sel)", 0, 13, UDATA & ~3, (uint32_t)p_load_ss_insn);
    reset_log(); p_load_ss(0);
    check_exc("exc: mov ss, null #GP(0)", 0, 13, 0, (uint32_t)p_load_ss_insn);
    reset_log(); p_load_es(UCODE & ~3);
    check("exc: mov es, readable ring-3 code at ring 0: no exception", nexc, 0);
    reset_log(); p_load_ss(KCODE);
    check_exc("exc: mov ss, code segment #GP(sel)", 0, 13, KCODE, (uint32_t)p_load_ss_insn);
    reset_log(); p_load_ss(NOTPRES);
    check_exc("exc: mov ss, not-present data #SS(sel)", 0, 12, NOTPRES, (uint32_t)p_load_ss_insn);
    reset_log(); p_pop_ss(NOTPRES);
    check_exc("exc: pop ss, not-present data #SS(sel)", 0, 12, NOTPRES, (uint32_t)p_pop_ss_insn);
    check("exc: pop ss #SS: ESP unchanged", xlog[0].esp - pop_ss_esp, 0);
}

static void t_int(void)
{
    /* ring 0: no stack switch, 3-dword frame */
    reset_log();
    uint32_t esp_before;
    __asm__ volatile("movl %%esp, %0; int $0x80" : "=&r"(esp_before) :: "memory");
    check("int: 0x80 from ring 0 vector", xlog[0].vec, 0x80);
    check("int: 0x80 from ring 0 saved CS", xlog[0].cs, KCODE);
    check("int: 0x80 from ring 0 handler CPL", xlog[0].hcs & 3, 0);
    check("int: 0x80 from ring 0 handler ESP = ESP - 12", esp_before - xlog[0].hesp, 12);
    /* IF: interrupt gate clears it, trap gate keeps it */
    reset_log();
    uint32_t efl_after;
    __asm__ volatile("sti; int $0x80; pushfl; popl %0; cli" : "=r"(efl_after) :: "memory");
    check("int: interrupt gate, saved EFLAGS.IF", xlog[0].efl & IF_, IF_);
    check("int: interrupt gate clears IF in handler", xlog[0].hefl & IF_, 0);
    check("int: IRET restored IF=1 (interrupt gate)", efl_after & IF_, IF_);
    reset_log();
    __asm__ volatile("sti; int $0x81; pushfl; popl %0; cli" : "=r"(efl_after) :: "memory");
    check("int: 0x81 trap gate vector", xlog[0].vec, 0x81);
    check("int: trap gate keeps IF in handler", xlog[0].hefl & IF_, IF_);
    check("int: IRET restored IF=1", efl_after & IF_, IF_);
    reset_log();
    __asm__ volatile("int $0x81" ::: "memory");
    check("int: trap gate with IF=0 keeps IF=0", xlog[0].hefl & IF_, 0);

    /* ring 3 -> ring 0 through the DPL 3 interrupt gate */
    reset_log();
    uint32_t r = run_user(u_int80, 0x202);
    check("int: 0x80 from ring 3 vector", xlog[0].vec, 0x80);
    check("int: 0x80 from ring 3 saved CS", xlog[0].cs, UCODE);
    check("int: 0x80 from ring 3 saved SS", xlog[0].ss, UDATA);
    check("int: 0x80 from ring 3 saved ESP = ring-3 ESP", xlog[0].esp - u_res[0], 0);
    check("int: 0x80 from ring 3 saved EFLAGS", xlog[0].efl, 0x202);
    check("int: 0x80 from ring 3 handler CPL", xlog[0].hcs & 3, 0);
    check("int: 0x80 from ring 3 handler CS", xlog[0].hcs, KCODE);
    check("int: 0x80 from ring 3 handler ESP = ESP0 - 20", ESP0 - xlog[0].hesp, 20);
    check("int: 0x80 from ring 3 handler IF", xlog[0].hefl & IF_, 0);
    check("int: IRET to ring 3 restores ESP", u_res[1] - u_res[0], 0);
    check("int: ring-3 EAX preserved across int", u_res[2], 0x80808080);
    check("int: back at ring 3 EFLAGS at exit", u_exit_efl, 0x202);
    (void)r;
    reset_log();
    run_user(u_int3, 0x202);
    check("int: int3 from ring 3 (DPL 3 gate) vector", xlog[0].vec, 3);
    check("int: int3 from ring 3 eip after", xlog[0].eip - (uint32_t)u_int3_after, 0);
    check("int: int3 from ring 3 saved CS", xlog[0].cs, UCODE);
    check("int: int3 from ring 3 saved ESP", xlog[0].esp - u_res[0], 0);
}

static void t_ring3(void)
{
    reset_log();
    run_user(u_ids, 0x202);
    check("ring3: no exceptions", nexc, 0);
    check("ring3: mov ax, cs", u_res[0], UCODE);
    check("ring3: mov ax, ss", u_res[1], UDATA);
    check("ring3: push cs; pop", u_res[2], UCODE);
    check("ring3: pushf IF and IOPL", u_res[3] & (IF_ | IOPL3), IF_);
    check("ring3: pushf (PF from and $0xffff)", u_res[3], 0x206);
    check("ring3: popf clearing IF leaves IF", u_res[4] & IF_, IF_);
    check("ring3: popf setting IOPL leaves IOPL 0", u_res[5] & IOPL3, 0);
    check("ring3: smsw", u_res[6], read_cr0() & 0xFFFF);
    check("ring3: smsw value", u_res[6], 0x11);
    check("ring3: str", u_res[7], TSSSEL);
    check("ring3: sldt", u_res[8], 0);
    check("ring3: sgdt limit", u_gdtr[0], NGDT * 8 - 1);
    check("ring3: sgdt base - &gdt", (u_gdtr[1] | (uint32_t)u_gdtr[2] << 16) - (uint32_t)gdt, 0);
    check("ring3: sidt limit", u_idtr[0], 0x7FF);
    check("ring3: sidt base - &idt", (u_idtr[1] | (uint32_t)u_idtr[2] << 16) - (uint32_t)idt, 0);

    reset_log();
    run_user(u_priv, 0x202);
    check("ring3: privileged insns fault count", nexc, 8);
    check_exc("ring3: mov eax, cr0 #GP(0)", 0, 13, 0, (uint32_t)u_priv_cr0);
    check("ring3: #GP saved CS", xlog[0].cs, UCODE);
    check("ring3: #GP saved SS", xlog[0].ss, UDATA);
    check("ring3: #GP saved ESP", xlog[0].esp - (uint32_t)user_stack_top, 0);
    check("ring3: #GP handler ESP = ESP0 - 24", ESP0 - xlog[0].hesp, 24);
    check_exc("ring3: hlt #GP(0)", 1, 13, 0, (uint32_t)u_priv_hlt);
    check_exc("ring3: cli #GP(0)", 2, 13, 0, (uint32_t)u_priv_cli);
    check_exc("ring3: sti #GP(0)", 3, 13, 0, (uint32_t)u_priv_sti);
    check_exc("ring3: int 0x81 (DPL 0) #GP(0x81*8+2)", 4, 13, 0x81 * 8 + 2, (uint32_t)u_priv_int81);
    check_exc("ring3: mov ds, ring-0 data #GP(sel)", 5, 13, KDATA, (uint32_t)u_priv_lds + 5);
    check_exc("ring3: lgdt #GP(0)", 6, 13, 0, (uint32_t)u_priv_lgdt);
    check_exc("ring3: rdmsr #GP(0)", 7, 13, 0, (uint32_t)u_priv_rdmsr);

    /* LAR/LSL/VERR/VERW: selector, ring, lar zf/value, lsl zf/value, verr, verw */
    static const struct {
        const char *name;
        uint16_t sel;
        uint8_t ring3;
        uint8_t lar_zf; uint32_t lar;
        uint8_t lsl_zf; uint32_t lsl;
        uint8_t verr, verw;
    } lt[] = {
        { "ring 3 data",            UDATA,   1, 1, 0x00C0F300, 1, 0xFFFFFFFF, 1, 1 },
        { "ring 3 code",            UCODE,   1, 1, 0x00C0FB00, 1, 0xFFFFFFFF, 1, 0 },
        { "ring 0 code from ring 3", KCODE,  1, 0, 0xdeadbeef, 0, 0xdeadbeef, 0, 0 },
        { "ring 0 data from ring 3", KDATA,  1, 0, 0xdeadbeef, 0, 0xdeadbeef, 0, 0 },
        { "conforming code from ring 3", CONFORM, 1, 1, 0x00C09E00, 1, 0xFFFFFFFF, 1, 0 },
        { "TSS from ring 3",        TSSSEL,  1, 0, 0xdeadbeef, 0, 0xdeadbeef, 0, 0 },
        { "TSS",                    TSSSEL,  0, 1, 0x00008B00, 1, TSS_LIMIT, 0, 0 },
        { "seg 0x200000",           SEG200,  0, 1, 0x00409200, 1, 0xFFFF, 1, 1 },
        { "expand-down",            EXPDOWN, 0, 1, 0x00409600, 1, 0xFFF, 1, 1 },
        { "16-bit code",            CODE16,  0, 1, 0x00009A00, 1, 0xFFFF, 1, 0 },
        { "not present",            NOTPRES, 0, 1, 0x00C01200, 1, 0xFFFFFFFF, 1, 1 },
        { "null",                   0,       0, 0, 0xdeadbeef, 0, 0xdeadbeef, 0, 0 },
        { "beyond GDT limit",       NGDT * 8, 0, 0, 0xdeadbeef, 0, 0xdeadbeef, 0, 0 },
    };
    for (size_t i = 0; i < sizeof lt / sizeof lt[0]; i++) {
        lar_sel = lt[i].sel;
        if (lt[i].ring3)
            run_user(u_lar, 0x202);
        else
            lar_probe();
        char buf[96];
        const char *what[6] = { " LAR ZF", " LAR value", " LSL ZF", " LSL value", " VERR ZF", " VERW ZF" };
        uint32_t got[6] = { lar_res[1], lar_res[0] & 0x00F0FF00, lar_res[3], lar_res[2], lar_res[4], lar_res[5] };
        uint32_t want[6] = { lt[i].lar_zf, lt[i].lar & 0x00F0FF00, lt[i].lsl_zf, lt[i].lsl, lt[i].verr, lt[i].verw };
        for (int k = 0; k < 6; k++) {
            size_t n = 0;
            for (const char *s = "ring3: "; *s; s++) buf[n++] = *s;
            for (const char *s = lt[i].name; *s; s++) buf[n++] = *s;
            for (const char *s = what[k]; *s; s++) buf[n++] = *s;
            buf[n] = 0;
            check(buf, got[k], want[k]);
        }
    }
}

static inline uint32_t rdphys(uint32_t a) { return *(volatile uint32_t *)a; }
static inline void wrphys(uint32_t a, uint32_t v) { *(volatile uint32_t *)a = v; }

static void load_fs(uint32_t sel) { __asm__ volatile("movw %w0, %%fs" :: "r"(sel) : "memory"); }
static void load_gs(uint32_t sel) { __asm__ volatile("movw %w0, %%gs" :: "r"(sel) : "memory"); }

static void t_seg(void)
{
    load_fs(SEG200);
    wrphys(0x200010, 0);
    reset_log();
    p_wr_fs(0x10, 0xCAFEF00D);
    check("seg: write fs:0x10 (base 0x200000) lands at 0x200010", rdphys(0x200010), 0xCAFEF00D);
    wrphys(0x20FFFC, 0x12345678);
    check("seg: read fs:0xFFFC (last dword)", p_rd_fs(0xFFFC), 0x12345678);
    check("seg: no exceptions so far", nexc, 0);

    load_gs(EXPDOWN);
    wrphys(0x201000, 0x0D0D0D0D);
    wrphys(0x300000, 0x0E0E0E0E);
    reset_log();
    check("seg: expand-down read gs:0x1000 (limit+1)", p_rd_gs(0x1000), 0x0D0D0D0D);
    check("seg: expand-down read gs:0x100000", p_rd_gs(0x100000), 0x0E0E0E0E);
    check("seg: expand-down no exceptions", nexc, 0);

    /* null selector: loading it is fine */
    reset_log();
    __asm__ volatile("movw %w0, %%es" :: "r"(0) : "memory");
    check("seg: load ES with null selector: no exception", nexc, 0);
    __asm__ volatile("movw %w0, %%es" :: "r"(KDATA) : "memory");

    /* hidden descriptor cache */
    wrphys(0x210000, 0x11111111);
    wrphys(0x220000, 0x22222222);
    load_fs(CACHE);
    gdt[CACHE >> 3] = desc(0x220000, 0xFFFF, 0x92, 0x4);
    check("seg: FS uses cached base after GDT rewrite", p_rd_fs(0), 0x11111111);
    gdt[CACHE >> 3] = desc(0x210000, 0x0FFF, 0x92, 0x4);
    wrphys(0x212000, 0x33333333);
    check("seg: FS uses cached limit after GDT rewrite", p_rd_fs(0x2000), 0x33333333);
    check("seg: (no fault with cached limit)", nexc, 0);
    gdt[CACHE >> 3] = desc(0x220000, 0xFFFF, 0x92, 0x4);
    load_fs(CACHE);
    check("seg: FS reload picks up new base", p_rd_fs(0), 0x22222222);
    gdt[NOTPRES >> 3] = desc(0, 0xFFFFF, 0x12, 0xC);
    load_fs(KDATA);
    load_gs(KDATA);
}

static void t_io(void)
{
    reset_log();
    run_user(u_io, 0x202);
    check("io: ring 3 IOPL 0 no bitmap: faults", nexc, 2);
    check_exc("io: in al, 0x80 #GP(0)", 0, 13, 0, (uint32_t)u_io_in);
    check_exc("io: out 0x80, al #GP(0)", 1, 13, 0, (uint32_t)u_io_out);

    tss.iomap = 104;
    tss.bitmap[0x80 / 8] &= (uint8_t)~(1u << (0x80 % 8));
    reset_log();
    u_res[0] = u_res[1] = 0;
    run_user(u_iobitmap, 0x202);
    check("io: bitmap: faults", nexc, 2);
    check("io: bitmap allows out 0x80", u_res[0], 1);
    check("io: bitmap allows in 0x80", u_res[1], 1);
    check_exc("io: bitmap out 0x81 #GP(0)", 0, 13, 0, (uint32_t)u_bm_out81);
    check_exc("io: bitmap inw 0x80 (0x81 denied) #GP(0)", 1, 13, 0, (uint32_t)u_bm_inw80);
    tss.iomap = 0xFFFF;
    tss.bitmap[0x80 / 8] = 0xFF;

    reset_log();
    memset((void *)u_res, 0, 16);
    run_user(u_io_iopl3, 0x3202);
    check("io: IOPL 3: no faults", nexc, 0);
    check("io: IOPL 3: cli at ring 3 clears IF", u_res[0] & IF_, 0);
    check("io: IOPL 3: sti at ring 3 sets IF", u_res[1] & IF_, IF_);
    check("io: IOPL 3: in", u_res[2], 1);
    check("io: IOPL 3: out", u_res[3], 1);
    check("io: IOPL 3: IOPL seen at exit", u_exit_efl & IOPL3, IOPL3);
}

static void t_far(void)
{
    uint32_t cs = 0, eip = 0;
    check("far: lcall/lret returns", far_call_test(&cs, &eip), 0x600d);
    check("far: frame CS at [esp+4]", cs, KCODE);
    check("far: frame EIP at [esp] = return address", eip, 0);
    uint32_t bx = 0, d = 0;
    uint32_t c = jmp16_test(&bx, &d);
    check("far: 16-bit segment mov ax,0x1234; add ax,ax", bx, 0x2468);
    check("far: 16-bit push decrements ESP by 2", d, 2);
    check("far: back in 32-bit CS", c, KCODE);
}

static void t_msr(void)
{
    wrmsr(0x174, KCODE);
    wrmsr(0x175, SE_ESP);
    wrmsr(0x176, (uint32_t)sysenter_entry);
    check("msr: SYSENTER_CS", (uint32_t)rdmsr(0x174), KCODE);
    check("msr: SYSENTER_ESP", (uint32_t)rdmsr(0x175) - SE_ESP, 0);
    check("msr: SYSENTER_EIP", (uint32_t)rdmsr(0x176) - (uint32_t)sysenter_entry, 0);
    reset_log();
    se_esp = se_cs = se_ss = se_efl = 0;
    run_user(u_sysenter, 0x202);
    check("msr: sysenter no exceptions", nexc, 0);
    check("msr: sysenter ESP = SYSENTER_ESP", se_esp - SE_ESP, 0);
    check("msr: sysenter CS", se_cs, KCODE);
    check("msr: sysenter SS", se_ss, KDATA);
    check("msr: sysenter clears IF", se_efl & IF_, 0);
    check("msr: sysexit CS", u_res[1], UCODE);
    check("msr: sysexit SS", u_res[2], UDATA);
    check("msr: sysexit ESP = ECX", u_res[3] - u_res[0], 0);
    check("msr: sysexit leaves IF clear", u_res[4] & IF_, 0);
}

/* Alignment checks (ac=1 only: QEMU TCG does not implement #AC, so the
   default run, compared with QEMU, leaves them out; the expected values
   here are the SDM's). */
static void t_ac(void)
{
    uint32_t cr0 = read_cr0();
    __asm__ volatile("mov %0, %%cr0" :: "r"(cr0 | 0x40000));      /* AM */
    reset_log();
    run_user(u_ac, 0x40202);                                        /* AC */
    check("ac: ring 3, AM and AC: faults", nexc, 1);
    check_exc("ac: misaligned load #AC(0)", 0, 17, 0, (uint32_t)u_ac_load);
    reset_log();
    run_user(u_ac, 0x202);
    check("ac: EFLAGS.AC clear: no fault", nexc, 0);
    reset_log();
    uint32_t v;
    __asm__ volatile("pushfl; orl $0x40000, (%%esp); popfl; movl u_res+1, %0; pushfl; andl $~0x40000, (%%esp); popfl"
                     : "=r"(v) :: "memory", "cc");
    check("ac: ring 0 with AC: no fault", nexc, 0);
    __asm__ volatile("mov %0, %%cr0" :: "r"(cr0));
    reset_log();
    run_user(u_ac, 0x40202);
    check("ac: CR0.AM clear: no fault", nexc, 0);
}

/* Stack-segment limits (ss=1 only: QEMU TCG does not check them; the
   expected values are the SDM's, vol. 3 sec. 6.15 "#SS"). */
static void t_ss(void)
{
    static const struct { const char *name; char *insn; uint32_t ss; } t[] = {
        { "ss: push beyond the limit #SS(0)", u_ss_push, USMALL },
        { "ss: pop beyond the limit #SS(0)", u_ss_pop, USMALL },
        { "ss: load [ebp+0x10] beyond the limit #SS(0)", u_ss_ebp, USMALL },
        { "ss: store ss:[ecx-0x1000] beyond the limit #SS(0)", u_ss_ovr, USMALL },
        { "ss: expand-down push at the limit #SS(0)", u_ss_down_push, UEXPDN },
        { "ss: expand-down load ss:[ecx] below the limit #SS(0)", u_ss_down_ovr, UEXPDN },
        { "ss: expand-down load straddling the limit #SS(0)", u_ss_in, UEXPDN },
    };
    const size_t n = sizeof t / sizeof t[0];
    reset_log();
    memset((void *)u_res, 0, 16);
    run_user(u_ss, 0x202);
    check("ss: faults", nexc, n);
    check("ss: push/pop within the limit", u_res[0], 0x5555aaaa);
    check("ss: store/load within the limit", u_res[1], 0x1234);
    check("ss: expand-down push/pop above the limit", u_res[2], 0x6666bbbb);
    for (size_t i = 0; i < n; i++) {
        check_exc(t[i].name, i, 12, 0, (uint32_t)t[i].insn);
        check("ss: saved ESP unchanged", xlog[i].esp - ss_esp[i], 0);
        check("ss: saved SS", xlog[i].ss, t[i].ss);
    }
}

int kmain(uint32_t magic, uint32_t info)
{
    (void)magic; (void)info;
    setup();
    if (cmdline_uint("ac", 0)) {
        t_ac();
        put_dec(n_pass); puts_serial(" passed, "); put_dec(n_fail); puts_serial(" failed\n");
        return (int)n_fail;
    }
    if (cmdline_uint("ss", 0)) {
        t_ss();
        put_dec(n_pass); puts_serial(" passed, "); put_dec(n_fail); puts_serial(" failed\n");
        return (int)n_fail;
    }
    t_setup();
    t_exc();
    t_int();
    t_ring3();
    t_seg();
    t_io();
    t_far();
    t_msr();
    put_dec(n_pass); puts_serial(" passed, "); put_dec(n_fail); puts_serial(" failed\n");
    return (int)n_fail;
}
