/*
 * pmtask: hardware task switching (IA-32 SDM vol. 3 ch. 8).
 *
 * GDT: flat ring-0 code/data, TSS A (the kernel's task, loaded with LTR),
 * TSS B, the #DF task's TSS and a TSS with a limit below 0x67. Checks:
 *   jmp    JMP to TSS B: registers/EIP saved in TSS A, B's state loaded,
 *          TR, busy bits (A cleared, B set), no NT, no back link; JMP back
 *          restores A's registers from its TSS
 *   call   CALL to TSS B: back link = A, NT set in B, both busy; IRET in
 *          B returns to A and clears B's busy bit; a second CALL resumes
 *          B after its IRET
 *   int    INT 0x40 through a task gate: nested like CALL
 *   df     #GP whose gate is not present -> #DF through a task gate to the
 *          #DF task (error code 0 on its stack, back link, NT, busy bits);
 *          the #DF task repairs things and IRETs back
 *   err    JMP/CALL to a busy TSS -> #GP(sel); TSS limit < 0x67 -> #TS(sel)
 * Prints "PASS|FAIL name got X want Y", then "N passed, M failed"; exits
 * with V=M. An unexpected exception prints its frame and exits with 255.
 */
#include "rt.h"
#include "ktest.h"

#define KCODE   0x08
#define KDATA   0x10
#define TSS_A   0x18
#define TSS_B   0x20
#define TSS_DF  0x28
#define TSS_BAD 0x30
#define NGDT    7

#define NT  0x4000u
#define BUSY 0x2u        /* type bit 1 of a TSS descriptor */

extern const uint32_t stub_table[32];
extern char task_b_jmp[], task_b_call[], task_df[], after_jmp_b[], b_after_iret[];
extern char df_insn[], df_resume[];
extern volatile uint32_t recover_eip, t_regs[8], t_tr, t_efl, t_accA, t_accB, t_accDF, t_count;
extern volatile uint32_t a_regs[8], a_efl, df_err;
void do_jmp_b(void), do_call_b(void), do_int_b(void), do_df(void);
#define P(n) void n(void); extern char n##_insn[];
P(p_jmp_busy) P(p_call_busy) P(p_jmp_bad) P(p_iret_nt0)
#undef P


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
} __attribute__((packed));

struct dtr { uint16_t limit; uint32_t base; } __attribute__((packed));

uint64_t gdt[8] __attribute__((aligned(8)));   /* read by asm.S */
static uint64_t idt[256] __attribute__((aligned(8)));
static volatile struct tss tss_a, tss_b, tss_df, tss_bad;
static uint8_t stack_b[4096] __attribute__((aligned(16)));
static uint8_t stack_df[4096] __attribute__((aligned(16)));
#define STACK_B  ((uint32_t)(stack_b + sizeof stack_b))
#define STACK_DF ((uint32_t)(stack_df + sizeof stack_df))


static void set_gate(int n, uint32_t handler, uint8_t type_attr)
{
    idt[n] = (handler & 0xFFFF) | ((uint64_t)KCODE << 16) |
             ((uint64_t)type_attr << 40) | ((uint64_t)(handler >> 16) << 48);
}

static void set_task_gate(int n, uint16_t sel)
{
    idt[n] = ((uint64_t)sel << 16) | ((uint64_t)0x85 << 40);
}

