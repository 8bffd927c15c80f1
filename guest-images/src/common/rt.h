/* Tiny runtime for the test kernels: COM1 output, number printing, exit. */
#ifndef RT_H
#define RT_H
#include <stdint.h>
#include <stddef.h>

extern uint32_t mb_magic, mb_info;

void putc_serial(char c);
void puts_serial(const char *s);
void put_hex(uint32_t v);          /* 0x%08x */
void put_dec(uint32_t v);
void put_dec64(uint64_t v);
void exit(uint32_t v) __attribute__((noreturn));
const char *mb_cmdline(void);      /* "" if none */
/* value of "key=N" in the command line, or def */
uint32_t cmdline_uint(const char *key, uint32_t def);

void *memcpy(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
#endif
