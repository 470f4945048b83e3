#!/usr/bin/env bash
# Vendors the CSS/JS/fonts that great-expectations' Data Docs load from CDNs, from the npm
# registry, so the reports under <warehouse>/_reports/ render styled without internet.
# Idempotent: does nothing when the pinned set is already there.
set -euo pipefail
dest=${1:-.cache/report-assets}
stamp="$dest/.complete-v1"
[ -f "$stamp" ] && exit 0
command -v npm >/dev/null || { echo "npm is needed once to vendor the report assets (apt-get install npm)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
packages=(bootstrap@4.3.1 bootstrap-table@1.19.1 bootstrap-datepicker@1.9.0 @fortawesome/fontawesome-free@6.6.0
          jquery@3.7.1 popper.js@1.12.9 vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0 @forevolve/bootstrap-dark@1.1.0)
(cd "$work" && npm pack --silent "${packages[@]}" >/dev/null)
for tgz in "$work"/*.tgz; do
  name=$(basename "$tgz" .tgz)
  mkdir -p "$work/x/$name" && tar xzf "$tgz" -C "$work/x/$name"
done
x="$work/x"
v="$dest/vendor"
rm -rf "$v" && mkdir -p "$v"/{bootstrap,bootstrap-table,bootstrap-datepicker,fontawesome/css,jquery,popper,vega,bootstrap-dark}
cp "$x"/bootstrap-4.3.1/package/dist/css/bootstrap.min.css "$x"/bootstrap-4.3.1/package/dist/js/bootstrap.min.js "$v/bootstrap/"
cp "$x"/bootstrap-table-1.19.1/package/dist/bootstrap-table.min.{css,js} "$v/bootstrap-table/"
cp "$x"/bootstrap-table-1.19.1/package/dist/extensions/filter-control/bootstrap-table-filter-control.min.{css,js} "$v/bootstrap-table/"
cp "$x"/bootstrap-datepicker-1.9.0/package/dist/css/bootstrap-datepicker.min.css \
   "$x"/bootstrap-datepicker-1.9.0/package/dist/js/bootstrap-datepicker.min.js "$v/bootstrap-datepicker/"
cp "$x"/fortawesome-fontawesome-free-6.6.0/package/css/all.min.css "$v/fontawesome/css/"
cp -r "$x"/fortawesome-fontawesome-free-6.6.0/package/webfonts "$v/fontawesome/"
cp "$x"/jquery-3.7.1/package/dist/jquery.min.js "$v/jquery/"
cp "$x"/popper.js-1.12.9/package/dist/umd/popper.min.js "$v/popper/"
cp "$x"/vega-5.33.1/package/build/vega.min.js "$x"/vega-lite-5.23.0/package/build/vega-lite.min.js \
   "$x"/vega-embed-6.29.0/package/build/vega-embed.min.js "$v/vega/"
cp "$x"/forevolve-bootstrap-dark-1.1.0/package/dist/css/bootstrap-prefers-dark.css "$v/bootstrap-dark/"
touch "$stamp"
echo "report assets vendored into $dest"
