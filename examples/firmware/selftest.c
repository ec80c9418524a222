/*
 * Firmware harness self-test: exercises everything a generated model test
 * relies on. Usage (semihosting argv): selftest.elf <records.bin> <out.bin>
 *   - .data and .bss are set up (an initialised table and a zeroed array);
 *   - float arithmetic runs (traps unless startup enabled the FPU);
 *   - printf reaches the host's stdout;
 *   - a host file of 4-byte records is read with fopen/fread, one hex line
 *     per record echoes it with each byte plus one;
 *   - a host file is written with the byte sum of the input;
 *   - the exit code 3 reaches the host.
 */
#include <stdint.h>
#include <stdio.h>

#include "semihost_io.h"

static const int32_t primes[8] = {2, 3, 5, 7, 11, 13, 17, 19};
static int32_t scratch[64]; /* .bss: must read back as zeros */
static volatile float gain = 1.5f; /* volatile: keep the float math at run time */

int main(int argc, char **argv)
{
    int32_t sum = 0;
    for (int i = 0; i < 8; i++)
        sum += primes[i] * primes[i] + scratch[i * 8];
    printf("sum of squares %ld\n", (long)sum);

    float f = gain * (float)sum;
    printf("scaled %ld\n", (long)(f * 2.0f));

    if (argc < 3) {
        printf("usage: selftest <records.bin> <out.bin>\n");
        return 2;
    }
    FILE *in = qcc_open_input(argv[1]);
    if (!in) {
        printf("cannot open %s\n", argv[1]);
        return 2;
    }
    uint8_t rec[4];
    uint32_t byte_sum = 0;
    int n = 0, status;
    while ((status = qcc_read_record(in, rec, sizeof rec)) == 1) {
        for (unsigned i = 0; i < sizeof rec; i++) {
            byte_sum += rec[i];
            rec[i] = (uint8_t)(rec[i] + 1);
        }
        qcc_print_hex("rec", rec, sizeof rec);
        n++;
    }
    fclose(in);
    printf("records %d status %d\n", n, status);
    if (qcc_write_file(argv[2], &byte_sum, sizeof byte_sum) != 0) {
        printf("cannot write %s\n", argv[2]);
        return 2;
    }
    return 3;
}
