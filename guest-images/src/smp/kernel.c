/*
 * smp: a PC with several CPUs (QEMU and btvisor `-M pc -smp 4`), brought up
 * and exercised by the bootstrap processor (BSP). Groups:
 *   boot   the CPU count from fw_cfg; INIT, STARTUP, STARTUP to every
 *          other CPU (all-excluding-self); each application processor (AP)
 *          runs real-mode code at 0x7000, enters protected mode and checks
 *          in: which APIC IDs came up, and CPUID.1's initial APIC ID equal
 *          to each one's APIC ID register
 *   lock   every CPU adds to one counter under a LOCK CMPXCHG spinlock
 *          (a plain read-modify-write inside) and to another with LOCK
 *          XADD, 20000 times each: no update may be lost
 *   ipi    100 fixed IPIs to each AP (physical destination), each answered
 *          by an IPI back to the BSP; a logical (flat) destination naming
 *          the APs; the all-excluding-self and all-including-self
 *          shorthands
 *   tlb    with paging on every CPU (the same page directory), each reads
 *          a page mapped at 0x40000000; the BSP remaps it, invalidates its
 *          own entry and shoots the others' down with an IPI whose handler
 *          runs INVLPG: afterwards every CPU reads the new page
 *   cmc    every CPU runs a function (so it is translated on each); the
 *          BSP rewrites its immediate and raises a flag; the APs see the
 *          flag, serialise with CPUID (the SDM's cross-modifying-code
 *          protocol) and run it again: all must see the new code
 * Prints "PASS|FAIL name got X want Y", then "N passed, M failed"; exits
 * with V=M. The golden output is QEMU 7.2's.
 * With `bench=N` on the command line it only measures (scripts/
 * smp-ipi-compare.sh): N IPI round trips BSP -> CPU 1 -> BSP, and N local
 * APIC timer interrupts (one-shot, re-armed by the handler) on the BSP,
 * each printed as TSC ticks per event.
 */
#define APIC_VECTOR_BASE 0x40
#include "apic_test.h"

#define MAX_CPUS 8
#define TRAMP_VECTOR 0x07               /* STARTUP vector: code at 0x7000 */
#define TRAMP_BASE (TRAMP_VECTOR << 12)
#define V_PING 0x50
#define V_PONG 0x51
#define V_FLUSH 0x52
#define V_LOGICAL 0x53
#define V_ALL 0x54
#define ICR_INIT (5u << 8)
#define ICR_STARTUP (6u << 8)
#define ICR_LEVEL_ASSERT (1u << 14)
#define ICR_LOGICAL (1u << 11)
#define ICR_ALL_BUT_SELF (3u << 18)
#define ICR_ALL (2u << 18)
#define TLB_LIN 0x40000000u
#define ITERS 20000u

extern char tramp_start[], tramp_gdtr[], tramp_end[];
extern uint32_t cmc_func(void);
uint8_t ap_stacks[MAX_CPUS + 1][4096] __attribute__((aligned(4096)));

static uint32_t ncpu;
static volatile uint32_t started, ids_seen, cpuid_ok;
static volatile uint32_t phase, done;
static volatile uint32_t lock_word, counter_locked, counter_atomic;
static volatile uint32_t pongs, flush_acks;
static volatile uint32_t logical_cnt[MAX_CPUS], all_cnt[MAX_CPUS];
static volatile uint32_t tlb_before[MAX_CPUS], tlb_after[MAX_CPUS];
static volatile uint32_t cmc_before[MAX_CPUS], cmc_after[MAX_CPUS];
static uint32_t page_dir[1024] __attribute__((aligned(4096)));
static uint32_t page_table[1024] __attribute__((aligned(4096)));
static volatile uint32_t page_a[1024] __attribute__((aligned(4096)));
static volatile uint32_t page_b[1024] __attribute__((aligned(4096)));

