"""Flash image model: layouts, validation and hashes."""

from __future__ import annotations

from fbuild_watch.image.esp_image import AppDescriptor, EspImage, parse_image
from fbuild_watch.image.layout import (
    APP,
    BOOTLOADER,
    OTADATA,
    PARTITION_TABLE,
    FlashLayout,
    Region,
    ValidatedLayout,
)
from fbuild_watch.image.loaders import (
    load_arduino_dir,
    load_flasher_args,
    load_idedata,
    load_layout,
    load_pairs,
)
from fbuild_watch.image.partitions import Partition, PartitionTable, parse_partition_table

__all__ = [
    "APP",
    "BOOTLOADER",
    "OTADATA",
    "PARTITION_TABLE",
    "AppDescriptor",
    "EspImage",
    "FlashLayout",
    "Partition",
    "PartitionTable",
    "Region",
    "ValidatedLayout",
    "load_arduino_dir",
    "load_flasher_args",
    "load_idedata",
    "load_layout",
    "load_pairs",
    "parse_image",
    "parse_partition_table",
]
