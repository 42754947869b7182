/* An embedded binary asset in DROM (flash-mapped read-only data), like the
   fonts and images real firmware carries. Size set by ASSET_KB. */
    .section .rodata.asset, "a"
    .balign 4
    .global asset_blob
asset_blob:
    .incbin ASSET_FILE
    .global asset_blob_end
asset_blob_end:
