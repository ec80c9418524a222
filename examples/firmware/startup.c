/*
 * Minimal Cortex-M startup for QEMU's MPS2/MPS3 boards with semihosting.
 *
 * Reset: copy .data from flash to RAM, zero .bss, enable the FPU (and MVE,
 * which shares CP10/CP11) when the build has one, open newlib's semihosting
 * stdio, run constructors, fetch the semihosting command line as argc/argv, call main, flush
 * stdio, and leave QEMU with main's return value as the process exit code.
 *
 * Exit codes: on AArch32 the plain SYS_EXIT (0x18) carries only a reason, so
 * QEMU can report 0 (ApplicationExit) or 1 (anything else). SYS_EXIT_EXTENDED
 * (0x20) takes {reason, subcode} and QEMU 7.2 exits with the subcode, which is
 * how main's return value reaches the host. Faults exit with 128 + vector.
 *
 * Linked with `--specs=rdimon.specs -nostartfiles`: newlib's rdimon crt0 is
 * not used, so nothing here depends on it. This file needs no CMSIS headers.
 */
#include <stdint.h>
#include <stdio.h>

#include "semihost_io.h"

extern int main(int argc, char **argv);
extern void initialise_monitor_handles(void);
extern void __libc_init_array(void);

/* -nostartfiles drops crti/crtn, which define these; newlib's
 * __libc_init_array and exit() (through __libc_fini_array) still call them.
 * Constructors run from .init_array, so these have nothing to do. */
void _init(void) {}
void _fini(void) {}

/* Symbols defined by the linker scripts (fw_sections.ld). */
extern uint32_t __data_load__, __data_start__, __data_end__;
extern uint32_t __bss_start__, __bss_end__;
extern uint32_t __StackTop;

#define SYS_WRITE0 0x04
#define SYS_GET_CMDLINE 0x15
#define SYS_EXIT 0x18
#define SYS_EXIT_EXTENDED 0x20
#define ADP_STOPPED_APPLICATION_EXIT 0x20026

/* The semihosting trap on M-profile is BKPT 0xAB; r0 = op, r1 = argument. */
static inline uintptr_t semihost_call(uintptr_t op, const void *arg)
{
    register uintptr_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void qcc_semihost_exit(int code)
{
    uintptr_t block[2] = {ADP_STOPPED_APPLICATION_EXIT, (uintptr_t)code};
    semihost_call(SYS_EXIT_EXTENDED, block);
    /* A host without the extended call still stops us, with 0 or 1. */
    semihost_call(SYS_EXIT, (const void *)(uintptr_t)(code == 0 ? ADP_STOPPED_APPLICATION_EXIT : 0x20023));
    for (;;) {
    }
}

/* newlib's exit() ends here after running atexit handlers and flushing. */
void _exit(int code)
{
    qcc_semihost_exit(code);
}

/* A fault must end the run, not hang QEMU until the test's timeout. */
static void fault_exit(unsigned vector)
{
    static const char msg[] = "qcc firmware: fault, exiting with 128 + vector number\n";
    semihost_call(SYS_WRITE0, msg);
    qcc_semihost_exit(128 + (int)vector);
}

static void default_handler(void)
{
    uint32_t ipsr;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    fault_exit(ipsr & 0x1ffu);
}

#define QCC_MAX_ARGS 16
static char cmdline_buf[256];
static char *argv_buf[QCC_MAX_ARGS + 1];

/* Splits the semihosting command line (QEMU: -semihosting-config arg=...). */
static int fetch_args(void)
{
    uintptr_t block[2] = {(uintptr_t)cmdline_buf, sizeof cmdline_buf - 1};
    int argc = 0;
    if (semihost_call(SYS_GET_CMDLINE, block) != 0)
        return 0;
    cmdline_buf[block[1] < sizeof cmdline_buf ? block[1] : sizeof cmdline_buf - 1] = '\0';
    for (char *p = cmdline_buf; *p && argc < QCC_MAX_ARGS;) {
        while (*p == ' ')
            *p++ = '\0';
        if (!*p)
            break;
        argv_buf[argc++] = p;
        while (*p && *p != ' ')
            p++;
    }
    argv_buf[argc] = NULL;
    return argc;
}

void reset_handler(void)
{
    uint32_t *src = &__data_load__;
    for (uint32_t *dst = &__data_start__; dst < &__data_end__;)
        *dst++ = *src++;
    for (uint32_t *dst = &__bss_start__; dst < &__bss_end__;)
        *dst++ = 0;

#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
    /* CPACR: full access to CP10 and CP11 (FPU and MVE). Until this is set,
     * the first VFP instruction (even in newlib's printf) takes a UsageFault. */
    volatile uint32_t *cpacr = (volatile uint32_t *)0xE000ED88u;
    *cpacr |= (0xFu << 20);
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif

    initialise_monitor_handles();
    __libc_init_array();
    int argc = fetch_args();
    int rc = main(argc, argv_buf);
    fflush(NULL);
    qcc_semihost_exit(rc);
}

typedef void (*vector_fn)(void);

/* Core exception vectors only: the harness enables no device interrupts.
 * Every fault ends the run through default_handler instead of hanging. */
__attribute__((section(".vectors"), used)) const vector_fn qcc_vector_table[16] = {
    (vector_fn)(uintptr_t)&__StackTop,
    reset_handler,
    default_handler, /* NMI */
    default_handler, /* HardFault */
    default_handler, /* MemManage */
    default_handler, /* BusFault */
    default_handler, /* UsageFault */
    default_handler, /* SecureFault (v8-M) */
    0, 0, 0,
    default_handler, /* SVCall */
    default_handler, /* DebugMonitor */
    0,
    default_handler, /* PendSV */
    default_handler, /* SysTick */
};
