/* Host file and stdout helpers over newlib's semihosting stdio; see
 * semihost_io.h for the conventions the host side parses. */
#include "semihost_io.h"

#include <stdint.h>

long qcc_read_file(const char *path, void *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    size_t got = fread(buf, 1, cap, f);
    int failed = ferror(f);
    fclose(f);
    return failed ? -1 : (long)got;
}

int qcc_write_file(const char *path, const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t put = fwrite(buf, 1, n, f);
    int closed = fclose(f);
    return (put == n && closed == 0) ? 0 : -1;
}

FILE *qcc_open_input(const char *path)
{
    return fopen(path, "rb");
}

int qcc_read_record(FILE *f, void *buf, size_t n)
{
    size_t got = fread(buf, 1, n, f);
    if (got == n)
        return 1;
    return (got == 0 && !ferror(f)) ? 0 : -1;
}

void qcc_print_hex(const char *tag, const void *buf, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    const uint8_t *p = (const uint8_t *)buf;
    char chunk[128];
    size_t used = 0;

    /* Each semihosting write is a trap into QEMU, so write in chunks rather
     * than a printf per byte. */
    fputs(tag, stdout);
    fputc(' ', stdout);
    for (size_t i = 0; i < n; i++) {
        chunk[used++] = digits[p[i] >> 4];
        chunk[used++] = digits[p[i] & 0xf];
        if (used == sizeof chunk) {
            fwrite(chunk, 1, used, stdout);
            used = 0;
        }
    }
    chunk[used++] = '\n';
    fwrite(chunk, 1, used, stdout);
}