enum { PH_NONE, PH_LOCK, PH_TLB_BEFORE, PH_TLB_AFTER, PH_CMC_WARM, PH_CMC_RUN };

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
}
static volatile uint32_t timer_ticks, timer_goal;
static inline void outw(uint16_t p, uint16_t v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(p)); }
static inline void pause(void) { __asm__ volatile("pause" ::: "memory"); }
static uint32_t my_id(void) { return apic_read(R_ID) >> 24; }

/* QEMU's fw_cfg: item 0x05 is the CPU count. */
static uint32_t fw_cfg_cpus(void)
{
    outw(0x510, 0x05);
    uint32_t lo = inb(0x511);
    return lo | (uint32_t)inb(0x511) << 8;
}

static void send_ipi(uint32_t dest, uint32_t lo)
{
    apic_write(R_ICR_HI, dest << 24);
    apic_write(R_ICR_LO, lo);
    while (apic_read(R_ICR_LO) & ICR_BUSY)
        pause();
}

void isr_dispatch(struct frame *f);
void isr_dispatch(struct frame *f)
{
    uint32_t v = f->vec, id = my_id() & 7;
    if (v < 0x20) {
        puts_serial("FAIL unexpected exception vec ");
        put_hex(v);
        puts_serial(" err ");
        put_hex(f->err);
        puts_serial(" eip ");
        put_hex(f->eip);
        puts_serial(" cpu ");
        put_hex(id);
        putc_serial('\n');
        exit(255);
    }
    switch (v) {
    case V_PING:
        apic_write(R_EOI, 0);
        send_ipi(0, V_PONG);
        return;
    case V_PONG:
        __sync_fetch_and_add(&pongs, 1);
        break;
    case V_FLUSH:
        __asm__ volatile("invlpg (%0)" :: "r"(TLB_LIN) : "memory");
        __sync_fetch_and_add(&flush_acks, 1);
        break;
    case V_LOGICAL:
        logical_cnt[id]++;
        break;
    case V_ALL:
        all_cnt[id]++;
        break;
    case 0x55:                          /* bench: the timer re-arms itself */
        if (++timer_ticks < timer_goal)
            apic_write(R_TMICT, 1);
        break;
    case 0xFF:
        return;
    }
    apic_write(R_EOI, 0);
}

static void spin_lock(void)
{
    while (!__sync_bool_compare_and_swap(&lock_word, 0, 1))
        while (lock_word)
            pause();
}
static void spin_unlock(void) { __sync_lock_release(&lock_word); }

static void lock_work(void)
{
    for (uint32_t i = 0; i < ITERS; i++) {
        spin_lock();
        uint32_t v = counter_locked;
        counter_locked = v + 1;
        spin_unlock();
        __sync_fetch_and_add(&counter_atomic, 1);
    }
}

static void paging_on(void)
{
    __asm__ volatile("movl %0, %%cr3\n\t"
                     "movl %%cr4, %%eax\n\torl $0x10, %%eax\n\tmovl %%eax, %%cr4\n\t"
                     "movl %%cr0, %%eax\n\torl $0x80000000, %%eax\n\tmovl %%eax, %%cr0"
                     :: "r"(page_dir) : "eax", "memory");
}

static uint32_t serialized_call(void)
{
    uint32_t a = 0, b, c = 0, d;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d) :: "memory");
    return cmc_func();
}

void ap_main(uint32_t id);
void ap_main(uint32_t id)
{
    struct dtr i = { sizeof idt - 1, (uint32_t)idt };
    __asm__ volatile("lidt %0" :: "m"(i) : "memory");
    apic_write(R_SVR, 0x1FF);
    apic_write(R_DFR, 0xFFFFFFFFu);
    apic_write(R_LDR, (1u << id) << 24);
    uint32_t a = 1, b, c = 0, d;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
    if (b >> 24 == id)
        __sync_fetch_and_or(&cpuid_ok, 1u << id);
    __sync_fetch_and_or(&ids_seen, 1u << id);
    __sync_fetch_and_add(&started, 1);
    sti();
    uint32_t seen = PH_NONE;
    for (;;) {
        uint32_t p = phase;
        if (p == seen) {
            pause();
            continue;
        }
        seen = p;
        switch (p) {
        case PH_LOCK:
            lock_work();
            break;
        case PH_TLB_BEFORE:
            paging_on();
            tlb_before[id] = *(volatile uint32_t *)TLB_LIN;
            break;
        case PH_TLB_AFTER:
            tlb_after[id] = *(volatile uint32_t *)TLB_LIN;
            break;
        case PH_CMC_WARM:
            for (int k = 0; k < 100; k++)
                cmc_before[id] = cmc_func();
            break;
        case PH_CMC_RUN:
            cmc_after[id] = serialized_call();
            break;
        }
        __sync_fetch_and_add(&done, 1);
    }
}

