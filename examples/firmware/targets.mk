# Cortex-M targets for QEMU firmware builds. Keep in step with targets.py
# (tests/test_firmware.py checks that both say the same).
#
# Use from a Makefile:
#   QCC_FW_DIR := path/to/examples/firmware
#   QCC_TARGET := cortex-m4
#   include $(QCC_FW_DIR)/targets.mk
#   fw.elf: main.c $(QCC_FW_SRCS)
#   	$(QCC_CC) $(QCC_FW_CFLAGS) -O2 $^ $(QCC_FW_LDFLAGS) -o $@
#   run: fw.elf
#   	$(QCC_QEMU) -kernel fw.elf
#
# Defines QCC_CPU_FLAGS, QCC_QEMU_MACHINE, QCC_LINKER_SCRIPT, QCC_FW_SRCS,
# QCC_FW_CFLAGS, QCC_FW_LDFLAGS, QCC_CC and QCC_QEMU.

QCC_FW_DIR ?= $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
QCC_TARGET ?= cortex-m4

QCC_CPU_FLAGS_cortex-m0      := -mcpu=cortex-m0 -mthumb -mfloat-abi=soft
QCC_QEMU_MACHINE_cortex-m0   := mps2-an385
QCC_LINKER_SCRIPT_cortex-m0  := mps2.ld

QCC_CPU_FLAGS_cortex-m0plus     := -mcpu=cortex-m0plus -mthumb -mfloat-abi=soft
QCC_QEMU_MACHINE_cortex-m0plus  := mps2-an385
QCC_LINKER_SCRIPT_cortex-m0plus := mps2.ld

QCC_CPU_FLAGS_cortex-m3      := -mcpu=cortex-m3 -mthumb -mfloat-abi=soft
QCC_QEMU_MACHINE_cortex-m3   := mps2-an385
QCC_LINKER_SCRIPT_cortex-m3  := mps2.ld

QCC_CPU_FLAGS_cortex-m4      := -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16
QCC_QEMU_MACHINE_cortex-m4   := mps2-an386
QCC_LINKER_SCRIPT_cortex-m4  := mps2.ld

QCC_CPU_FLAGS_cortex-m7      := -mcpu=cortex-m7 -mthumb -mfloat-abi=hard -mfpu=fpv5-d16
QCC_QEMU_MACHINE_cortex-m7   := mps2-an500
QCC_LINKER_SCRIPT_cortex-m7  := mps2.ld

QCC_CPU_FLAGS_cortex-m33     := -mcpu=cortex-m33 -mthumb -mfloat-abi=hard -mfpu=fpv5-sp-d16
QCC_QEMU_MACHINE_cortex-m33  := mps2-an505
QCC_LINKER_SCRIPT_cortex-m33 := mps2-an505.ld

QCC_CPU_FLAGS_cortex-m55     := -mcpu=cortex-m55 -mthumb -mfloat-abi=hard -mfpu=auto
QCC_QEMU_MACHINE_cortex-m55  := mps3-an547
QCC_LINKER_SCRIPT_cortex-m55 := mps3-an547.ld

QCC_CPU_FLAGS     := $(QCC_CPU_FLAGS_$(QCC_TARGET))
QCC_QEMU_MACHINE  := $(QCC_QEMU_MACHINE_$(QCC_TARGET))
QCC_LINKER_SCRIPT := $(QCC_FW_DIR)/$(QCC_LINKER_SCRIPT_$(QCC_TARGET))

ifeq ($(QCC_CPU_FLAGS),)
$(error unknown QCC_TARGET '$(QCC_TARGET)'; known: cortex-m0 cortex-m0plus cortex-m3 cortex-m4 cortex-m7 cortex-m33 cortex-m55)
endif

QCC_CC     ?= arm-none-eabi-gcc
QCC_FW_SRCS   := $(QCC_FW_DIR)/startup.c $(QCC_FW_DIR)/semihost_io.c
QCC_FW_CFLAGS := $(QCC_CPU_FLAGS) -std=c99 -ffunction-sections -fdata-sections -I$(QCC_FW_DIR)
QCC_FW_LDFLAGS := $(QCC_CPU_FLAGS) --specs=rdimon.specs -nostartfiles \
                  -L$(QCC_FW_DIR) -T$(QCC_LINKER_SCRIPT) -Wl,--gc-sections
QCC_QEMU := qemu-system-arm -M $(QCC_QEMU_MACHINE) -nographic -monitor none \
            -semihosting-config enable=on,target=native

# `make print-VAR` shows a variable; the tests read the flags this way.
print-%:
	@echo '$($*)'
