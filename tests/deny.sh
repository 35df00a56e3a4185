#!/usr/bin/env bash
# `make deny`: cargo-deny, pinned, installed under target/tools on first use; the RustSec advisory
# database from ../shared/advisory-db.bundle when that snapshot is beside the repository (offline
# machines), else fetched by cargo-deny.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.20.2
tools="$PWD/target/tools"
if ! "$tools/bin/cargo-deny" --version 2>/dev/null | grep -q " $version"; then
  echo "installing cargo-deny $version into $tools (once; a few minutes)" >&2
  cargo install --locked --quiet --root "$tools" cargo-deny --version "$version"
fi
export PATH="$tools/bin:$PATH"
bundle=../shared/advisory-db.bundle
if [ -f "$bundle" ]; then
  # cargo-deny's default db-path, and the folder name it derives from the default database URL.
  db="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs/advisory-db-3157b0e258782691"
  if [ ! -d "$db/.git" ]; then
    mkdir -p "$(dirname "$db")"
    git clone --quiet -b main "$bundle" "$db"
  fi
  cargo fetch --locked --quiet
  exec cargo deny --offline check
fi
exec cargo deny check