/* Start phase p on the APs and wait (at most a second) until all are done. */
static int run_phase(uint32_t p)
{
    done = 0;
    __sync_synchronize();
    phase = p;
    return wait_count(&done, ncpu - 1, 1000);
}

static void group_boot(void)
{
    ncpu = fw_cfg_cpus();
    check("boot cpus", ncpu, 4);
    if (ncpu > MAX_CPUS)
        ncpu = MAX_CPUS;
    memcpy((void *)TRAMP_BASE, tramp_start, (size_t)(tramp_end - tramp_start));
    struct dtr *g = (struct dtr *)(TRAMP_BASE + (tramp_gdtr - tramp_start));
    g->limit = sizeof gdt - 1;
    g->base = (uint32_t)gdt;
    send_ipi(0, ICR_ALL_BUT_SELF | ICR_INIT | ICR_LEVEL_ASSERT);
    wait_count(0, 0, 10);
    send_ipi(0, ICR_ALL_BUT_SELF | ICR_STARTUP | TRAMP_VECTOR);
    wait_count(0, 0, 1);
    send_ipi(0, ICR_ALL_BUT_SELF | ICR_STARTUP | TRAMP_VECTOR);
    ok("boot all aps started", wait_count(&started, ncpu - 1, 1000));
    check("boot started", started, ncpu - 1);
    check("boot apic ids", ids_seen, ((1u << ncpu) - 1) & ~1u);
    check("boot cpuid initial ids", cpuid_ok, ((1u << ncpu) - 1) & ~1u);
    uint32_t a = 1, b, c = 0, d;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
    check("boot bsp cpuid id", b >> 24, 0);
    check("boot bsp apic base bsp bit", (uint32_t)(rdmsr(0x1B) >> 8) & 1, 1);
}

static void group_lock(void)
{
    done = 0;
    __sync_synchronize();
    phase = PH_LOCK;
    lock_work();
    ok("lock aps done", wait_count(&done, ncpu - 1, 5000));
    check("lock cmpxchg counter", counter_locked, ncpu * ITERS);
    check("lock xadd counter", counter_atomic, ncpu * ITERS);
}

static void group_ipi(void)
{
    for (uint32_t cpu = 1; cpu < ncpu; cpu++)
        for (int k = 0; k < 100; k++) {
            uint32_t before = pongs;
            send_ipi(cpu, V_PING);
            wait_count(&pongs, before + 1, 100);
        }
    check("ipi ping pong", pongs, 100 * (ncpu - 1));
    send_ipi(0xE, ICR_LOGICAL | V_LOGICAL);
    wait_count(0, 0, 20);
    for (uint32_t cpu = 0; cpu < 4; cpu++)
        check("ipi logical flat", logical_cnt[cpu], cpu >= 1 && cpu <= 3);
    send_ipi(0, ICR_ALL_BUT_SELF | V_ALL);
    wait_count(0, 0, 20);
    send_ipi(0, ICR_ALL | V_ALL);
    wait_count(0, 0, 20);
    for (uint32_t cpu = 0; cpu < ncpu; cpu++)
        check("ipi all shorthands", all_cnt[cpu], cpu == 0 ? 1 : 2);
}

