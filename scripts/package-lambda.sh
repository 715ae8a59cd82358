#!/usr/bin/env bash
# Builds the autoscaler Lambda's `bootstrap` in release mode for x86_64 Linux and zips it for the
# `provided.al2023` runtime. Prints the zip's path and size.
#
#   CARGO_TARGET_DIR   where cargo builds (default: target/ in the repo)
#   LAMBDA_ZIP         where to write the zip (default: $CARGO_TARGET_DIR/lambda/autoscaler-lambda.zip)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target_triple="x86_64-unknown-linux-gnu"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
zip_path="${LAMBDA_ZIP:-$target_dir/lambda/autoscaler-lambda.zip}"

if ! rustup target list --installed 2>/dev/null | grep -qx "$target_triple"; then
    rustup target add "$target_triple" >&2
fi

cd "$repo_root"
cargo build --release -p autoscaler-lambda --bin autoscaler-lambda --target "$target_triple" >&2

binary="$target_dir/$target_triple/release/autoscaler-lambda"
staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT
cp "$binary" "$staging/bootstrap"
chmod 755 "$staging/bootstrap"
# provided.al2023 ships glibc 2.34: refuse a binary that needs newer symbols (a build host newer than
# Debian bookworm could link some).
if command -v objdump >/dev/null 2>&1; then
    newest_glibc="$(objdump -T "$staging/bootstrap" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)"
    if [[ -n "$newest_glibc" ]] && [[ "$(printf '%s\n2.34\n' "$newest_glibc" | sort -V | tail -n 1)" != "2.34" ]]; then
        echo "package-lambda: bootstrap needs glibc $newest_glibc, but provided.al2023 has 2.34" >&2
        exit 1
    fi
fi
# Symbols are useless in Lambda and make up most of the file; strip the copy, not the build output.
if command -v strip >/dev/null 2>&1; then
    strip "$staging/bootstrap"
fi
mkdir -p "$(dirname "$zip_path")"
rm -f "$zip_path"

if command -v zip >/dev/null 2>&1; then
    (cd "$staging" && zip -q -9 "$zip_path" bootstrap)
else
    # python3's zipfile keeps the mode bits Lambda needs to execute bootstrap.
    python3 - "$staging/bootstrap" "$zip_path" <<'PY'
import sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
info = zipfile.ZipInfo.from_file(src, "bootstrap")
info.external_attr = (0o755 | 0o100000) << 16
info.compress_type = zipfile.ZIP_DEFLATED
with open(src, "rb") as f, zipfile.ZipFile(dst, "w") as z:
    z.writestr(info, f.read(), compresslevel=9)
PY
fi

size_bytes="$(stat -c %s "$zip_path")"
echo "$zip_path ($((size_bytes / 1024)) KiB; bootstrap $(($(stat -c %s "$staging/bootstrap") / 1024)) KiB unzipped)"
