/* Freestanding runtime. Only IN/OUT on COM1 and the debug-exit port. */
#include "rt.h"
#include "multiboot.h"

#define COM1     0x3F8
#define COM1_LSR (COM1 + 5)
#define LSR_THRE 0x20
#define EXIT_PORT 0xF4

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }

void putc_serial(char c)
{
    /* Poll THRE before each byte, like a real driver would. */
    while (!(inb(COM1_LSR) & LSR_THRE))
        ;
    outb(COM1, (uint8_t)c);
}

void puts_serial(const char *s)
{
    while (*s)
        putc_serial(*s++);
}

void put_hex(uint32_t v)
{
    static const char digits[] = "0123456789abcdef";
    puts_serial("0x");
    for (int i = 28; i >= 0; i -= 4)
        putc_serial(digits[(v >> i) & 15]);
}

void put_dec64(uint64_t v)
{
    char buf[24];
    int n = 0;
    do {
        /* 64-bit division would need libgcc; split into 32-bit steps. */
        uint32_t hi = (uint32_t)(v >> 32), lo = (uint32_t)v;
        uint32_t qhi = hi / 10, r = hi % 10;
        uint64_t t = ((uint64_t)r << 32) | lo;
        /* t < 10 * 2^32, so do long division on 16-bit halves */
        uint32_t t1 = (uint32_t)(t >> 16);            /* < 10*2^16 */
        uint32_t q1 = t1 / 10, r1 = t1 % 10;
        uint32_t t2 = (r1 << 16) | (lo & 0xFFFF);
        uint32_t q2 = t2 / 10, r2 = t2 % 10;
        v = ((uint64_t)qhi << 32) | ((uint64_t)q1 << 16) | q2;
        buf[n++] = (char)('0' + r2);
    } while (v);
    while (n)
        putc_serial(buf[--n]);
}

void put_dec(uint32_t v) { put_dec64(v); }

void exit(uint32_t v)
{
    /* isa-debug-exit: process exits with (v << 1) | 1 */
    outl(EXIT_PORT, v);
    for (;;)
        ;
}

const char *mb_cmdline(void)
{
    const uint32_t *mbi = (const uint32_t *)mb_info;
    if (mb_magic != MB_BOOT_MAGIC || !mbi)
        return "";
    if (!(mbi[MBI_FLAGS / 4] & MBI_HAS_CMDLINE) || !mbi[MBI_CMDLINE / 4])
        return "";
    return (const char *)mbi[MBI_CMDLINE / 4];
}

uint32_t cmdline_uint(const char *key, uint32_t def)
{
    const char *s = mb_cmdline();
    size_t klen = 0;
    while (key[klen])
        klen++;
    /* match key only at the start of a space-separated word */
    for (const char *p = s; *p; p++) {
        if (p != s && p[-1] != ' ')
            continue;
        size_t i = 0;
        while (i < klen && p[i] == key[i])
            i++;
        if (i == klen && p[i] == '=') {
            const char *q = p + i + 1;
            uint32_t v = 0;
            int any = 0;
            while (*q >= '0' && *q <= '9') {
                v = v * 10 + (uint32_t)(*q++ - '0');
                any = 1;
            }
            return any ? v : def;
        }
    }
    return def;
}

/* gcc may emit calls to these even when freestanding. */
void *memcpy(void *d, const void *s, size_t n)
{
    uint8_t *dp = d;
    const uint8_t *sp = s;
    while (n--)
        *dp++ = *sp++;
    return d;
}

void *memmove(void *d, const void *s, size_t n)
{
    uint8_t *dp = d;
    const uint8_t *sp = s;
    if (dp < sp)
        while (n--)
            *dp++ = *sp++;
    else
        while (n--)
            dp[n] = sp[n];
    return d;
}

void *memset(void *d, int c, size_t n)
{
    uint8_t *dp = d;
    while (n--)
        *dp++ = (uint8_t)c;
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x - *y;
    return 0;
}