static void group_tlb(void)
{
    page_a[0] = 0xAAAA;
    page_b[0] = 0xBBBB;
    page_dir[0] = 0x000000E3u;                 /* 4 MiB at 0: P RW A D PS */
    page_dir[0xFEC00000u >> 22] = 0xFEC000F3u; /* the APICs: P RW PCD A D PS */
    page_dir[TLB_LIN >> 22] = (uint32_t)page_table | 0x23;
    page_table[0] = (uint32_t)page_a | 0x23;
    paging_on();
    ok("tlb before aps", run_phase(PH_TLB_BEFORE));
    uint32_t bsp_before = *(volatile uint32_t *)TLB_LIN;
    page_table[0] = (uint32_t)page_b | 0x23;
    __asm__ volatile("invlpg (%0)" :: "r"(TLB_LIN) : "memory");
    flush_acks = 0;
    send_ipi(0, ICR_ALL_BUT_SELF | V_FLUSH);
    ok("tlb shootdown acked", wait_count(&flush_acks, ncpu - 1, 1000));
    ok("tlb after aps", run_phase(PH_TLB_AFTER));
    check("tlb bsp before", bsp_before, 0xAAAA);
    check("tlb bsp after", *(volatile uint32_t *)TLB_LIN, 0xBBBB);
    for (uint32_t cpu = 1; cpu < ncpu; cpu++) {
        check("tlb ap before", tlb_before[cpu], 0xAAAA);
        check("tlb ap after shootdown", tlb_after[cpu], 0xBBBB);
    }
}

static void group_cmc(void)
{
    uint32_t bsp_before = 0;
    for (int k = 0; k < 100; k++)
        bsp_before = cmc_func();
    ok("cmc warm aps", run_phase(PH_CMC_WARM));
    /* mov $imm32, %eax: the immediate follows the opcode byte. */
    *(volatile uint32_t *)((char *)cmc_func + 1) = 2;
    ok("cmc run aps", run_phase(PH_CMC_RUN));
    check("cmc bsp before", bsp_before, 1);
    check("cmc bsp after", serialized_call(), 2);
    for (uint32_t cpu = 1; cpu < ncpu; cpu++) {
        check("cmc ap before", cmc_before[cpu], 1);
        check("cmc ap after", cmc_after[cpu], 2);
    }
}

/* bench=N: IPI round trips and timer interrupts, TSC ticks per event. */
static void bench(uint32_t n)
{
    uint64_t t0 = rdtsc();
    for (uint32_t k = 0; k < n; k++) {
        uint32_t before = pongs;
        send_ipi(1, V_PING);
        while (pongs == before)
            pause();
    }
    uint64_t t1 = rdtsc();
    puts_serial("ipi round trip ticks ");
    put_dec((uint32_t)(t1 - t0) / n);
    putc_serial('\n');
    apic_write(R_TDCR, 0xB);            /* divide by 1 */
    apic_write(R_LVT_TIMER, 0x55);      /* one-shot */
    timer_ticks = 0;
    timer_goal = n;
    t0 = rdtsc();
    apic_write(R_TMICT, 1);
    while (timer_ticks < n)
        pause();
    t1 = rdtsc();
    puts_serial("apic timer interrupt ticks ");
    put_dec((uint32_t)(t1 - t0) / n);
    putc_serial('\n');
}

uint32_t kmain(void);
uint32_t kmain(void)
{
    setup_descriptors();
    pic_init();
    clk_start();
    apic_write(R_SVR, 0x1FF);
    apic_write(R_DFR, 0xFFFFFFFFu);
    apic_write(R_LDR, 1u << 24);
    sti();
    uint32_t bench_n = cmdline_uint("bench", 0);
    group_boot();
    if (bench_n && started == ncpu - 1) {
        bench(bench_n);
        return 0;
    }
    if (started == ncpu - 1) {
        group_lock();
        group_ipi();
        group_tlb();
        group_cmc();
    }
    puts_serial("smp: ");
    put_dec(n_pass);
    puts_serial(" passed, ");
    put_dec(n_fail);
    puts_serial(" failed\n");
    return n_fail;
}
