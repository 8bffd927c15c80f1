/*
 * Platform-independent compute workloads. Built both into the compute
 * kernel and into the hosted native baseline, so both print identical lines.
 * Only 32-bit integer ops and exactly-representable doubles are used, so
 * results are bit-identical regardless of x87 spill/precision differences.
 */
#ifndef WORK_H
#define WORK_H
#include <stdint.h>

#define WORK_DEFAULT_ITERS 32

int work_count(void);
const char *work_name(int i);
/* Run workload i for iters rounds and return its checksum. */
uint32_t work_run(int i, uint32_t iters);
#endif
