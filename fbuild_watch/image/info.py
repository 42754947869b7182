"""`fbuild image info`: a report of a layout as a dict and as text."""

from __future__ import annotations

from typing import Any

from fbuild_watch.errors import ImageError
from fbuild_watch.image.chips import format_size
from fbuild_watch.image.layout import FlashLayout, ValidatedLayout
from fbuild_watch.image.settings import ResolvedFlash, resolve_flash


def _rev(full: int) -> str:
    return f"v{full // 100}.{full % 100}"


def layout_report(
    layout: FlashLayout, flash: ResolvedFlash | None = None
) -> tuple[dict[str, Any], ValidatedLayout | None]:
    """Describe the layout and validate it; never raises for invalid images.
    `flash`: the settings a deploy would use (default: what the layout's
    build says, over the defaults)."""
    validated: ValidatedLayout | None = None
    error: str | None = None
    try:
        validated = layout.validate()
    except ImageError as exc:
        error = str(exc)
    regions = []
    for r in layout.regions:
        entry: dict[str, Any] = {
            "name": r.name,
            "offset": r.offset,
            "size": r.size,
            "sha256": r.sha256,
            "file": str(r.source) if r.source else None,
            "encrypted": r.offset in layout.settings.encrypted,
        }
        img = validated.images.get(r.name) if validated else None
        if img is not None:
            entry["image"] = {
                "chip_id": img.chip_id,
                "entry": img.entry,
                "segments": [
                    {"load_addr": s.load_addr, "length": s.length, "file_offset": s.file_offset}
                    for s in img.segments
                ],
                "checksum": img.checksum,
                "appended_sha256": img.sha256,
                "min_chip_rev": _rev(img.min_rev_full),
                "max_chip_rev": _rev(img.max_rev_full) if img.max_rev_set else None,
            }
            if img.app_desc is not None:
                entry["app_desc"] = img.app_desc.as_dict()
        regions.append(entry)
    report: dict[str, Any] = {
        "source": str(layout.source) if layout.source else None,
        "chip": layout.chip,
        "flash_mode": layout.flash_mode,
        "flash_size": layout.flash_size,
        "flash_freq": layout.flash_freq,
        "regions": regions,
        "image_hash": layout.image_hash,
        "elf": str(layout.elf) if layout.elf else None,
        "valid": error is None,
        "error": error,
        "flash_settings": (flash or resolve_flash(layout.settings, environ={})).as_dict(),
    }
    if validated and validated.partition_table:
        report["partitions"] = [p.as_dict() for p in validated.partition_table.partitions]
    return report, validated


def render_text(report: dict[str, Any]) -> str:
    lines = []
    if report["source"]:
        lines.append(f"layout:     {report['source']}")
    flash = " ".join(
        x
        for x in (
            report["flash_mode"],
            format_size(report["flash_size"]) if report["flash_size"] else None,
            report["flash_freq"],
        )
        if x
    )
    lines.append(f"chip:       {report['chip']}" + (f"   flash: {flash}" if flash else ""))
    lines.append("regions:")
    for r in report["regions"]:
        lines.append(
            f"  0x{r['offset']:08x}  {r['name']:<16} {r['size']:>9} B  sha256 {r['sha256'][:16]}"
        )
    for r in report["regions"]:
        desc = r.get("app_desc")
        if desc:
            lines.append(
                f"app:        {desc['project_name']} {desc['version']}"
                f" (IDF {desc['idf_version'] or '-'}, built {desc['compile_time']},"
                f" ELF sha256 {desc['elf_sha256'][:16]})"
            )
    for p in report.get("partitions", []):
        lines.append(
            f"partition:  {p['label']:<12} {p['type']}/{p['subtype']:<8}"
            f" 0x{p['offset']:06x} {p['size']:>9} B"
        )
    fs = report.get("flash_settings")
    if fs:
        stub = "stub allowed" if fs["stub"]["value"] else "no stub"
        lines.append(
            f"flashing:   before {fs['before']['value']}, after {fs['after']['value']}, {stub}, "
            f"{fs['baud']['value']} baud"
        )
        secret = [r["name"] for r in report["regions"] if r.get("encrypted")]
        if secret:
            lines.append(f"encrypted:  {', '.join(secret)} (never written in plaintext)")
        for warning in fs["warnings"]:
            lines.append(f"warning:    {warning}")
    lines.append(f"image hash: {report['image_hash']}")
    lines.append("valid" if report["valid"] else f"INVALID: {report['error']}")
    return "\n".join(lines)
