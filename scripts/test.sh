#!/usr/bin/env bash
# The project's one test command: the README names it and .ci/run runs it.
# Static checks, every package's tests (with the race detector), the
# end-to-end tests against the real binary, and the cross-builds of the small
# proxy. Fails on the first error.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "tools"
command -v go >/dev/null || { echo "go is not installed: see https://go.dev/doc/install" >&2; exit 1; }
go version
# staticcheck is pinned and built from the Go module proxy into a cache
# directory outside the tree, so a clean checkout needs nothing by hand.
tools="${XDG_CACHE_HOME:-$HOME/.cache}/verge-tools"
if [ ! -x "$tools/staticcheck-v0.8.2" ]; then
  GOBIN="$tools" go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
  mv "$tools/staticcheck" "$tools/staticcheck-v0.8.2"
fi

step "test dependencies"
# Servers and tools the tests run for real: Prometheus (scrapes the mesh's
# metrics in test/e2e) and Chromium (the dashboard's browser test). They are
# Debian packages, installed here when missing (as root, which CI is); a
# test that needs one fails loudly when it is absent.
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing ${need[*]}: run as root, or: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
prometheus --version 2>&1 | head -1
chromium --version

step "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.git/*'))
if [ -n "$unformatted" ]; then echo "gofmt would change:"; echo "$unformatted"; exit 1; fi

step "go vet"
go vet ./...

step "staticcheck"
"$tools/staticcheck-v0.8.2" ./...

step "unit tests (race)"
# Tests keep what a person should be able to look at afterwards (the
# dashboard's screenshot) here.
export VERGE_ARTIFACTS_DIR="${VERGE_ARTIFACTS_DIR:-$PWD/test-artifacts}"
mkdir -p "$VERGE_ARTIFACTS_DIR"
go test -race -count=1 -timeout 15m $(go list ./... | grep -v '/test/e2e$')

step "end-to-end tests (real verge processes on loopback, built with -race)"
VERGE_E2E_RACE=1 go test -count=1 -timeout 20m ./test/e2e/

step "cross-builds (edge sites run both binaries on 64- and 32-bit ARM)"
GOOS=linux GOARCH=arm64 go build -trimpath -o /dev/null ./cmd/...
GOOS=linux GOARCH=arm GOARM=7 go build -trimpath -o /dev/null ./cmd/...
echo "linux/arm64 and linux/arm (GOARM=7) build"

step "all checks passed"
