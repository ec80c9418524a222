/*
 * Host I/O for test firmware under QEMU semihosting.
 *
 * newlib's rdimon gives stdio on the host through semihosting: fopen() opens
 * a file relative to QEMU's working directory and printf() goes to QEMU's
 * stdout. These helpers fix one convention so a test can push many samples
 * through one firmware run:
 *   - inputs: a binary file of fixed-size records, read with qcc_read_record;
 *   - outputs: one text line per record, "<tag> <hex bytes>\n" (lower-case
 *     hex, two digits per byte, memory order), parsed on the host by
 *     targets.parse_hex_lines; or raw bytes written with qcc_write_file.
 * File names reach the firmware as argv: startup.c turns the semihosting
 * command line (QEMU: -semihosting-config ...,arg=fw.elf,arg=in.bin) into
 * main's argc/argv.
 */
#ifndef QCC_SEMIHOST_IO_H
#define QCC_SEMIHOST_IO_H

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Reads up to cap bytes of a host file. Returns the byte count, or -1 if
 * the file cannot be opened or read. */
long qcc_read_file(const char *path, void *buf, size_t cap);

/* Creates or truncates a host file and writes n bytes. Returns 0, or -1. */
int qcc_write_file(const char *path, const void *buf, size_t n);

/* Opens a host file of fixed-size binary records; NULL if it cannot. */
FILE *qcc_open_input(const char *path);

/* Reads one record of exactly n bytes. Returns 1 for a full record, 0 at a
 * clean end of file, -1 for a truncated record or a read error. */
int qcc_read_record(FILE *f, void *buf, size_t n);

/* Prints "<tag> <hex>\n" on stdout for n bytes of buf. */
void qcc_print_hex(const char *tag, const void *buf, size_t n);

/* Ends the QEMU run with this exit code (startup.c; SYS_EXIT_EXTENDED). */
void qcc_semihost_exit(int code) __attribute__((noreturn));

#ifdef __cplusplus
}
#endif

#endif /* QCC_SEMIHOST_IO_H */
