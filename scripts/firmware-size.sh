#!/usr/bin/env bash
# Reports what a firmware build puts into flash and RAM, from the ELF's sections (`size -A`):
# the app image is every section the bootloader loads (code, read-only data, initialised
# data, the app descriptor); RAM is static data plus .bss. The OTA slot is 0x1e0000 bytes
# (firmware/partitions.csv).
set -euo pipefail
elf=$1
chip=$2
slot=$((0x1e0000))
size -A -d "$elf" | awk -v chip="$chip" -v slot="$slot" '
  $1 ~ /^\.(text|trap|rodata|rodata\..*|rwtext|rwtext\..*|data|data\..*|flash\.appdesc)$/ { image += $2 }
  $1 ~ /^\.(data|data\..*|bss|noinit)$/ { ram += $2 }
  END {
    printf "firmware %s: app image %d bytes (%.0f KiB, %.0f %% of the %d KiB OTA slot); static RAM %.0f KiB\n",
      chip, image, image / 1024, 100 * image / slot, slot / 1024, ram / 1024
  }'
