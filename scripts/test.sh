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

step "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.git/*'))
if [ -n "$unformatted" ]; then echo "gofmt would change:"; echo "$unformatted"; exit 1; fi

step "go vet"
go vet ./...

step "staticcheck"
"$tools/staticcheck-v0.8.2" ./...

step "unit tests (race)"
go test -race -count=1 -timeout 15m $(go list ./... | grep -v '/test/e2e$')

step "end-to-end tests (real verge processes on loopback, built with -race)"
VERGE_E2E_RACE=1 go test -count=1 -timeout 20m ./test/e2e/

step "verge-proxy cross-builds"
GOOS=linux GOARCH=arm64 go build -trimpath -o /dev/null ./cmd/verge-proxy
GOOS=linux GOARCH=arm GOARM=7 go build -trimpath -o /dev/null ./cmd/verge-proxy
echo "linux/arm64 and linux/arm (GOARM=7) build"

step "all checks passed"
