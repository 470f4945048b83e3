"""Offline Data Docs: great-expectations pages load Bootstrap, jQuery, Font Awesome and Vega
from CDNs; this copies the vendored copies (fetched once by `make setup`) next to the pages and
points every page at them, so the reports render styled on a machine without internet."""

from __future__ import annotations

import functools
import os
import re
import shutil
from pathlib import Path

# CDN address (prefix of the URL, without query) -> file under the vendored `vendor/` folder.
LOCAL_COPIES: dict[str, str] = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap/bootstrap.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "bootstrap-table/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "bootstrap-table/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js": "bootstrap-table/bootstrap-table-filter-control.min.js",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css": "bootstrap-table/bootstrap-table-filter-control.min.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css": "bootstrap-table/bootstrap-table-filter-control.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css": "bootstrap-datepicker/bootstrap-datepicker.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js": "bootstrap-datepicker/bootstrap-datepicker.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "fontawesome/css/all.min.css",
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper/popper.min.js",
    "https://cdn.jsdelivr.net/npm/vega@5": "vega/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega/vega-embed.min.js",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css": "bootstrap-dark/bootstrap-prefers-dark.css",
}
_ASSET_ATTR = re.compile(r'(?P<attr>href|src)="(?P<url>https?://[^"]+)"')
# Remote images (the vendor logo, with a tracking query) are dropped rather than fetched.
_REMOTE_IMG = re.compile(r'<img[^>]+src="https?://[^"]+"[^>]*>')
# Subresource-integrity attributes describe the CDN copies and would block the local ones.
_INTEGRITY = re.compile(r'\s(?:integrity|crossorigin)="[^"]*"')


class MissingAssetsError(FileNotFoundError):
    pass


def _swap(match: re.Match[str], rel: str, remaining: set[str]) -> str:
    url = match.group("url")
    local = LOCAL_COPIES.get(url.split("?", 1)[0])
    if local is None:
        if match.group("attr") == "src" or url.endswith((".css", ".js")):
            remaining.add(url)
        return match.group(0)
    return f'{match.group("attr")}="{rel}/{local}"'


def localize(site_dir: str | Path, assets_dir: str | Path) -> list[str]:
    """Copy the vendored assets into `site_dir/static/vendor` and rewrite every page of the site
    to use them. Returns the CDN addresses still referenced (should be none)."""
    site, vendor = Path(site_dir), Path(assets_dir) / "vendor"
    if not vendor.is_dir():
        raise MissingAssetsError(f"{vendor} is missing: run `make setup` (it vendors the report assets)")
    target = site / "static" / "vendor"
    shutil.copytree(vendor, target, dirs_exist_ok=True)
    remaining: set[str] = set()
    for page in site.rglob("*.html"):
        rel = os.path.relpath(target, page.parent)
        text = page.read_text(encoding="utf-8")
        new = _REMOTE_IMG.sub("", text)
        new = _INTEGRITY.sub("", new)
        new = _ASSET_ATTR.sub(functools.partial(_swap, rel=rel, remaining=remaining), new)
        if new != text:
            page.write_text(new, encoding="utf-8")
    return sorted(remaining)