static inline uint8_t acc(int sel) { return (uint8_t)(gdt[sel >> 3] >> 40); }
static inline uint32_t read_cr3(void) { uint32_t v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline uint32_t read_eflags(void) { uint32_t v; __asm__ volatile("pushfl; popl %0" : "=r"(v)); return v; }
static inline uint32_t read_tr(void) { uint32_t v = 0; __asm__ volatile("str %w0" : "+r"(v)); return v; }

static void init_task(volatile struct tss *t, uint32_t eip, uint32_t esp)
{
    memset((void *)t, 0, sizeof *t);
    t->cr3 = read_cr3();
    t->eip = eip;
    t->eflags = 0x2;
    t->esp = esp;
    t->cs = KCODE;
    t->ds = t->es = t->fs = t->gs = t->ss = KDATA;
    t->eax = 0xB1000000; t->ebx = 0xB1000001; t->ecx = 0xB1000002; t->edx = 0xB1000003;
    t->esi = 0xB1000004; t->edi = 0xB1000005; t->ebp = 0xB1000006;
    t->iomap = sizeof *t;
}

static void setup(void)
{
    gdt[0] = 0;
    gdt[KCODE >> 3] = desc(0, 0xFFFFF, 0x9A, 0xC);
    gdt[KDATA >> 3] = desc(0, 0xFFFFF, 0x92, 0xC);
    gdt[TSS_A >> 3] = desc((uint32_t)&tss_a, sizeof(struct tss) - 1, 0x89, 0);
    gdt[TSS_B >> 3] = desc((uint32_t)&tss_b, sizeof(struct tss) - 1, 0x89, 0);
    gdt[TSS_DF >> 3] = desc((uint32_t)&tss_df, sizeof(struct tss) - 1, 0x89, 0);
    gdt[TSS_BAD >> 3] = desc((uint32_t)&tss_bad, 0x50, 0x89, 0);
    tss_a.iomap = sizeof(struct tss);
    tss_a.cr3 = read_cr3();
    init_task(&tss_df, (uint32_t)task_df, STACK_DF);

    struct dtr g = { NGDT * 8 - 1, (uint32_t)gdt };
    __asm__ volatile("lgdt %0\n\t"
                     "ljmp $0x08, $1f\n"
                     "1:\tmovw $0x10, %%ax\n\t"
                     "movw %%ax, %%ds\n\tmovw %%ax, %%es\n\tmovw %%ax, %%fs\n\t"
                     "movw %%ax, %%gs\n\tmovw %%ax, %%ss\n\t"
                     "movw $0x18, %%ax\n\tltr %%ax\n\t"
                     "xorl %%eax, %%eax\n\tlldt %%ax"
                     :: "m"(g) : "eax", "memory");
    for (int i = 0; i < 32; i++)
        set_gate(i, stub_table[i], 0x8E);
    set_task_gate(8, TSS_DF);
    set_task_gate(0x40, TSS_B);
    struct dtr id = { sizeof idt - 1, (uint32_t)idt };
    __asm__ volatile("lidt %0" :: "m"(id) : "memory");
}

/* ---- exceptions in task A ------------------------------------------- */
struct frame {
    uint32_t es, ds, edi, esi, ebp, esp, ebx, edx, ecx, eax;
    uint32_t vec, err, eip, cs, eflags;
};
static volatile uint32_t x_vec, x_err, x_eip, nexc;

void exc_handler(struct frame *f);
void exc_handler(struct frame *f)
{
    nexc++;
    x_vec = f->vec;
    x_err = f->err;
    x_eip = f->eip;
    if (recover_eip) {
        f->eip = recover_eip;
        recover_eip = 0;
        return;
    }
    puts_serial("unexpected exception vec ");
    put_hex(f->vec);
    puts_serial(" err ");
    put_hex(f->err);
    puts_serial(" eip ");
    put_hex(f->eip);
    putc_serial('\n');
    exit(255);
}

static void reset_exc(void) { nexc = 0; x_vec = x_err = x_eip = 0xFFFFFFFF; }

/* called by the #DF task before it IRETs back to task A */
void df_fix(void);
void df_fix(void)
{
    set_gate(13, stub_table[13], 0x8E);
    tss_a.eip = (uint32_t)df_resume;
}

/* ---- groups ----------------------------------------------------------- */
static void t_setup(void)
{
    check("setup: TR after LTR", read_tr(), TSS_A);
    check("setup: TSS A busy after LTR", acc(TSS_A), 0x8B);
    check("setup: TSS B available", acc(TSS_B), 0x89);
}

static void t_jmp(void)
{
    init_task(&tss_b, (uint32_t)task_b_jmp, STACK_B);
    t_count = 0;
    do_jmp_b();
    check("jmp: task B ran once", t_count, 1);
    check("jmp: B sees TR = TSS B", t_tr, TSS_B);
    check("jmp: B EFLAGS from TSS (NT clear)", t_efl, 0x2);
    check("jmp: B EAX from TSS", t_regs[0], 0xB1000000);
    check("jmp: B EBX from TSS", t_regs[1], 0xB1000001);
    check("jmp: B ECX from TSS", t_regs[2], 0xB1000002);
    check("jmp: B EDX from TSS", t_regs[3], 0xB1000003);
    check("jmp: B ESI from TSS", t_regs[4], 0xB1000004);
    check("jmp: B EDI from TSS", t_regs[5], 0xB1000005);
    check("jmp: B EBP from TSS", t_regs[6], 0xB1000006);
    check("jmp: B ESP from TSS", t_regs[7] - STACK_B, 0);
    check("jmp: in B, TSS A descriptor available (busy cleared)", t_accA, 0x89);
    check("jmp: in B, TSS B descriptor busy", t_accB, 0x8B);
    check("jmp: B back link untouched", tss_b.link, 0);
    check("jmp: A's EIP saved = after the JMP", tss_a.eip - (uint32_t)after_jmp_b, 0);
    check("jmp: A's EAX saved in TSS A", tss_a.eax, 0xA0000001);
    check("jmp: A's EDI saved in TSS A", tss_a.edi, 0xA0000006);
    check("jmp: A's CS saved", tss_a.cs, KCODE);
    check("jmp: A's SS saved", tss_a.ss, KDATA);
    check("jmp: back in A, EAX restored", a_regs[0], 0xA0000001);
    check("jmp: back in A, EBX restored", a_regs[1], 0xA0000002);
    check("jmp: back in A, ECX restored", a_regs[2], 0xA0000003);
    check("jmp: back in A, EDX restored", a_regs[3], 0xA0000004);
    check("jmp: back in A, ESI restored", a_regs[4], 0xA0000005);
    check("jmp: back in A, EDI restored", a_regs[5], 0xA0000006);
    check("jmp: back in A, NT clear", a_efl & NT, 0);
    check("jmp: back in A, TR", read_tr(), TSS_A);
    check("jmp: back in A, TSS A busy", acc(TSS_A), 0x8B);
    check("jmp: back in A, TSS B available", acc(TSS_B), 0x89);
    check("jmp: B's EAX saved in TSS B", tss_b.eax, 0xB0000001);
}

static void t_call(void)
{
    init_task(&tss_b, (uint32_t)task_b_call, STACK_B);
    t_count = 0;
    do_call_b();
    check("call: task B ran once", t_count, 1);
    check("call: B sees TR = TSS B", t_tr, TSS_B);
    check("call: B EFLAGS NT set", t_efl, 0x2 | NT);
    check("call: B back link = TSS A", tss_b.link, TSS_A);
    check("call: in B, TSS A still busy", t_accA, 0x8B);
    check("call: in B, TSS B busy", t_accB, 0x8B);
    check("call: B EAX from TSS", t_regs[0], 0xB1000000);
    check("call: back in A after IRET, EAX restored", a_regs[0], 0xC0000001);
    check("call: back in A, NT clear", a_efl & NT, 0);
    check("call: back in A, TR", read_tr(), TSS_A);
    check("call: back in A, TSS B available", acc(TSS_B), 0x89);
    check("call: back in A, TSS A busy", acc(TSS_A), 0x8B);
    check("call: B's EIP saved = after its IRET", tss_b.eip - (uint32_t)b_after_iret, 0);
    check("call: B's saved EFLAGS has NT clear", tss_b.eflags & NT, 0);
    do_call_b();
    check("call: second CALL resumes B after its IRET", t_count, 2);
    check("call: second CALL B EAX = value it left", t_regs[0], 0xB0000002);
    check("call: second CALL back link", tss_b.link, TSS_A);
    check("call: after second CALL TR", read_tr(), TSS_A);
}

static void t_int(void)
{
    t_count = 0;
    tss_b.link = 0;
    do_int_b();
    check("int: INT 0x40 task gate ran B", t_count, 1);
    check("int: B TR", t_tr, TSS_B);
    check("int: B NT set", t_efl & NT, NT);
    check("int: B back link = TSS A", tss_b.link, TSS_A);
    check("int: in B, TSS A busy", t_accA, 0x8B);
    check("int: back in A, NT clear", a_efl & NT, 0);
    check("int: back in A, TR", read_tr(), TSS_A);
    check("int: back in A, TSS B available", acc(TSS_B), 0x89);
}

static void t_df(void)
{
    idt[13] &= ~((uint64_t)0x80 << 40);      /* #GP gate not present */
    t_count = 0;
    df_err = 0xFFFFFFFF;
    do_df();
    check("df: #DF task ran once", t_count, 1);
    check("df: error code 0 on the #DF task's stack", df_err, 0);
    check("df: #DF task ESP after popping error code", t_regs[7] - STACK_DF, 0);
    check("df: #DF task TR", t_tr, TSS_DF);
    check("df: #DF task NT set", t_efl & NT, NT);
    check("df: #DF task back link = TSS A", tss_df.link, TSS_A);
    check("df: in #DF task, TSS A busy", t_accA, 0x8B);
    check("df: in #DF task, TSS DF busy", t_accDF, 0x8B);
    check("df: back in A, TR", read_tr(), TSS_A);
    check("df: back in A, TSS DF available", acc(TSS_DF), 0x89);
    check("df: #GP gate restored by the #DF task", (uint32_t)(idt[13] >> 47) & 1, 1);
    check("df: back in A, NT clear", read_eflags() & NT, 0);
}

static void t_err(void)
{
    reset_exc(); p_jmp_busy();
    check("err: JMP to busy TSS A vector", x_vec, 13);
    check("err: JMP to busy TSS A error code", x_err, TSS_A);
    check("err: JMP to busy TSS A eip", x_eip - (uint32_t)p_jmp_busy_insn, 0);
    reset_exc(); p_call_busy();
    check("err: CALL to busy TSS A vector", x_vec, 13);
    check("err: CALL to busy TSS A error code", x_err, TSS_A);
    reset_exc(); p_jmp_bad();
    check("err: JMP to TSS with limit 0x50 vector (#TS)", x_vec, 10);
    check("err: JMP to TSS with limit 0x50 error code", x_err, TSS_BAD);
    check("err: JMP to TSS with limit 0x50 eip", x_eip - (uint32_t)p_jmp_bad_insn, 0);
    check("err: TR unchanged", read_tr(), TSS_A);
    check("err: TSS A still busy", acc(TSS_A), 0x8B);
    reset_exc(); p_iret_nt0();
    check("err: IRET with NT=0 is a plain return", nexc, 0);
}

int kmain(uint32_t magic, uint32_t info)
{
    (void)magic; (void)info;
    setup();
    t_setup();
    t_jmp();
    t_call();
    t_int();
    t_df();
    t_err();
    put_dec(n_pass); puts_serial(" passed, "); put_dec(n_fail); puts_serial(" failed\n");
    return (int)n_fail;
}
